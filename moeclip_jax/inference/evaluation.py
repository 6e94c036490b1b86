"""The eval core: a detector over a dataset's records -> metrics reports.

  evaluate_detector(detector, spec, out, protocol)
    records (runner.scan_all / scan_records) -> detector.eval_runs (one run,
    or one per InCTRL prompt draw) -> eval.evaluate per run -> draws
    aggregated (mean +- std) when the runs are prompt draws -> metrics.json
    / csv, protocol.json, details.json, overlays (a sample, or the
    `showcase`: best and worst images per class), scalars and sample
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

from moeclip_jax.eval import draws, protocols, reports
from moeclip_jax.eval import evaluate as eval_lib
from moeclip_jax.inference import overlay, runner, tiling
from moeclip_jax.utils import images as image_utils
from moeclip_jax.utils import io, tracking

EXTRA_KEYS = ("std", "prompt_draws")
SHOWCASE_FILE = "showcase.json"
# What each showcase overlay is: role -> (label it picks, which end of the
# protocol's image scores, what it shows).
SHOWCASE_ROLES = {
    "best_defect": (1, "top", "the highest-scoring defective image"),
    "missed_defect": (1, "bottom", "the lowest-scoring defective image "
                      "(the most missed defect)"),
    "false_alarm": (0, "top", "the highest-scoring normal image"),
}


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
                      loggers: str = "tensorboard",
                      showcase: bool = False) -> dict[str, Any]:
  """Predicts, evaluates and writes every report file; returns the report.

  `detector`: what `load_detector(dir, **method_options)` returns; `tile`:
  predict each image in tiles (`tiling.eval_runs`) instead; `loggers`:
  tracking backends ("tensorboard,wandb,mlflow", "" for none); `showcase`:
  the overlays are the best and worst images of each class
  (`write_showcase`, listed in overlays/showcase.json) instead of a sample.
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
  if showcase:
    write_showcase(first, records, out / "overlays", protocol,
                   detector.domain, to_image)
  else:
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


def _write_overlay(pred, records, i: int, bounds, target: pathlib.Path,
                   to_image) -> str:
  """One [original | heatmap | contour] PNG of prediction `i`; the map is
  shown after min-max over `bounds` (lo, hi), the contour at 0.5."""
  lo, hi = bounds
  record = records[int(pred["index"][i])]
  image = image_utils.load_rgb(record.image_path)
  shown = to_image((pred["maps"][i] - lo) / max(hi - lo, 1e-12),
                   image.shape[:2])
  return str(overlay.save_png(target, overlay.panels(image, shown, 0.5)))


def _map_bounds(pred, sel) -> tuple[float, float]:
  return float(pred["maps"][sel].min()), float(pred["maps"][sel].max())


def _tag_stem(pred, records, i: int) -> str:
  tag = "anomalous" if pred["labels"][i] else "normal"
  return f"{tag}_{pathlib.Path(records[int(pred['index'][i])].image_path).stem}"


def write_overlays(pred, records, folder, per_class: int,
                   to_image=overlay.resize_map) -> list[str]:
  """[original | heatmap | contour] PNGs of a sample per class.

  Maps are shown after the class's joint min-max (the protocol's view);
  the contour is drawn at 0.5 of that range. `to_image(map, (H, W))`
  puts a model-size map on the original image.
  """
  written = []
  for cid, name in enumerate(pred["class_names"]):
    bounds = _map_bounds(pred, pred["class_ids"] == cid)
    for i in _sample(pred, cid, per_class):
      target = pathlib.Path(folder) / name / \
          f"{_tag_stem(pred, records, i)}_{i}.png"
      written.append(_write_overlay(pred, records, i, bounds, target,
                                    to_image))
  return written


def class_scores(pred, cid: int, protocol: str, domain: str | None
                 ) -> tuple[np.ndarray, np.ndarray]:
  """(positions [n] of class `cid` in `pred`, their image scores [n] after
  the protocol's post-processing: the scores its metrics rank)."""
  sel = np.flatnonzero(pred["class_ids"] == cid)
  maps = pred["maps"][sel] if pred["has_mask"].any() else None
  scores, _ = protocols.apply_protocol(
      protocols.get_protocol(protocol), pred["image_scores"][sel], maps,
      domain or "industrial")
  return sel, np.asarray(scores, np.float64)


def pick_showcase(scores: np.ndarray, labels: np.ndarray) -> dict[str, int]:
  """{role: position} for each `SHOWCASE_ROLES` role whose label occurs:
  the best-scoring defect, the most missed defect, the worst false alarm."""
  picks = {}
  for role, (label, end, _) in SHOWCASE_ROLES.items():
    pos = np.flatnonzero(labels == label)
    if pos.size:
      order = pos[np.argsort(scores[pos], kind="stable")]
      picks[role] = int(order[-1] if end == "top" else order[0])
  return picks


def write_showcase(pred, records, folder, protocol: str,
                   domain: str | None = None,
                   to_image=overlay.resize_map) -> list[dict]:
  """Overlays of each class's best and worst images (`pick_showcase` on
  the protocol's scores), named `<role>_<tag>_<stem>.png`; writes and
  returns their list ({class, role, path, score, rank, of, label}; rank 1
  = the class's highest score) in folder/showcase.json."""
  folder, rows = pathlib.Path(folder), []
  for cid, name in enumerate(pred["class_names"]):
    sel, scores = class_scores(pred, cid, protocol, domain)
    if not sel.size:
      continue
    bounds = _map_bounds(pred, sel)
    labels = np.asarray(pred["labels"])[sel]
    ranks = len(scores) - np.argsort(np.argsort(scores, kind="stable"),
                                     kind="stable")
    for role, k in pick_showcase(scores, labels).items():
      i = int(sel[k])
      target = folder / name / f"{role}_{_tag_stem(pred, records, i)}.png"
      path = _write_overlay(pred, records, i, bounds, target, to_image)
      rows.append({"class": name, "role": role, "path": path,
                   "score": float(scores[k]), "rank": int(ranks[k]),
                   "of": int(len(scores)), "label": int(labels[k])})
  io.write_json(folder / SHOWCASE_FILE, rows)
  return rows

