"""The eval core: a detector over a dataset's records -> metrics reports.

  evaluate_detector(detector, spec, out, protocol)
    records (runner.scan_all / scan_records) -> detector.eval_runs (one run,
    or one per InCTRL prompt draw) -> eval.evaluate per run -> draws
    aggregated (mean +- std) when the runs are prompt draws -> metrics.json
    / csv, protocol.json, details.json, overlays, scalars and sample
    heatmaps for the `loggers` (utils/tracking.py: TensorBoard in out/tb
    by default; W&B offline, MLflow file store).

The `eval` verb calls it, the benchmark runner its `run_reports`;
nothing here names a method.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any

import numpy as np

from moeclip_jax.eval import draws, reports
from moeclip_jax.eval import evaluate as eval_lib
from moeclip_jax.inference import overlay, runner, tiling
from moeclip_jax.utils import images as image_utils
from moeclip_jax.utils import io, tracking

EXTRA_KEYS = ("std", "prompt_draws")


def checkpoint_hash(checkpoint_dir) -> str:
  """sha256 of the checkpoint's config.json and params metadata files."""
  digest = hashlib.sha256()
  root = pathlib.Path(checkpoint_dir)
  for path in sorted(root.rglob("*")):
    if path.is_file() and path.stat().st_size < (1 << 20):
      digest.update(path.relative_to(root).as_posix().encode())
      digest.update(path.read_bytes())
  return digest.hexdigest()[:16]


def evaluate_detector(detector, spec: runner.DatasetSpec, out,
                      protocol: str | None = None, batch_size: int = 8,
                      map_size: int | None = None,
                      overlays_per_class: int = 4,
                      tile: tiling.TileSpec | None = None,
                      loggers: str = "tensorboard") -> dict[str, Any]:
  """Predicts, evaluates and writes every report file; returns the report.

  `detector`: what `load_detector(dir, **method_options)` returns; `tile`:
  predict each image in tiles (`tiling.eval_runs`) instead; `loggers`:
  tracking backends ("tensorboard,wandb,mlflow", "" for none).
  """
  out = pathlib.Path(out)
  protocol = protocol or detector.default_protocol
  all_records = runner.scan_all(spec)
  records = runner.scan_records(spec, all_records)
  meta = {"checkpoint": str(detector.checkpoint_dir),
          "checkpoint_hash": checkpoint_hash(detector.checkpoint_dir),
          "dataset": spec.name, "root": spec.root, "split": spec.split,
          **detector.run_facts()}
  runs, first = [], None
  to_image = detector.map_to_image if tile is None else overlay.resize_map
  for report, facts, pred in run_reports(detector, records, all_records,
                                         protocol, meta=meta,
                                         batch_size=batch_size,
                                         map_size=map_size, tile=tile):
    runs.append((report, facts))
    first = first or pred
  report = _combine(runs, meta, out)
  write_all_reports(report, out)
  write_overlays(first, records, out / "overlays", overlays_per_class,
                 to_image)
  log_report(loggers, out, report, first, {**meta, "protocol": protocol})
  return report


def log_report(names: str, out: pathlib.Path, report, pred, config) -> None:
  """The report's mean scalars and sample heatmaps to the `names` loggers."""
  loggers = tracking.make(names, out, config=config, name=out.name)
  try:
    loggers.scalars({f"eval/{k}": v for k, v in report["mean"].items()}, 0)
    tracking.log_heatmaps(loggers, pred, "eval", 0)
  finally:
    loggers.close()


def run_reports(detector, records, all_records, protocol: str | None = None,
                domain: str | None = None, meta: dict | None = None,
                batch_size: int = 8, map_size: int | None = None,
                tile: tiling.TileSpec | None = None):
  """(report, run facts, predictions) per run of `detector.eval_runs`
  (one run, or one per InCTRL prompt draw), lazily: each run is predicted
  and evaluated when the caller asks for it. `domain` (default: the
  detector's) goes to the protocol (MoECLIP's fusion); the benchmark calls
  this per unit; `tile`: predict each image in tiles (`tiling.eval_runs`).
  """
  protocol = protocol or detector.default_protocol
  domain = domain or detector.domain
  runs = (detector.eval_runs(records, all_records, batch_size, map_size)
          if tile is None else
          tiling.eval_runs(detector, records, tile, batch_size, map_size))
  for pred, facts in runs:
    yield (_evaluate(pred, protocol, domain, {**(meta or {}), **facts}),
           facts, pred)


def _combine(runs, meta, out) -> dict[str, Any]:
  """One run's report, or the mean +- std of prompt-draw runs (their facts
  carry "draw"); each draw's reports go to out/draws/draw_i."""
  if not any("draw" in facts for _, facts in runs):
    return runs[0][0]
  report = draws.aggregate([r for r, _ in runs], [f for _, f in runs],
                           meta.get("shots"))
  if len(runs) > 1:
    for i, (r, _) in enumerate(runs):
      reports.write_reports(r, str(out / "draws" / f"draw_{i}"))
  return report


def _evaluate(pred, protocol, domain, meta) -> dict[str, Any]:
  names = np.asarray(pred["class_names"])[pred["class_ids"]]
  with_masks = bool(pred["has_mask"].any())
  return eval_lib.evaluate(
      pred["image_scores"], pred["labels"], names,
      anomaly_maps=pred["maps"] if with_masks else None,
      masks=(pred["masks"] > 0.5) if with_masks else None,
      protocol=protocol, domains=domain, metadata=meta)


def write_all_reports(report, out) -> None:
  """metrics.json/csv, protocol.json, details.json; metrics.json also
  gets "std" and "prompt_draws" when the report has them."""
  paths = reports.write_reports(report, str(out))
  extra = {k: report[k] for k in EXTRA_KEYS if k in report}
  if extra:
    path = pathlib.Path(paths["metrics"])
    metrics = json.loads(path.read_text())
    io.write_text(path, json.dumps({**metrics, **extra}, indent=2,
                                   allow_nan=False) + "\n")


def _sample(pred, cid: int, per_class: int) -> list[int]:
  """Up to per_class positions: anomalous first half, normal second."""
  sel = np.flatnonzero(pred["class_ids"] == cid)
  bad = [i for i in sel if pred["labels"][i] == 1][:(per_class + 1) // 2]
  good = [i for i in sel if pred["labels"][i] == 0]
  return bad + good[:per_class - len(bad)]


def write_overlays(pred, records, folder, per_class: int,
                   to_image=overlay.resize_map) -> list[str]:
  """[original | heatmap | contour] PNGs of a sample per class.

  Maps are shown after the class's joint min-max (the protocol's view);
  the contour is drawn at 0.5 of that range. `to_image(map, (H, W))`
  puts a model-size map on the original image.
  """
  written = []
  for cid, name in enumerate(pred["class_names"]):
    sel = pred["class_ids"] == cid
    lo, hi = pred["maps"][sel].min(), pred["maps"][sel].max()
    for i in _sample(pred, cid, per_class):
      record = records[int(pred["index"][i])]
      image = image_utils.load_rgb(record.image_path)
      shown = to_image((pred["maps"][i] - lo) / max(hi - lo, 1e-12),
                       image.shape[:2])
      tag = "anomalous" if pred["labels"][i] else "normal"
      stem = pathlib.Path(record.image_path).stem
      target = pathlib.Path(folder) / name / f"{tag}_{stem}_{i}.png"
      path = overlay.save_png(target, overlay.panels(image, shown, 0.5))
      written.append(str(path))
  return written

