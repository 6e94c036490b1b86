"""Input-pipeline throughput: decode + resize + augment at 518 px.

Writes a small MVTec-style set of synthetic 900x900 PNGs (MVTec's typical
size) into a temp folder, then times the MoECLIP training pipeline
(PIL decode -> bicubic resize to 518 -> CLIP normalisation -> joint
rotation / translation / flips -> batch) with grain worker_count 0 and 2.
The reference is worker_count=0 measured in the same run.

  /work/venv/bin/python benchmarks/data_bench.py --out /tmp/data_bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np

from moeclip_jax.data import (
  images,
  pipeline,
  readers,
  sources,
  synthetic,
  transforms,
)
from moeclip_jax.data import records as rec


def _measure(source, names, workers: int, batches: int, batch_size: int):
  cfg = pipeline.PipelineConfig(batch_size=batch_size, worker_count=workers,
                                worker_buffer_size=2, seed=0)
  iterator = iter(pipeline.train_loader(source, names, cfg))
  next(iterator)  # start-up (worker spawn, first decode) not timed
  start, cpu_start = time.perf_counter(), time.process_time()
  for _ in range(batches):
    batch = next(iterator)
  seconds = time.perf_counter() - start
  cpu = time.process_time() - cpu_start  # this process only
  assert batch["image"].shape == (batch_size, 518, 518, 3)
  return batches * batch_size / seconds, cpu / (batches * batch_size)


def _stage_ms(record, repeats: int = 7) -> dict[str, float]:
  """Per-stage cost, min over repeats (robust to other jobs on the box)."""
  cfg = transforms.PRESETS["moeclip"]
  rng = np.random.default_rng(0)
  stages = {}

  def timed(name, fn):
    best = float("inf")
    for _ in range(repeats):
      start = time.perf_counter()
      out = fn()
      best = min(best, time.perf_counter() - start)
    stages[name] = round(1000 * best, 2)
    return out

  image, mask = timed("decode", lambda: images.load_pair(
      record.image_path, record.mask_path))
  small = timed("resize", lambda: transforms.resize_image(image, cfg))
  small_mask = timed("resize_mask", lambda: transforms.resize_mask(mask, cfg))
  norm = timed("normalize", lambda: transforms.normalize(small, cfg))
  timed("augment_all_ops", lambda: transforms.Augment(p=1.0)(
      norm, small_mask, rng))
  return stages


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--images", type=int, default=48)
  parser.add_argument("--size", type=int, default=900)
  parser.add_argument("--batches", type=int, default=8)
  parser.add_argument("--batch-size", type=int, default=4)
  parser.add_argument("--out", default=None, help="JSON output file")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as root:
    synthetic.write_mvtec_tree(
        root, ("widget",), n_train=args.images // 2, n_good=0,
        n_bad=args.images - args.images // 2, size=(args.size, args.size))
    records = readers.scan("mvtec", root).records
    source = sources.RecordSource(records)
    names = rec.class_names(records)
    stages = _stage_ms(next(r for r in records if r.mask_path))
    load_before = os.getloadavg()[0]
    measured = {w: _measure(source, names, w, args.batches, args.batch_size)
                for w in (0, 2)}
  rates = {w: m[0] for w, m in measured.items()}
  result = {
      "benchmark": "decode+resize+augment, MoECLIP preset, 518 px",
      "source_image_px": args.size, "images": len(records),
      "timed_images": args.batches * args.batch_size,
      "cpu_count": os.cpu_count(), "machine": platform.processor() or "",
      "load_average_1min": [round(load_before, 2),
                            round(os.getloadavg()[0], 2)],
      "images_per_s_workers0": round(rates[0], 2),
      "images_per_s_workers2": round(rates[2], 2),
      "ratio_workers2_vs_workers0": round(rates[2] / rates[0], 3),
      # Main-process CPU time per image with workers=0: the figure least
      # affected by other jobs on a shared machine.
      "cpu_ms_per_image_workers0": round(1000 * measured[0][1], 1),
      # Min-of-7 per-stage times on one image (augment with every op on)
      # and the single-core rate they imply.
      "stage_ms_min": stages,
      "images_per_s_single_core_from_stages": round(
          1000 / sum(stages.values()), 2),
  }
  text = json.dumps(result, indent=2)
  print(text)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
