"""A loaded detector behind fixed jitted batch buckets.

Every batch is padded with zeros to the smallest bucket that holds it
(1, 2, 4, ... up to --max-batch) and every bucket is compiled by `warm_up`
before the server reports healthy, so no request waits on a compile (an
open-vocabulary class first seen at request time still encodes its text
once). Raw outputs go through the very functions `predict` and the Python
API use (`inference/decision.py`: `score_batch`, `decide`), so a served
score equals `moeclip-jax predict`'s for the same file (float32 rounding of
another batch shape aside, ~1e-7).

With `tile` (`serve --tile SIZE[,OVERLAP]`) every image is predicted in
tiles (`inference/tiling.py`, as `predict --tile`): `run_tiled` scores one
image per call, its tiles in jitted batches of the smallest warmed-up
bucket that holds them (at most --max-batch), the map stitched at the
image's size.

The engine names no method: per-class state (reference prompt images,
class statistics) goes through the detector's serving hooks
(`methods/base.py`: `serving_classes`, `not_ready`, `select_class`,
`add_prompts`, `prompt_shots`). All model calls run on one thread (the
batcher's); `finish` (maps, PNGs) is thread-safe.
"""

from __future__ import annotations

import base64
import collections
import io
import logging
from typing import Sequence

import numpy as np

from moeclip_jax.inference import calibration, decision, overlay, tiling
from moeclip_jax.serve import errors

log = logging.getLogger("moeclip_jax.serve")
OPEN_DEFAULT_CLASS = "object"  # predict's generic class
MAX_WARM_CLASSES = 64


def bucket_sizes(max_batch: int) -> tuple[int, ...]:
  """Powers of two below `max_batch`, then `max_batch`."""
  if max_batch < 1:
    raise ValueError(f"--max-batch must be >= 1, got {max_batch}")
  sizes, b = [], 1
  while b < max_batch:
    sizes.append(b)
    b *= 2
  return tuple(sizes + [max_batch])


Scored = decision.Scored  # one image's outputs on the detector's grid


class Engine:
  """Scores images of one class per call (see the module docstring).

  Args:
    detector: the loaded detector (`load_detector`).
    max_batch: the largest jitted batch.
    classes: the served classes (None: calibrated / trained / prompt-set
      classes; open vocabulary when there are none).
    tile: predict every image in tiles (None: whole images, batched).
  """

  def __init__(self, detector, max_batch: int = 8,
               classes: Sequence[str] | None = None,
               tile: tiling.TileSpec | None = None):
    self.detector = detector
    self.tile = tile
    self.tiled = collections.Counter()  # "images", "tiles" run tiled
    self.method = detector.method
    self.buckets = bucket_sizes(max_batch)
    self.calibration = calibration.load(detector.checkpoint_dir)
    calibration.check_method(self.calibration, self.method,
                             detector.checkpoint_dir)
    self.given_classes = list(classes) if classes else None
    self.batches = collections.Counter()  # (images, bucket) -> count
    self.ready = False

  @property
  def prompt_shots(self) -> int | None:
    """K reference images `POST /v1/prompts` takes (None: none)."""
    return self.detector.prompt_shots

  # ---- classes, thresholds, readiness ----
  def classes(self) -> list[str] | None:
    """The served classes, or None for open vocabulary."""
    if self.given_classes:
      return self.given_classes
    stored = dict((self.calibration or {}).get("classes", {}))
    own = self.detector.serving_classes()
    if calibration.ANY_CLASS in stored or own is None:
      return None
    return sorted(set(stored) | set(own)) or None

  def resolve_class(self, class_name: str | None) -> str:
    """The request's class (422 when not served)."""
    known = self.classes()
    if not class_name:
      if known is None:
        return OPEN_DEFAULT_CLASS
      if len(known) == 1:
        return known[0]
      raise errors.ApiError("unknown_class", "class_name is required (served"
                            f" classes: {', '.join(known)})")
    if known is not None and class_name not in known:
      raise errors.ApiError("unknown_class", f"class {class_name!r} is not "
                            f"served (classes: {', '.join(known)})")
    return class_name

  def entry(self, class_name: str) -> dict | None:
    return calibration.entry_for(self.calibration, class_name)

  def rule(self, spec, class_name: str) -> decision.ClassRule:
    """The request's decision rule (threshold `spec`: 'auto' / a number)."""
    try:
      return decision.class_rule(self.calibration, class_name, spec,
                                 warn_as=None)
    except ValueError:
      raise errors.ApiError("bad_request", "threshold must be 'auto' or a "
                            f"number, got {spec!r}") from None

  def check_ready(self, class_name: str) -> None:
    """409 when the class lacks what the detector needs to score it."""
    problem = self.detector.not_ready(class_name, self.entry(class_name))
    if problem is not None:
      raise errors.ApiError(*problem, status=errors.NOT_READY)

  # ---- the model (compute thread) ----
  def bucket_for(self, n: int) -> int:
    for b in self.buckets:
      if b >= n:
        return b
    raise ValueError(f"{n} images > --max-batch {self.buckets[-1]}")

  def run(self, images: Sequence[np.ndarray], class_name: str,
          warm_up: bool = False) -> tuple[list[Scored], int]:
    """Scores <= max_batch images of one class in one padded bucket."""
    b = self.bucket_for(len(images))
    entry = self.entry(class_name)
    model_entry = self.detector.select_class(class_name, entry, warm_up)
    raw_maps, raw_scores, to_image = decision.run_images(
        self.detector, images, class_name, model_entry, b)
    self.batches[(len(images), b)] += 1
    return decision.score_batch(raw_maps, raw_scores, entry,
                                self.detector.score_fusion, to_image), b

  def run_tiled(self, image: np.ndarray, class_name: str
                ) -> tuple[Scored, dict]:
    """Scores one image in tiles (`self.tile`); (its `Scored`, facts
    {"tiles", "batch_size"})."""
    tops, lefts = tiling.grid(image.shape[:2], self.tile)
    n = len(tops) * len(lefts)
    b = self.bucket_for(min(n, self.buckets[-1]))
    entry = self.entry(class_name)
    model_entry = self.detector.select_class(class_name, entry)
    raw_maps, raw_scores, to_image = decision.run_images(
        self.detector, [image], class_name, model_entry, b, self.tile)
    self.tiled.update(images=1, tiles=n)
    scored, = decision.score_batch(raw_maps, raw_scores, entry,
                                   self.detector.score_fusion, to_image)
    return scored, {"tiles": n, "batch_size": b}

  def warm_up(self) -> None:
    """Compiles every bucket (for every served class, up to 64; a class
    not ready yet compiles with the detector's stand-ins)."""
    names = (self.classes() or [OPEN_DEFAULT_CLASS])[:MAX_WARM_CLASSES]
    s = self.detector.image_size
    for name in names:
      for b in self.buckets:
        self.run([np.zeros((s, s, 3), np.uint8)] * b, name, warm_up=True)
    self.batches.clear()
    self.ready = True
    log.info("serve: warm-up compiled buckets %s for %d class(es)",
             self.buckets, len(names))

  def add_prompts(self, images, names, class_name: str | None,
                  seed: int) -> dict:
    """Uploaded reference images (compute thread: it encodes)."""
    try:
      return self.detector.add_prompts(images, names, class_name, seed)
    except ValueError as err:
      raise errors.ApiError("bad_prompts", str(err)) from None

  # ---- outputs (any thread) ----
  def finish(self, scored: Scored, hw, rule: decision.ClassRule,
             return_map: str, map_size: int | None) -> dict:
    """The reply entry of one image (its map on the image, if asked)."""
    d = decision.decide(scored, hw, rule, maps=False)
    out = {"score": d.score, "is_anomalous": d.is_anomalous,
           "threshold": d.threshold, "threshold_source": d.threshold_source}
    if return_map == "none":
      return out
    hw = _map_hw(hw, map_size)
    if return_map == "png":
      shown = scored.to_image(scored.shown, hw)
      out["map_png"] = png_base64(overlay.colormap(shown))
      out["map_threshold"] = d.pixel_threshold
    else:
      out["map"] = np.round(scored.to_image(scored.raw_map, hw), 7).tolist()
    return out

  def describe(self) -> dict:
    known = self.classes()
    facts = {"method": self.method,
             "image_size": int(self.detector.image_size),
             "classes": known, "open_vocabulary": known is None,
             "protocol": self.detector.default_protocol,
             "domain": self.detector.domain,
             "calibrated_classes": sorted(
                 (self.calibration or {}).get("classes", {})),
             "threshold_source": ("calibration" if self.calibration
                                  else calibration.UNCALIBRATED),
             "thresholds": {c: e["threshold"] for c, e in
                            (self.calibration or {}).get("classes",
                                                         {}).items()},
             "buckets": list(self.buckets),
             "tile": None if self.tile is None else self.tile.describe(),
             "prompt_shots": self.prompt_shots,
             "not_ready": self.not_ready(known)}
    return facts

  def not_ready(self, known: list[str] | None) -> dict[str, str]:
    """{class: code} of the served classes (the default class when open)
    that cannot be scored yet."""
    out = {}
    for name in (known or [OPEN_DEFAULT_CLASS])[:MAX_WARM_CLASSES]:
      problem = self.detector.not_ready(name, self.entry(name))
      if problem is not None:
        out[name] = problem[0]
    return out


def _map_hw(hw, map_size: int | None) -> tuple[int, int]:
  """The image's (H, W), or scaled so the longer side is `map_size`."""
  h, w = int(hw[0]), int(hw[1])
  if not map_size:
    return h, w
  scale = map_size / max(h, w)
  return max(1, round(h * scale)), max(1, round(w * scale))


def png_base64(rgb: np.ndarray) -> str:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  Image.fromarray(rgb).save(buf, format="PNG")
  return base64.b64encode(buf.getvalue()).decode("ascii")
