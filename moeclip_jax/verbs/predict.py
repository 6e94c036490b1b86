"""`moeclip-jax predict`: anomaly maps and decisions for images, no labels.

Per readable image: OUT/overlays/<name>.png ([original | heatmap |
thresholded contour]), optionally OUT/maps/<name>.npy (the raw map at the
image's size) and OUT/masks/<name>.png (--save-masks: 0/255, the map at the
image's size >= the pixel threshold), and one line of OUT/predictions.jsonl
(with "mask" when masks are saved):
  {"path", "score", "is_anomalous", "threshold", "threshold_source",
   "class_name", "raw_score", "max_map", "overlay"}
Unreadable files go to OUT/unreadable.txt (and the log); they do not stop
the run (exit 0 with a warning) unless --strict; when no input at all could
be predicted (a typo, an empty folder, only unreadable files) the exit
status is 2 with a one-line reason. predictions.jsonl is written line by
line (flushed): after a kill, `--resume` predicts only the images not in it
yet and finishes the same file an uninterrupted run writes. Overlays are at
most --overlay-max-side pixels on their longest side; inputs above
LARGE_INPUT_PIXELS are warned about, above --max-pixels refused.

Scores: with calibration statistics for the class (from `calibrate`) the
score is MoECLIP's fused score; without them it is the detector's raw image
score (det . t_abn + 1) / 2, and the contour uses the per-image min-max map.
InCTRL and AnomalyMoE keep their own image score (no fusion); InCTRL needs
--prompts (see methods/inctrl/detector.py, docs/cli.md "Methods").
"""

from __future__ import annotations

import contextlib
import json
import logging
import pathlib
import signal
from typing import Any, Sequence

import numpy as np

from moeclip_jax.inference import calibration, decision, overlay, tiling
from moeclip_jax.utils import images as image_utils
from moeclip_jax.utils import io
from moeclip_jax.verbs import common

log = logging.getLogger("moeclip_jax.verbs")
PREDICTIONS_FILE = "predictions.jsonl"
CHUNK_BATCHES = 8  # images are read, predicted and written in chunks
# What an image reports: one place for predict, serve and the API
# (inference/decision.py, on inference/calibration.py).
resolve_threshold = calibration.resolve_threshold
score_images = calibration.score_images
LARGE_INPUT_PIXELS = 25_000_000  # warn above this many pixels (5000 x 5000)

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
  p.add_argument("--strict", action="store_true",
                 help="any unreadable or missing input is an error")
  p.add_argument("--resume", action="store_true",
                 help="keep OUT/predictions.jsonl and predict only the "
                      "images not in it yet")
  p.add_argument("--overlay-max-side", type=int,
                 default=overlay.DEFAULT_MAX_SIDE,
                 help="longest side of an overlay PNG in pixels (0: the "
                      "image's full size)")
  p.add_argument("--max-pixels", type=int, default=None,
                 help="refuse inputs with more pixels than this")
  common.add_method_options(p, "predict")
  return p


def read_images(paths: Sequence[pathlib.Path], max_pixels: int | None = None):
  """(readable [(path, uint8 image)], unreadable ["path: reason"]); inputs
  above `max_pixels` are refused (unreadable) before they are decoded."""
  good, bad = [], []
  for path in paths:
    try:
      pixels = image_utils.image_pixels(path)
      if max_pixels and pixels > max_pixels:
        raise ValueError(f"{path}: {pixels} pixels, more than --max-pixels "
                         f"{max_pixels}")
      if pixels > LARGE_INPUT_PIXELS:
        log.warning("predict: %s is very large (%.0f megapixels): slow and "
                    "memory-hungry (--max-pixels refuses such inputs)",
                    path, pixels / 1e6)
      good.append((path, image_utils.load_rgb(path)))
    except (ValueError, FileNotFoundError) as err:
      bad.append(str(err))
  return good, bad


def read_done(path: pathlib.Path) -> list[dict]:
  """The complete lines of an interrupted predictions.jsonl; a partial
  last line (killed mid-write) is cut off the file."""
  if not path.is_file():
    return []
  data = path.read_bytes()
  keep = data[:data.rfind(b"\n") + 1]
  if len(keep) != len(data):
    with open(path, "r+b") as f:
      f.truncate(len(keep))
  return [json.loads(line) for line in keep.decode().splitlines() if line]


def _strict_check(strict: bool, unreadable: Sequence[str]) -> None:
  if strict and unreadable:
    more = f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else ""
    raise ValueError(f"{unreadable[0]}{more}; --strict makes unreadable "
                     "inputs fatal")


def nothing_predicted(inputs: Sequence[str], paths, unreadable) -> str:
  """The one-line reason why no input could be predicted."""
  if unreadable:
    more = f"; {len(unreadable)} unreadable, listed in unreadable.txt" \
        if len(unreadable) > 1 else ""
    return f"no image could be predicted: {unreadable[0]}{more}"
  if not paths:
    return (f"no image could be predicted: no image files in "
            f"{', '.join(map(str, inputs))}")
  return "no image could be predicted"


@contextlib.contextmanager
def _sigterm_flag():
  """{"stop": bool}, set by SIGTERM (preemption) while the block runs."""
  flag = {"stop": False}
  try:
    previous = signal.signal(signal.SIGTERM,
                             lambda *_: flag.__setitem__("stop", True))
  except ValueError:  # not the main thread: no handler
    yield flag
    return
  try:
    yield flag
  finally:
    signal.signal(signal.SIGTERM, previous)


def _unique_stem(path: pathlib.Path, used: set) -> str:
  stem = f"{path.parent.name}_{path.stem}" if path.parent.name else path.stem
  name, k = stem, 1
  while name in used:
    name, k = f"{stem}_{k}", k + 1
  used.add(name)
  return name


def _write_one(out, name, path, image, scored: decision.Scored,
               rule: decision.ClassRule, save_maps: bool, save_masks: bool,
               max_side=overlay.DEFAULT_MAX_SIDE) -> dict:
  """Writes one image's overlay (and map / mask); returns its line."""
  small = overlay.fit_image(image, max_side)
  panel = overlay.panels(small, scored.to_image(scored.shown,
                                                small.shape[:2]),
                         scored.pixel_threshold)
  png = overlay.save_png(out / "overlays" / f"{name}.png", panel)
  d = decision.decide(scored, image.shape[:2], rule,
                      maps=save_maps or save_masks)
  if save_maps:
    np.save(out / "maps" / f"{name}.npy", d.raw_map)
  extra = {}
  if save_masks:  # 255 where Decision.anomaly_map >= the pixel threshold
    extra["mask"] = str(overlay.save_png(
        out / "masks" / f"{name}.png", d.mask.astype(np.uint8) * 255))
  return {**extra, "path": str(path), "score": d.score,
          "is_anomalous": d.is_anomalous, "threshold": d.threshold,
          "threshold_source": d.threshold_source,
          "class_name": d.class_name, "raw_score": d.raw_score,
          "max_map": float(np.max(scored.raw_map)), "overlay": str(png)}


def predict_paths(detector, inputs: Sequence[str], out,
                  class_name: str | None = None, threshold: str = "auto",
                  save_maps=False, batch_size: int = 8,
                  tile: tiling.TileSpec | None = None,
                  save_masks: bool = False, *,
                  strict: bool = False, resume: bool = False,
                  overlay_max_side: int | None = overlay.DEFAULT_MAX_SIDE,
                  max_pixels: int | None = None) -> dict[str, Any]:
  """Runs predict and writes every output; returns a summary dict.

  `detector`: what `load_detector(dir, **method_options)` returns; `tile`:
  predict each image in tiles (maps then come at the image size).

  Raises:
    ValueError: no input could be predicted, or (`strict`) one is
      unreadable.
  """
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  if save_maps:
    (out / "maps").mkdir(parents=True, exist_ok=True)
  class_name = class_name or detector.default_class_name()
  stored = calibration.load(detector.checkpoint_dir)
  calibration.check_method(stored, detector.method, detector.checkpoint_dir)
  rule = decision.class_rule(stored, class_name, threshold)
  entry = rule.entry
  paths, unreadable = common.list_images(inputs)
  _strict_check(strict, unreadable)
  lines = read_done(out / PREDICTIONS_FILE) if resume else []
  done = {line["path"] for line in lines}
  used: set = set()
  names = {path: _unique_stem(path, used) for path in paths}
  todo = [path for path in paths if str(path) not in done]
  facts = detector.begin_predict(paths, class_name, entry, out)
  chunk = CHUNK_BATCHES * batch_size  # bounds the images held in memory
  if tile is not None:
    chunk = 1  # tiled images are large: one at a time
  with open(out / PREDICTIONS_FILE, "a" if resume else "w") as sink, \
      _sigterm_flag() as preempt, \
      common.progress(None, "predict", total=len(paths),
                      initial=len(paths) - len(todo)) as bar:
    for start in range(0, len(todo), chunk):
      loaded, bad = read_images(todo[start:start + chunk], max_pixels)
      _strict_check(strict, bad)
      unreadable += bad
      raw_maps, raw_scores, to_image = decision.run_images(
          detector, [im for _, im in loaded], class_name, entry, batch_size,
          tile)
      scored = decision.score_batch(raw_maps, raw_scores, entry,
                                    detector.score_fusion, to_image)
      for (path, image), one in zip(loaded, scored):
        lines.append(_write_one(out, names[path], path, image, one, rule,
                                save_maps, save_masks, overlay_max_side))
        sink.write(json.dumps(lines[-1]) + "\n")
        sink.flush()  # a kill loses at most the image being written
        if preempt["stop"]:
          break
      if preempt["stop"]:
        log.warning("predict: SIGTERM: %d of %d images predicted, stopping"
                    " (rerun with --resume to finish)", len(lines),
                    len(paths))
        break
      bar.update(min(chunk, len(todo) - start))
  io.write_text(out / "unreadable.txt", "".join(u + "\n" for u in unreadable))
  for problem in unreadable:
    log.warning("predict: unreadable %s", problem)
  if not lines:
    raise ValueError(nothing_predicted(inputs, paths, unreadable))
  return {"predictions": lines, "unreadable": unreadable,
          "preempted": preempt["stop"],
          "threshold": rule.threshold,
          "threshold_source": rule.threshold_source, **facts}


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
                       save_masks=args.save_masks, strict=args.strict,
                       resume=args.resume,
                       overlay_max_side=args.overlay_max_side,
                       max_pixels=args.max_pixels)


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  summary, code = common.guarded(run, args)
  if code:
    return code
  _print_summary(summary)
  print(f"wrote {len(summary['predictions'])} predictions to "
        f"{pathlib.Path(args.out) / PREDICTIONS_FILE}")
  return 0
