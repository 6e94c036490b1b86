"""From a detector's raw outputs to a decision: the one place for all.

The `predict` verb, `serve` and the Python API (`det.predict(images,
class_name=...)`, `methods/base.py`) all decide an image here:

  1. `class_rule`: the class's calibration entry (another class's, with a
     warning naming both, when it has none of its own) and the image
     threshold ('auto' = the calibrated one, or a number);
  2. `run_images`: the detector's raw maps and scores (whole images, or
     tiles stitched at the image size with `inference/tiling.py`);
  3. `score_batch`: the calibrated score (`calibration.score_images`: the
     class min-max and the detector's fusion) -> `Scored`, on the
     detector's grid;
  4. `decide`: `Scored` + the input size + the rule -> `Decision`:
     is_anomalous = score >= threshold; the map at the input size; the
     mask = that map >= the pixel threshold.

The map a mask thresholds (`Decision.anomaly_map`): with a calibration
entry the detector's map at the input size, normalised with the class
statistics (the calibrated `map_threshold` applies to it, so it is about
[0, 1] on normal images and may leave it); without one, the per-image
min-max map in [0, 1] against `calibration.DEFAULT_MAP_THRESHOLD`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Sequence

import numpy as np

from moeclip_jax.inference import calibration, overlay, tiling
from moeclip_jax.utils import images as image_utils

log = logging.getLogger("moeclip_jax.inference")
MapToImage = Callable[[np.ndarray, tuple[int, int]], np.ndarray]


@dataclasses.dataclass(frozen=True)
class ClassRule:
  """How images of one class are decided.

  class_name: the class the images are scored as.
  entry: the calibration entry used (None: uncalibrated).
  calibrated_class: the class of `entry` (another one on a fallback,
    `calibration.ANY_CLASS` for '*'; None when uncalibrated).
  threshold: the image threshold (None: no decision).
  threshold_source: "calibration", "user" or `calibration.UNCALIBRATED`.
  """

  class_name: str
  entry: dict | None
  calibrated_class: str | None
  threshold: float | None
  threshold_source: str


def class_rule(stored: dict | None, class_name: str, threshold="auto",
               warn_as: str | None = "predict") -> ClassRule:
  """The rule of `class_name` from a loaded calibration.json (`stored`).

  `threshold`: 'auto' (the calibrated one) or a number. `warn_as`: the
  prefix of the warning logged when the entry is another class's (None:
  no warning, e.g. per served request).
  """
  used = calibration.entry_class(stored, class_name)
  if warn_as and used is not None and used != class_name:
    log.warning("%s: calibration.json has no entry for class %r: using the "
                "calibration of class %r (run `moeclip-jax calibrate "
                "--class-name %s` for its own)", warn_as, class_name, used,
                class_name)
  entry = calibration.entry_for(stored, class_name)
  thr, source = calibration.resolve_threshold(threshold, entry)
  return ClassRule(class_name, entry, used, thr, source)


@dataclasses.dataclass(frozen=True)
class Scored:
  """One image's calibrated outputs on the detector's grid (model size
  [S, S], or the image size when tiled)."""

  score: float  # the calibrated (fused) score the threshold applies to
  raw_score: float  # the detector's own image score
  raw_map: np.ndarray  # float32[S, S] detector map (before min-max)
  shown: np.ndarray  # float32[S, S] in [0, 1], for display
  pixel_threshold: float  # applies to `Decision.anomaly_map`
  entry: dict | None  # the calibration entry the score used
  to_image: MapToImage = overlay.resize_map  # grid -> [H, W] on the image


def run_images(detector, images: Sequence[np.ndarray], class_name: str,
               entry: dict | None, batch_size: int = 8,
               tile: tiling.TileSpec | None = None
               ) -> tuple[Any, np.ndarray, MapToImage]:
  """(raw maps, raw scores [N], map -> image fn) of uint8 images.

  Whole images: maps [N, S, S] at the model size and the detector's
  `map_to_image`; tiled: [H_i, W_i] maps already at each image's size.
  `entry`: what the detector's `predict_images` gets (the calibration
  entry; serve: `select_class`'s).
  """
  if tile is None:
    raw_maps, raw_scores = detector.predict_images(
        list(images), class_name, batch_size, entry, desc=None)
    return raw_maps, raw_scores, detector.map_to_image
  raw_maps, raw_scores = tiling.predict_images(
      detector, images, class_name, tile, batch_size, entry)
  return raw_maps, raw_scores, overlay.resize_map


def score_batch(raw_maps, raw_scores, entry: dict | None,
                fuse: calibration.Fusion | None,
                to_image: MapToImage = overlay.resize_map) -> list[Scored]:
  """`Scored` of each image (`calibration.score_images`, per image when
  the maps differ in size)."""
  raw_scores = np.asarray(raw_scores)
  if isinstance(raw_maps, np.ndarray):
    groups = [(raw_maps, raw_scores)]
  else:
    groups = [(m[None], s[None]) for m, s in zip(raw_maps, raw_scores)]
  out = []
  for maps, scores in groups:
    shown, fused, map_thr = calibration.score_images(maps, scores, entry,
                                                     fuse)
    out += [Scored(float(fused[i]), float(scores[i]), maps[i], shown[i],
                   float(map_thr[i]), entry, to_image)
            for i in range(len(scores))]
  return out


@dataclasses.dataclass(frozen=True)
class Decision:
  """One image's decision (what `det.predict(images, class_name=...)`
  returns, one per image).

  score: the calibrated score (MoECLIP: the fused score; InCTRL and
    AnomalyMoE: their own image score).
  is_anomalous: score >= threshold (None only without a threshold).
  threshold: the image threshold used.
  anomaly_map: float32[H, W] at the input size, the map `mask` thresholds
    (class-normalised with calibration; see the module docstring).
  mask: bool[H, W], anomaly_map >= pixel_threshold.
  pixel_threshold: the calibrated `map_threshold` (or the uncalibrated
    default on per-image min-max maps).
  threshold_source: "calibration", "user" or `calibration.UNCALIBRATED`.
  raw_score: the detector's image score before calibration.
  raw_map: float32[H, W], the detector's map at the input size.
  class_name / calibrated_class: the class scored / the calibration entry
    used (they differ on a fallback, which is warned about).
  """

  score: float
  is_anomalous: bool | None
  threshold: float | None
  anomaly_map: np.ndarray | None
  mask: np.ndarray | None
  pixel_threshold: float
  threshold_source: str
  raw_score: float
  raw_map: np.ndarray | None
  class_name: str
  calibrated_class: str | None

  def summary(self) -> dict[str, Any]:
    """The JSON-able fields (no maps)."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
            if f.name not in ("anomaly_map", "mask", "raw_map")}


def decide(scored: Scored, hw, rule: ClassRule, maps: bool = True
           ) -> Decision:
  """The decision of one image of size `hw` = (H, W).

  `maps`: also bring the maps to [H, W] (the map, its mask, the raw map);
  False leaves them None (a score-only reply, no large arrays).
  """
  raw = amap = mask = None
  if maps:
    hw = (int(hw[0]), int(hw[1]))
    raw = scored.to_image(scored.raw_map, hw)
    amap = (calibration.normalise_maps(raw, scored.entry)
            if scored.entry is not None else scored.to_image(scored.shown, hw))
    mask = amap >= scored.pixel_threshold
  return Decision(
      score=scored.score,
      is_anomalous=calibration.decision(scored.score, rule.threshold),
      threshold=rule.threshold, anomaly_map=amap, mask=mask,
      pixel_threshold=scored.pixel_threshold,
      threshold_source=rule.threshold_source, raw_score=scored.raw_score,
      raw_map=raw, class_name=rule.class_name,
      calibrated_class=rule.calibrated_class)


# ---- the Python API ----------------------------------------------------------
def as_images(images) -> list[np.ndarray]:
  """Paths, PIL images or uint8 arrays (one, a list, or a [B, H, W, 3]
  batch) -> [uint8 [H, W, 3]]."""
  if isinstance(images, np.ndarray) and images.ndim == 4:
    images = list(images)
  elif not isinstance(images, (list, tuple)):
    images = [images]
  return [image_utils.as_rgb(im, f"images[{i}]")
          for i, im in enumerate(images)]


def is_undecoded(images) -> bool:
  """Whether `images` holds a path or a PIL image (no raw array form)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  items = images if isinstance(images, (list, tuple)) else [images]
  return any(isinstance(im, (str, Image.Image)) or hasattr(im, "__fspath__")
             for im in items)


def uncalibrated_error(detector, class_name: str,
                       stored: dict | None) -> ValueError:
  path = calibration.path_in(detector.checkpoint_dir)
  have = ("no such file" if stored is None else "calibrated classes: "
          + ", ".join(sorted(stored["classes"])))
  return ValueError(
      f"{path}: no calibration for class {class_name!r} ({have}): run "
      f"`moeclip-jax calibrate --checkpoint {detector.checkpoint_dir} "
      f"--normal GOOD_IMAGES/ --class-name {class_name}`, or pass "
      "threshold=<number>")


def decide_images(detector, images, class_name: str | None = None,
                  threshold="auto", batch_size: int = 8,
                  tile: tiling.TileSpec | str | None = None
                  ) -> list[Decision]:
  """`Decision`s of images (paths, PIL images or uint8 arrays) of one
  class, with the checkpoint's calibration (see `methods/base.py`
  `DetectorBase.predict`).

  Raises:
    ValueError: no calibration applies to the class and `threshold` is
      'auto' (the message says how to calibrate), a bad image, a bad
      `tile`.
  """
  if isinstance(tile, str):
    tile = tiling.parse(tile)
  arrays = as_images(images)
  class_name = class_name or detector.default_class_name()
  stored = calibration.load(detector.checkpoint_dir)
  calibration.check_method(stored, detector.method, detector.checkpoint_dir)
  rule = class_rule(stored, class_name, threshold)
  if rule.threshold is None:
    raise uncalibrated_error(detector, class_name, stored)
  if not arrays:
    return []
  detector.begin_predict(None, class_name, rule.entry)
  raw_maps, raw_scores, to_image = run_images(
      detector, arrays, class_name, rule.entry, batch_size, tile)
  scored = score_batch(raw_maps, raw_scores, rule.entry,
                       detector.score_fusion, to_image)
  return [decide(s, im.shape[:2], rule) for s, im in zip(scored, arrays)]
