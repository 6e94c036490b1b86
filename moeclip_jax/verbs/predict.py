"""`moeclip-jax predict`: anomaly maps and decisions for images, no labels.

Per readable image: OUT/overlays/<name>.png ([original | heatmap |
thresholded contour]), optionally OUT/maps/<name>.npy (the raw map at the
image's size) and OUT/masks/<name>.png (--save-masks: 0/255, the map at the
image's size >= the pixel threshold), and one line of OUT/predictions.jsonl
(with "mask" when masks are saved):
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
from typing import Any, Sequence

import numpy as np

from moeclip_jax.inference import calibration, overlay, tiling
from moeclip_jax.utils import images as image_utils
from moeclip_jax.utils import io
from moeclip_jax.verbs import common

log = logging.getLogger("moeclip_jax.verbs")
PREDICTIONS_FILE = "predictions.jsonl"
CHUNK_BATCHES = 8  # images are read, predicted and written in chunks
# What an image reports: one place for predict and serve (inference/).
resolve_threshold = calibration.resolve_threshold
score_images = calibration.score_images

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
  p.add_argument("--save-masks", action="store_true",
                 help="write binary masks OUT/masks/<name>.png (255 where "
                      "the map >= the calibrated pixel threshold)")
  p.add_argument("--batch-size", type=int, default=8)
  common.add_tile_options(p)
  common.add_method_options(p, "predict")
  return p


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


def binary_mask(full_raw_map, shown_full, map_thr, entry) -> np.ndarray:
  """bool[H, W]: the map at the image's size >= the pixel threshold.

  With calibration: the class-normalised raw map (the saved .npy map,
  normalised) against the calibrated `map_threshold`; without: the
  displayed per-image min-max map against the default level.
  """
  if entry is not None:
    return calibration.normalise_maps(full_raw_map, entry) >= map_thr
  return shown_full >= map_thr


def _write_one(out, name, path, image, raw_map, shown, score, raw_score,
               map_thr, threshold, source, class_name, save_maps,
               to_image=overlay.resize_map, save_masks=False,
               entry=None) -> dict:
  hw = image.shape[:2]
  shown_full = to_image(shown, hw)
  panel = overlay.panels(image, shown_full, float(map_thr))
  png = overlay.save_png(out / "overlays" / f"{name}.png", panel)
  full = to_image(raw_map, hw) if save_maps or save_masks else None
  if save_maps:
    np.save(out / "maps" / f"{name}.npy", full)
  extra = {}
  if save_masks:
    mask = binary_mask(full, shown_full, map_thr, entry)
    extra["mask"] = str(overlay.save_png(
        out / "masks" / f"{name}.png", mask.astype(np.uint8) * 255))
  return {**extra, "path": str(path), "score": float(score),
          "is_anomalous": calibration.decision(score, threshold),
          "threshold": threshold, "threshold_source": source,
          "class_name": class_name, "raw_score": float(raw_score),
          "max_map": float(np.max(raw_map)), "overlay": str(png)}


def predict_paths(detector, inputs: Sequence[str], out,
                  class_name: str | None = None, threshold: str = "auto",
                  save_maps=False, batch_size: int = 8,
                  tile: tiling.TileSpec | None = None,
                  save_masks: bool = False) -> dict[str, Any]:
  """Runs predict and writes every output; returns a summary dict.

  `detector`: what `load_detector(dir, **method_options)` returns; `tile`:
  predict each image in tiles (maps then come at the image size).
  """
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  if save_maps:
    (out / "maps").mkdir(parents=True, exist_ok=True)
  class_name = class_name or detector.default_class_name()
  stored = calibration.load(detector.checkpoint_dir)
  calibration.check_method(stored, detector.method, detector.checkpoint_dir)
  entry = calibration.entry_for(stored, class_name)
  thr, source = resolve_threshold(threshold, entry)
  paths, unreadable = common.list_images(inputs)
  facts = detector.begin_predict(paths, class_name, entry, out)
  used, lines = set(), []
  chunk = CHUNK_BATCHES * batch_size  # bounds the images held in memory
  if tile is not None:
    chunk = 1  # tiled images are large: one at a time
  with common.progress(None, "predict", total=len(paths)) as bar:
    for start in range(0, len(paths), chunk):
      loaded, bad = read_images(paths[start:start + chunk])
      unreadable += bad
      raw_maps, raw_scores, shown, scores, map_thr, to_image = _predict_chunk(
          detector, [im for _, im in loaded], class_name, batch_size, entry,
          tile)
      for i, (path, image) in enumerate(loaded):
        lines.append(_write_one(
            out, _unique_stem(path, used), path, image, raw_maps[i],
            shown[i], scores[i], raw_scores[i], map_thr[i], thr, source,
            class_name, save_maps, to_image, save_masks, entry))
      bar.update(min(chunk, len(paths) - start))
  io.write_text(out / PREDICTIONS_FILE,
                "".join(json.dumps(line) + "\n" for line in lines))
  io.write_text(out / "unreadable.txt", "".join(u + "\n" for u in unreadable))
  for problem in unreadable:
    log.warning("predict: unreadable %s", problem)
  return {"predictions": lines, "unreadable": unreadable,
          "threshold": thr, "threshold_source": source, **facts}


def _predict_chunk(detector, images, class_name, batch_size, entry, tile):
  """(raw maps, raw scores, shown maps, scores, map thresholds, map ->
  image fn) of a chunk; tiled maps are already at each image's size."""
  if tile is None:
    raw_maps, raw_scores = detector.predict_images(
        images, class_name, batch_size, entry, desc=None)
    return (raw_maps, raw_scores, *score_images(
        raw_maps, raw_scores, entry, detector.score_fusion),
            detector.map_to_image)
  raw_maps, raw_scores = tiling.predict_images(
      detector, images, class_name, tile, batch_size, entry)
  each = [score_images(m[None], s[None], entry, detector.score_fusion)
          for m, s in zip(raw_maps, raw_scores)]
  return (raw_maps, raw_scores, [e[0][0] for e in each],
          np.asarray([e[1][0] for e in each]),
          np.asarray([e[2][0] for e in each]), overlay.resize_map)


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


def run(args) -> dict:
  common.add_log_file(args.out, "predict")
  detector = common.load_detector(args.checkpoint, common.method_options(args))
  return predict_paths(detector, args.inputs, args.out, args.class_name,
                       args.threshold, save_maps=args.save_maps,
                       batch_size=args.batch_size, tile=common.tile_spec(args),
                       save_masks=args.save_masks)


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  summary, code = common.guarded(run, args)
  if code:
    return code
  _print_summary(summary)
  print(f"wrote {len(summary['predictions'])} predictions to "
        f"{pathlib.Path(args.out) / PREDICTIONS_FILE}")
  return 0
