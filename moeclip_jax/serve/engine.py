"""A loaded detector behind fixed jitted batch buckets.

Every batch is padded with zeros to the smallest bucket that holds it
(1, 2, 4, ... up to --max-batch) and every bucket is compiled by `warm_up`
before the server reports healthy, so no request waits on a compile (an
open-vocabulary MoECLIP class first seen at request time still encodes its
text once). Raw outputs go through the very functions `predict` uses
(`inference.scoring`), so a served score equals `moeclip-jax predict`'s for
the same file (float32 rounding of another batch shape aside, ~1e-7).

All model calls run on one thread (the batcher's); `finish` (maps, PNGs)
is thread-safe.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import io
import logging
from typing import Sequence

import numpy as np

from moeclip_jax.inference import scoring
from moeclip_jax.serve import errors
from moeclip_jax.serve import prompts as prompts_lib
# TODO(merge #18): moeclip_jax.inference.calibration / .overlay.
from moeclip_jax.verbs import calibration
from moeclip_jax.verbs import overlay

log = logging.getLogger("moeclip_jax.serve")
OPEN_DEFAULT_CLASS = "object"  # predict's generic class
MAX_WARM_CLASSES = 64
# method -> what a class needs before it can be scored (else 409).
NEEDS = {"moeclip": None, "inctrl": "prompts", "anomalymoe": "statistics"}


def bucket_sizes(max_batch: int) -> tuple[int, ...]:
  """Powers of two below `max_batch`, then `max_batch`."""
  if max_batch < 1:
    raise ValueError(f"--max-batch must be >= 1, got {max_batch}")
  sizes, b = [], 1
  while b < max_batch:
    sizes.append(b)
    b *= 2
  return tuple(sizes + [max_batch])


@dataclasses.dataclass
class Scored:
  """One image's outputs: score, raw map and display map at model size."""

  score: float
  raw_map: np.ndarray  # float[S, S]
  shown: np.ndarray  # float[S, S] in [0, 1]
  map_threshold: float


class Engine:
  """Scores images of one class per call (see the module docstring).

  Args:
    adapter: the loaded detector's verb adapter (`common.load_adapter`).
    max_batch: the largest jitted batch.
    classes: the served classes (None: calibrated / trained / prompt-set
      classes; open vocabulary when there are none).
  """

  def __init__(self, adapter, max_batch: int = 8,
               classes: Sequence[str] | None = None):
    self.adapter = adapter
    self.method = adapter.name
    self.buckets = bucket_sizes(max_batch)
    self.calibration = calibration.load(adapter.checkpoint_dir)
    calibration.check_method(self.calibration, self.method,
                             adapter.checkpoint_dir)
    self.needs = NEEDS.get(self.method)
    self.prompts = (prompts_lib.PromptStore(adapter)
                    if self.needs == "prompts" else None)
    self.given_classes = list(classes) if classes else None
    self.batches = collections.Counter()  # (images, bucket) -> count
    self.ready = False

  # ---- classes, thresholds, readiness ----
  def classes(self) -> list[str] | None:
    """The served classes, or None for open vocabulary."""
    if self.given_classes:
      return self.given_classes
    stored = dict((self.calibration or {}).get("classes", {}))
    if calibration.ANY_CLASS in stored:
      return None
    names = set(stored)
    names |= set(getattr(self.adapter.detector, "class_names", None) or ())
    if self.prompts is not None:
      if self.prompts.has_pool():
        return None
      names |= set(self.prompts.classes())
    return sorted(names) or None

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

  def threshold(self, spec, class_name: str) -> tuple[float | None, str]:
    try:
      return scoring.resolve_threshold(spec, self.entry(class_name))
    except ValueError:
      raise errors.ApiError("bad_request", "threshold must be 'auto' or a "
                            f"number, got {spec!r}") from None

  def check_ready(self, class_name: str) -> None:
    """409 when the class lacks what the method needs to score it."""
    if self.needs == "prompts" and not self.prompts.available(class_name):
      raise prompts_lib.missing(class_name)
    if self.needs == "statistics" and self._min_max(class_name) is None:
      raise errors.ApiError(
          "class_statistics_missing", f"class {class_name!r}: no AnomalyMoE "
          "class statistics in calibration.json or the checkpoint (run "
          "`moeclip-jax calibrate --normal DIR --class-name "
          f"{class_name}` on normal images first)")

  def _min_max(self, class_name):
    return self.adapter._entry_min_max(class_name, self.entry(class_name))  # pylint: disable=protected-access

  # ---- the model (compute thread) ----
  def bucket_for(self, n: int) -> int:
    for b in self.buckets:
      if b >= n:
        return b
    raise ValueError(f"{n} images > --max-batch {self.buckets[-1]}")

  def run(self, images: Sequence[np.ndarray], class_name: str
          ) -> tuple[list[Scored], int]:
    """Scores <= max_batch images of one class in one padded bucket."""
    b = self.bucket_for(len(images))
    if self.prompts is not None:
      self.prompts.activate(class_name)
    entry = self.entry(class_name)
    raw_maps, raw_scores = self.adapter.predict_images(
        list(images), class_name, b, entry, desc=None)
    shown, scores, map_thr = scoring.score_images(
        raw_maps, raw_scores, entry, self.adapter.domain,
        self.adapter.fuses_scores)
    self.batches[(len(images), b)] += 1
    return [Scored(float(scores[i]), raw_maps[i], shown[i],
                   float(map_thr[i])) for i in range(len(images))], b

  def warm_up(self) -> None:
    """Compiles every bucket (for every served class, up to 64)."""
    names = (self.classes() or [OPEN_DEFAULT_CLASS])[:MAX_WARM_CLASSES]
    s = self.adapter.image_size
    for name in names:
      for b in self.buckets:
        images = [np.zeros((s, s, 3), np.uint8)] * b
        stand_in = self._stand_in(name)
        if stand_in is None:
          self.run(images, name)
        else:  # compiles the shapes the class will use once it is ready
          self.adapter.predict_images(images, name, b, stand_in, desc=None)
    if self.prompts is not None:
      self.prompts.install_blank()  # features of no real class stay active
    self.batches.clear()
    self.ready = True
    log.info("serve: warm-up compiled buckets %s for %d class(es)",
             self.buckets, len(names))

  def _stand_in(self, class_name: str) -> dict | None:
    """Warm-up only: a stand-in entry for a class not ready yet (blank
    prompts installed / unit min-max), None when the class is ready."""
    if self.needs == "prompts" and not self.prompts.available(class_name):
      self.prompts.install_blank()
      return self.entry(class_name) or {}
    if self.needs == "statistics" and self._min_max(class_name) is None:
      return {"class_min_max": [[0.0, 1.0]] * 3}
    return None

  def install_prompts(self, ps, class_name: str | None) -> None:
    self.prompts.install(ps, class_name)
    if class_name:
      self.prompts.activate(class_name)  # encodes now, not at a request

  # ---- outputs (any thread) ----
  def finish(self, scored: Scored, hw, threshold: float | None,
             return_map: str, map_size: int | None) -> dict:
    """The reply entry of one image (its map on the image, if asked)."""
    out = {"score": scored.score,
           "is_anomalous": scoring.decision(scored.score, threshold),
           "threshold": threshold}
    if return_map == "none":
      return out
    hw = _map_hw(hw, map_size)
    if return_map == "png":
      shown = self.adapter.map_to_image(scored.shown, hw)
      out["map_png"] = png_base64(overlay.colormap(shown))
      out["map_threshold"] = scored.map_threshold
    else:
      out["map"] = np.round(self.adapter.map_to_image(scored.raw_map, hw),
                            7).tolist()
    return out

  def describe(self) -> dict:
    known = self.classes()
    facts = {"method": self.method,
             "image_size": int(self.adapter.image_size),
             "classes": known, "open_vocabulary": known is None,
             "protocol": self.adapter.default_protocol,
             "domain": self.adapter.domain,
             "calibrated_classes": sorted(
                 (self.calibration or {}).get("classes", {})),
             "threshold_source": ("calibration" if self.calibration
                                  else scoring.UNCALIBRATED),
             "thresholds": {c: e["threshold"] for c, e in
                            (self.calibration or {}).get("classes",
                                                         {}).items()},
             "buckets": list(self.buckets), "needs": self.needs}
    if self.prompts is not None:
      facts["prompts"] = self.prompts.describe()
    return facts


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
