"""`benchmark run` images/s against the bare jitted forward on the same data.

The issue's bar: a benchmark unit (read + decode + resize + forward +
streaming metrics + the store) stays within 10 % of the detector's bare
jitted forward over the same images already decoded, resized and
normalised on the host. Both run in this process, interleaved, median of
`--rounds`:

  run    `benchmark run --force` of a suite with `--classes` classes of
         one synthetic MVTec-layout target; images/s over the units after
         the first (the first carries the compile: reported apart);
  bare   `detector.predict_pixels` over the same images in batches of the
         suite's batch size, each batch a device-ready float32 array,
         blocked on the result.

The detector is a MoECLIP trained for one step from `--config` (default
configs/moeclip_tiny.py, random tiny CLIP) at `--image-size`.

  python benchmarks/benchmark_throughput.py --image-size 224 --rounds 3 \\
      --out benchmarks/results/benchmark_throughput_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import tempfile
import time

import gemm_rate  # benchmarks/gemm_rate.py (this script's folder)
import jax

from moeclip_jax.benchmark import execute, store, suite
from moeclip_jax.data import synthetic
from moeclip_jax.inference import runner
from moeclip_jax.methods import registry
from moeclip_jax.utils import images as images_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
SUITE = '''
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.name = "throughput"
  c.method = "moeclip"
  c.detector = "{detector}"
  c.batch_size = {batch}
  c.targets = [dict(name="synthetic", reader="mvtec", root="{root}")]
  return c
'''


def _train_detector(work: pathlib.Path, args) -> pathlib.Path:
  """One training step of `--config` on a small synthetic set."""
  src = work / "src"
  synthetic.write_mvtec_tree(str(src), ("a",), n_train=8, n_good=2, n_bad=2,
                             size=(args.data_size,) * 2, seed=1)
  spec = {"name": "src", "config": args.config,
          "overrides": {"data": {"root": str(src)}, "total_steps": 1,
                        "ckpt_every": 1, "batch_size": 8,
                        "backbone": {"image_size": args.image_size}}}
  execute.train_source(spec, work / "train")
  return work / "train" / "detector"


def _suite_round(suite_path, out) -> tuple[float, float, float]:
  """(steady images/s, first unit s, whole run s) of one `benchmark run`."""
  start = time.perf_counter()
  outcome = execute.run(suite.load(str(suite_path)),
                        execute.RunOptions(out=str(out), force=True,
                                           echo=lambda _: None))
  wall = time.perf_counter() - start
  if outcome.failed:
    raise RuntimeError(f"benchmark units failed: {outcome.failed}")
  records = sorted(store.load([out])[1], key=lambda r: r["class_index"])
  timing = [r["timing"] for r in records]
  rest = timing[1:]
  steady = (sum(t["images"] for t in rest)
            / sum(t["seconds"] for t in rest))
  return steady, timing[0]["seconds"], wall


def _bare_inputs(detector, root: pathlib.Path, batch: int):
  """Every test image of the target, decoded, resized and normalised into
  fixed-size batches (the last padded), per class."""
  per_class = {}
  for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
    paths = sorted((class_dir / "test").rglob("*.png"))
    decoded = [images_lib.load_rgb(p) for p in paths]
    pixels = runner.prepare_images(decoded, detector.preprocess)
    pixels = runner.pad_batch(pixels, -(-len(pixels) // batch) * batch)
    per_class[class_dir.name] = [pixels[i:i + batch]
                                 for i in range(0, len(pixels), batch)]
  return per_class, sum(len(list((d / "test").rglob("*.png")))
                        for d in root.iterdir() if d.is_dir())


def _bare_round(detector, per_class, count: int) -> float:
  """images/s of the jitted forward alone (the batches are ready)."""
  start = time.perf_counter()
  for class_name, batches in per_class.items():
    for pixels in batches:
      out = detector.predict_pixels(pixels, class_name, None)
      jax.block_until_ready(out)
  return count / (time.perf_counter() - start)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", default=str(REPO / "configs" /
                                         "moeclip_tiny.py"))
  p.add_argument("--image-size", type=int, default=224)
  p.add_argument("--data-size", type=int, default=256,
                 help="side of the synthetic PNGs (decoded and resized)")
  p.add_argument("--classes", type=int, default=4)
  p.add_argument("--images", type=int, default=32,
                 help="test images per class (half defective)")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--out", default=None, help="JSON results file")
  args = p.parse_args(argv)

  with tempfile.TemporaryDirectory() as tmp:
    work = pathlib.Path(tmp)
    detector_dir = _train_detector(work, args)
    root = work / "target"
    synthetic.write_mvtec_tree(
        str(root), tuple(f"c{i}" for i in range(args.classes)), n_train=2,
        n_good=args.images // 2, n_bad=args.images - args.images // 2,
        size=(args.data_size,) * 2, seed=2)
    suite_path = work / "suite.py"
    suite_path.write_text(SUITE.format(detector=detector_dir, root=root,
                                       batch=args.batch))
    detector = registry.load_detector(str(detector_dir))
    per_class, count = _bare_inputs(detector, root, args.batch)
    _bare_round(detector, per_class, count)  # compile, not timed
    rows = []
    for r in range(args.rounds):  # interleaved
      bare = _bare_round(detector, per_class, count)
      steady, first, wall = _suite_round(suite_path, work / f"run{r}")
      rows.append({"bare_images_per_s": bare, "run_images_per_s": steady,
                   "run_first_unit_s": first, "run_wall_s": wall,
                   "ratio": steady / bare})
      print(f"round {r}: bare {bare:.1f} img/s, benchmark run "
            f"{steady:.1f} img/s (ratio {steady / bare:.3f}), first unit "
            f"{first:.2f} s, whole run {wall:.2f} s", flush=True)
  result = {
      "benchmark": "benchmark_throughput", "machine": gemm_rate.cpu_model(),
      "cores": os.cpu_count(), "backend": jax.default_backend(),
      "devices": jax.device_count(), "args": vars(args),
      "images_per_round": count, "rounds": rows,
      "median_ratio": statistics.median(r["ratio"] for r in rows),
      "median_bare_images_per_s": statistics.median(
          r["bare_images_per_s"] for r in rows),
      "median_run_images_per_s": statistics.median(
          r["run_images_per_s"] for r in rows)}
  print(f"median: benchmark run / bare forward = "
        f"{result['median_ratio']:.3f}")
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
  return result


if __name__ == "__main__":
  main()
