"""InCTRL prompt sets per class: from `--prompts` at start or uploaded.

The served detector holds one encoded prompt set at a time; this store keeps
every class's encoded set and installs the right one before each batch
(all calls run on the engine's single compute thread). Sources, first
match wins: an uploaded set of the class, a saved `.npz` set of the class
(`--prompts`), an uploaded pool (no class name: every class), the
`--prompts` image pool. A pool is drawn exactly as `predict` draws it
(K images, `--prompt-seed`), so scores equal `predict --prompts`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from moeclip_jax.methods.inctrl import fewshot
from moeclip_jax.serve import errors

POOL = None  # key of the every-class uploaded pool
_NOTHING = object()  # no set installed yet


def missing(class_name: str) -> errors.ApiError:
  return errors.ApiError(
      "prompts_missing", f"class {class_name!r}: no InCTRL prompt set; "
      "start the server with --prompts or POST K normal images to "
      "/v1/prompts")


class PromptStore:
  """Encoded prompt sets of an InCTRL adapter (see the module docstring)."""

  def __init__(self, adapter):
    self.adapter = adapter
    self.shots = adapter.shots
    self.uploaded: dict[str | None, fewshot.PromptSet] = {}
    self._features: dict[str | None, tuple] = {}  # key -> (set, features)
    self._active = _NOTHING

  @property
  def source(self):
    return self.adapter.source

  def classes(self) -> list[str]:
    """Classes with their own prompt set (uploaded or saved)."""
    return sorted(set(self.source.sets) | {c for c in self.uploaded if c})

  def has_pool(self) -> bool:
    return bool(self.source.pool) or POOL in self.uploaded

  def available(self, class_name: str) -> bool:
    return (class_name in self.uploaded or class_name in self.source.sets
            or self.has_pool())

  def _key_and_set(self, class_name: str):
    if class_name in self.uploaded:
      return class_name, self.uploaded[class_name]
    if class_name in self.source.sets:
      return ("saved", class_name), self.source.draw(class_name, 0)
    if POOL in self.uploaded:
      return POOL, self.uploaded[POOL]
    if self.source.pool:
      return ("pool", class_name), self.source.draw(class_name, 0)
    raise missing(class_name)

  def activate(self, class_name: str) -> fewshot.PromptSet:
    """Installs the class's encoded prompts on the detector."""
    key, ps = self._key_and_set(class_name)
    if key not in self._features:
      pixels = self.adapter._normalise(ps.images)  # pylint: disable=protected-access
      self._features[key] = (ps, self.adapter.detector.encode(pixels))
    ps, feats = self._features[key]
    if self._active != key:
      self.adapter.detector.prompt_features = feats
      self.adapter.prompt_set = ps
      self._active = key
    return ps

  def upload(self, images: Sequence[np.ndarray], names: Sequence[str],
             class_name: str | None, seed: int) -> fewshot.PromptSet:
    """Draws K of the uploaded images (predict's draw) as the class's set
    (every class's when `class_name` is None)."""
    if len(images) < self.shots:
      raise errors.ApiError(
          "bad_prompts", f"{len(images)} prompt image(s) uploaded; this "
          f"detector uses K = {self.shots} (--shots)")
    idx = fewshot.draw_prompt_indices(len(images), self.shots, seed)
    picked = self.source._resized([images[i] for i in idx])  # pylint: disable=protected-access
    ps = fewshot.PromptSet(class_name or "*", seed, idx, picked,
                           tuple(f"upload:{names[i]}" for i in idx))
    return ps

  def install(self, ps: fewshot.PromptSet, class_name: str | None) -> None:
    """Registers an uploaded set (compute thread: it encodes)."""
    key = class_name if class_name else POOL
    self.uploaded[key] = ps
    self._features.pop(key, None)
    self._active = _NOTHING  # installed on the next batch

  def warm_up_set(self) -> fewshot.PromptSet:
    """K blank images: compiles the scoring shapes before any upload."""
    s = self.adapter.image_size
    return fewshot.PromptSet("*", 0, np.arange(self.shots),
                             np.zeros((self.shots, s, s, 3), np.uint8))

  def install_blank(self) -> None:
    ps = self.warm_up_set()
    pixels = self.adapter._normalise(ps.images)  # pylint: disable=protected-access
    self.adapter.detector.prompt_features = self.adapter.detector.encode(
        pixels)
    self.adapter.prompt_set = ps
    self._active = "blank"

  def describe(self) -> dict:
    return {"shots": self.shots, "classes": self.classes(),
            "pool": self.has_pool()}
