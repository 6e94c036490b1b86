"""`moeclip-jax predict`: anomaly maps and decisions for images, no labels.

Per readable image: OUT/overlays/<name>.png ([original | heatmap |
thresholded contour]), optionally OUT/maps/<name>.npy (the raw map at the
image's size), and one line of OUT/predictions.jsonl:
  {"path", "score", "is_anomalous", "threshold", "threshold_source",
   "class_name", "raw_score", "max_map", "overlay"}
Unreadable files go to OUT/unreadable.txt (and the log); they never stop
the run.

Scores: with calibration statistics for the class (from `calibrate`) the
score is MoECLIP's fused score; without them it is the detector's raw image
score (det . t_abn + 1) / 2, and the contour uses the per-image min-max map.
InCTRL and AnomalyMoE keep their own image score (no fusion); InCTRL needs
--prompts (see methods/inctrl/detector.py, docs/cli.md "Methods").
"""

from __future__ import annotations

import json
import logging
import pathlib
import sys
from typing import Any, Sequence

import numpy as np

from moeclip_jax.inference import calibration, overlay
from moeclip_jax.utils import images as image_utils
from moeclip_jax.utils import io
from moeclip_jax.verbs import common

log = logging.getLogger("moeclip_jax.verbs")
PREDICTIONS_FILE = "predictions.jsonl"
DEFAULT_MAP_THRESHOLD = 0.5  # on per-image min-max maps, uncalibrated
CHUNK_BATCHES = 8  # images are read, predicted and written in chunks

EXAMPLES = """
  moeclip-jax predict photo.png --checkpoint runs/tiny/detector --out pred/
  moeclip-jax predict images/ more.jpg --checkpoint ckpt --class-name bottle \\
      --threshold auto --save-maps --out pred/
  moeclip-jax predict images/ --checkpoint ckpt --threshold 0.62 --out pred/
  moeclip-jax predict images/ --checkpoint ckpt/inctrl_k2 --class-name candle \\
      --prompts good_candles/ --shots 2 --prompt-seed 0 --out pred/
"""


def build_parser():
  p = common.parser("moeclip-jax predict", __doc__.split("\n\n")[0],
                    EXAMPLES)
  p.add_argument("inputs", nargs="+", help="image files and/or folders")
  p.add_argument("--checkpoint", required=True, help="detector folder")
  p.add_argument("--out", required=True, help="output folder")
  p.add_argument("--class-name", default=None,
                 help="class (prompt noun lookup; default generic 'object'"
                      "; InCTRL: a saved prompt set's class)")
  p.add_argument("--threshold", default="auto",
                 help="'auto' (calibration.json) or a number")
  p.add_argument("--save-maps", action="store_true", help="write .npy maps")
  p.add_argument("--batch-size", type=int, default=8)
  common.add_method_options(p, "predict")
  return p


def resolve_threshold(spec: str, entry: dict | None) -> tuple[float | None,
                                                               str]:
  """(threshold or None, source) from --threshold and a calibration entry."""
  if spec != "auto":
    try:
      return float(spec), "user"
    except ValueError:
      raise ValueError(f"--threshold must be 'auto' or a number, got {spec!r}"
                       ) from None
  if entry is None:
    return None, "none (uncalibrated: run `moeclip-jax calibrate`)"
  return float(entry["threshold"]), "calibration"


def read_images(paths: Sequence[pathlib.Path]):
  """(readable [(path, uint8 image)], unreadable ["path: reason"])."""
  good, bad = [], []
  for path in paths:
    try:
      good.append((path, image_utils.load_rgb(path)))
    except (ValueError, FileNotFoundError) as err:
      bad.append(str(err))
  return good, bad


def _unique_stem(path: pathlib.Path, used: set) -> str:
  stem = f"{path.parent.name}_{path.stem}" if path.parent.name else path.stem
  name, k = stem, 1
  while name in used:
    name, k = f"{stem}_{k}", k + 1
  used.add(name)
  return name


def score_images(raw_maps, raw_scores, entry, fuse=None):
  """(maps in [0, 1] for display [N, S, S], scores [N], map thresholds [N]).

  `fuse`: the detector's `score_fusion` (MoECLIP's fused score with
  calibration); None keeps the detector's image score (InCTRL, AnomalyMoE).
  """
  if entry is not None:
    maps_n, fused = calibration.fused_score(raw_maps, raw_scores, entry,
                                            fuse)
    shown = np.clip(maps_n, 0.0, 1.0)
    return shown, fused, np.full(len(fused), entry["map_threshold"])
  shown = np.stack([overlay.normalise_for_display(m) for m in raw_maps]) \
      if len(raw_maps) else raw_maps
  return shown, np.asarray(raw_scores), np.full(len(raw_scores),
                                                DEFAULT_MAP_THRESHOLD)


def _write_one(out, name, path, image, raw_map, shown, score, raw_score,
               map_thr, threshold, source, class_name, save_maps,
               to_image=overlay.resize_map) -> dict:
  hw = image.shape[:2]
  panel = overlay.panels(image, to_image(shown, hw), float(map_thr))
  png = overlay.save_png(out / "overlays" / f"{name}.png", panel)
  if save_maps:
    full = to_image(raw_map, hw)
    np.save(out / "maps" / f"{name}.npy", full)
  return {"path": str(path), "score": float(score),
          "is_anomalous": None if threshold is None
          else bool(score >= threshold),
          "threshold": threshold, "threshold_source": source,
          "class_name": class_name, "raw_score": float(raw_score),
          "max_map": float(np.max(raw_map)), "overlay": str(png)}


def predict_paths(detector, inputs: Sequence[str], out,
                  class_name: str | None = None, threshold: str = "auto",
                  save_maps=False, batch_size: int = 8) -> dict[str, Any]:
  """Runs predict and writes every output; returns a summary dict.

  `detector`: what `load_detector(dir, **method_options)` returns.
  """
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  if save_maps:
    (out / "maps").mkdir(parents=True, exist_ok=True)
  class_name = resolve_class_name(detector, class_name)
  stored = calibration.load(detector.checkpoint_dir)
  calibration.check_method(stored, detector.method, detector.checkpoint_dir)
  entry = calibration.entry_for(stored, class_name)
  thr, source = resolve_threshold(threshold, entry)
  paths, unreadable = common.list_images(inputs)
  facts = detector.begin_predict(paths, class_name, entry, out)
  used, lines = set(), []
  chunk = CHUNK_BATCHES * batch_size  # bounds the images held in memory
  with common.progress(None, "predict", total=len(paths)) as bar:
    for start in range(0, len(paths), chunk):
      loaded, bad = read_images(paths[start:start + chunk])
      unreadable += bad
      raw_maps, raw_scores = detector.predict_images(
          [im for _, im in loaded], class_name, batch_size, entry, desc=None)
      shown, scores, map_thr = score_images(raw_maps, raw_scores, entry,
                                            detector.score_fusion)
      for i, (path, image) in enumerate(loaded):
        lines.append(_write_one(
            out, _unique_stem(path, used), path, image, raw_maps[i],
            shown[i], scores[i], raw_scores[i], map_thr[i], thr, source,
            class_name, save_maps, detector.map_to_image))
      bar.update(min(chunk, len(paths) - start))
  io.write_text(out / PREDICTIONS_FILE,
                "".join(json.dumps(line) + "\n" for line in lines))
  io.write_text(out / "unreadable.txt", "".join(u + "\n" for u in unreadable))
  for problem in unreadable:
    log.warning("predict: unreadable %s", problem)
  return {"predictions": lines, "unreadable": unreadable,
          "threshold": thr, "threshold_source": source, **facts}


def resolve_class_name(detector, class_name: str | None) -> str:
  """--class-name, else a single saved InCTRL prompt set's class, else
  the generic 'object'."""
  if class_name:
    return class_name
  source = getattr(detector, "source", None)
  if source is not None and len(source.sets) == 1 and not source.pool:
    return next(iter(source.sets))
  return "object"


def _print_summary(summary: dict) -> None:
  from rich.table import Table  # pylint: disable=g-import-not-at-top
  table = Table(title=f"threshold {summary['threshold']} "
                      f"({summary['threshold_source']})")
  for col in ("image", "score", "anomalous"):
    table.add_column(col)
  for line in summary["predictions"][:50]:
    table.add_row(pathlib.Path(line["path"]).name, f"{line['score']:.4f}",
                  str(line["is_anomalous"]))
  common.console().print(table)
  if summary["unreadable"]:
    common.console().print(f"{len(summary['unreadable'])} unreadable file(s)"
                           " listed in unreadable.txt")


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  try:
    common.add_log_file(args.out, "predict")
    detector = common.load_detector(args.checkpoint,
                                    common.method_options(args))
    summary = predict_paths(detector, args.inputs, args.out, args.class_name,
                            args.threshold, save_maps=args.save_maps,
                            batch_size=args.batch_size)
  except (ValueError, FileNotFoundError, KeyError) as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  _print_summary(summary)
  print(f"wrote {len(summary['predictions'])} predictions to "
        f"{pathlib.Path(args.out) / PREDICTIONS_FILE}")
  return 0
