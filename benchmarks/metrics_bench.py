"""Metrics engine benchmark: ratios against references measured in the same run.

  python benchmarks/metrics_bench.py --out benchmarks/metrics_bench.json \
      [--num-maps 500] [--sizes 256,518] [--stream-pixels 1e9]

Per map size (synthetic maps, half the images with rectangular/diagonal
defects, borders and single pixels included):
* pixel AUROC / AP: scikit-learn `roc_auc_score` / `average_precision_score`
  vs this engine's exact path (which returns AUROC, AP and F1-max at once);
* AUPRO: a faithful loop of AnomalyCLIP's 200-threshold `cal_pro_score`
  semantics (re-labels every mask at every threshold with skimage; written
  here) vs this engine's vectorised legacy_cflow200 and exact MVTec AUPRO,
  both including the one-time region labelling; values are checked equal.
* streaming: 1e9 pixels generated batch by batch in a child process, peak
  RSS from `resource.getrusage` (and tracemalloc's Python/NumPy peak).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc

import numpy as np
from skimage import measure
from sklearn import metrics as skm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from moeclip_jax.eval import (
  aupro,  # pylint: disable=g-import-not-at-top
  metrics,  # pylint: disable=g-import-not-at-top
  streaming,  # pylint: disable=g-import-not-at-top
)


def make_batch(rng, n, size):
  """Synthetic maps float32[n, size, size] and masks uint8[n, size, size]."""
  masks = np.zeros((n, size, size), np.uint8)
  for i in range(n // 2, n):
    for _ in range(rng.integers(1, 4)):
      y, x = rng.integers(0, size - 8, 2)
      h, w = rng.integers(2, size // 6, 2)
      masks[i, y:y + h, x:x + w] = 1
    masks[i, 0, rng.integers(0, size)] = 1  # border / single pixel
  maps = rng.random((n, size, size), dtype=np.float32)
  maps += 0.6 * masks
  return maps, masks


def loop_cflow200(masks, amaps, steps=200, expect_fpr=0.3):
  """AnomalyCLIP-style AUPRO loop: labels regions again at every threshold."""
  lo, hi = amaps.min(), amaps.max()
  pros, fprs = [], []
  inverse = 1 - masks
  num_neg = inverse.sum()
  for th in np.arange(lo, hi, (hi - lo) / steps):
    binary = amaps > th
    overlaps = []
    for pred, gt in zip(binary, masks):
      for region in measure.regionprops(measure.label(gt)):
        rows, cols = region.coords[:, 0], region.coords[:, 1]
        overlaps.append(pred[rows, cols].sum() / region.area)
    fprs.append(np.logical_and(inverse, binary).sum() / num_neg)
    pros.append(np.mean(overlaps))
  fprs, pros = np.array(fprs), np.array(pros)
  keep = fprs < expect_fpr
  f = fprs[keep]
  f = (f - f.min()) / (f.max() - f.min())
  return float(skm.auc(f, pros[keep]))


def timed(fn, *args, repeat=1):
  """(result, best wall seconds, best CPU seconds of this process)."""
  wall, cpu, out = np.inf, np.inf, None
  for _ in range(repeat):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args)
    wall = min(wall, time.perf_counter() - t0)
    cpu = min(cpu, time.process_time() - c0)
  return out, wall, cpu


def peak_rss_bytes() -> int:
  """This process's own peak RSS (VmHWM; getrusage is inherited on exec)."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _ratios(res, ref, ours, name):
  for unit in ("wall", "cpu"):
    res[f"ratio_{name}_{unit}"] = res[f"{ref}_{unit}_s"] / res[
        f"{ours}_{unit}_s"]


def _record(res, name, timing):
  out, res[f"{name}_wall_s"], res[f"{name}_cpu_s"] = timing
  return out


def bench_size(num_maps, size, seed=0):
  """Pixel AUROC/AP vs sklearn and AUPRO vs the 200-threshold loop."""
  rng = np.random.default_rng(seed)
  maps, masks = make_batch(rng, num_maps, size)
  flat_maps, flat_masks = maps.ravel(), masks.ravel()
  res = dict(num_maps=num_maps, size=size, pixels=int(maps.size))
  auc_ref = _record(res, "sklearn_auroc",
                    timed(skm.roc_auc_score, flat_masks, flat_maps))
  ap_ref = _record(res, "sklearn_ap", timed(skm.average_precision_score,
                                            flat_masks, flat_maps))
  ours = _record(res, "ours_pixel", timed(metrics.host_binary_metrics,
                                          flat_maps, flat_masks, repeat=2))
  res["auroc_abs_diff"] = abs(ours["auroc"] - auc_ref)
  res["ap_abs_diff"] = abs(ours["ap"] - ap_ref)
  _ratios(res, "sklearn_auroc", "ours_pixel", "auroc_vs_sklearn")
  _ratios(res, "sklearn_ap", "ours_pixel", "ap_vs_sklearn")
  regions = _record(res, "labelling", timed(aupro.label_regions, masks,
                                            repeat=2))
  res["mvtec_aupro"] = _record(res, "ours_mvtec", timed(
      aupro.mvtec_aupro_host, maps, regions, repeat=2))
  res["legacy_aupro"] = _record(res, "ours_legacy", timed(
      aupro.legacy_cflow200_aupro, maps, regions, repeat=2))
  for unit in ("wall", "cpu"):  # include the one-time labelling
    for name in ("mvtec", "legacy"):
      res[f"ours_{name}_labelled_{unit}_s"] = (
          res[f"ours_{name}_{unit}_s"] + res[f"labelling_{unit}_s"])
  ref = _record(res, "loop", timed(loop_cflow200, masks, maps))
  res["legacy_vs_loop_abs_diff"] = abs(ref - res["legacy_aupro"])
  for name in ("mvtec", "legacy"):
    _ratios(res, "loop", f"ours_{name}_labelled", f"{name}_vs_loop")
    _ratios(res, "loop", f"ours_{name}", f"{name}_cached_labels_vs_loop")
  return res


def stream_child(total_pixels, size, batch_maps, num_bins):
  """Runs in a fresh process: streaming eval of total_pixels, peak memory."""
  tracemalloc.start()
  rng = np.random.default_rng(1)
  hist = streaming.Histogram.empty(0.0, 1.6, num_bins)
  per_batch = batch_maps * size * size
  num_batches = int(np.ceil(total_pixels / per_batch))
  t0 = time.perf_counter()
  for _ in range(num_batches):
    maps, masks = make_batch(rng, batch_maps, size)
    regions = aupro.label_regions(masks)
    weights = regions.dense_weights()
    hist.add(maps, masks, weights, regions.num_regions)
  accumulate_s = time.perf_counter() - t0
  res = streaming.histogram_metrics(hist)
  _, py_peak = tracemalloc.get_traced_memory()
  rss_peak = peak_rss_bytes()
  return dict(pixels=int(num_batches * per_batch), batches=num_batches,
              seconds=time.perf_counter() - t0, accumulate_s=accumulate_s,
              peak_rss_bytes=int(rss_peak), tracemalloc_peak_bytes=int(py_peak),
              num_bins=num_bins, auroc=res["auroc"], ap=res["ap"],
              f1max=res["f1max"], aupro=res["aupro"], bounds=res["bounds"])


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--num-maps", type=int, default=500)
  parser.add_argument("--sizes", default="256")
  parser.add_argument("--stream-pixels", type=float, default=1e9)
  parser.add_argument("--stream-bins", type=int, default=streaming.DEFAULT_BINS)
  parser.add_argument("--out", default="benchmarks/metrics_bench.json")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(stream_child(args.stream_pixels, 256, 64,
                                  args.stream_bins)))
    return
  results = dict(cpu_count=os.cpu_count(), load_avg_start=os.getloadavg(),
                 command=" ".join(sys.argv), sizes=[])
  for size in (int(s) for s in args.sizes.split(",") if s):
    results["sizes"].append(bench_size(args.num_maps, size))
    print(json.dumps(results["sizes"][-1], indent=1), flush=True)
  if args.stream_pixels > 0:
    child = subprocess.run(
        [sys.executable, __file__, "--child", "--stream-pixels",
         str(args.stream_pixels), "--stream-bins", str(args.stream_bins)],
        check=True, capture_output=True, text=True)
    results["streaming"] = json.loads(child.stdout.strip().splitlines()[-1])
    print(json.dumps(results["streaming"], indent=1))
  results["load_avg_end"] = os.getloadavg()
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
