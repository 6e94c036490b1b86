"""InCTRL prompt sources for the verbs: saved sets, loose images, datasets.

A class's K normal prompt images come from, in this order:
  * a saved prompt set (`.npz` of `methods.inctrl.fewshot.save_prompt_set`)
    whose class is the class: used exactly as saved (one fixed draw);
  * loose images / folders given with `--prompts`: the pool for every class;
  * the dataset's normal TRAIN images of the class (the InCTRL protocol),
    sorted by path, as `methods.inctrl.evaluate.class_split` does.
Draw d of a pool picks K distinct images with
`fewshot.draw_prompt_indices(len(pool), K, seed + d)`, so the verbs draw the
same sets as `methods.inctrl.evaluate.evaluate_records`.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from moeclip_jax.data import transforms
from moeclip_jax.methods.inctrl import fewshot
from moeclip_jax.utils import images as image_utils


def fingerprint(images: np.ndarray) -> str:
  """sha256 (16 hex) of a prompt set's model-size uint8 images."""
  digest = hashlib.sha256()
  for im in np.asarray(images):
    digest.update(np.ascontiguousarray(im).tobytes())
  return digest.hexdigest()[:16]


class PromptSource:
  """Where each class's prompts come from (see the module docstring).

  Args:
    items: `--prompts` values (files, folders, .npz sets) or None.
    preprocess: the detector's preprocessing (prompts are stored at its
      model size, uint8, before normalisation).
    shots: K for pools (None: the set's own size for saved sets).
    seed: base seed of the draws.
  """

  def __init__(self, items: Sequence[str] | None, preprocess, shots: int,
               seed: int = 0):
    self.cfg = transforms.get_preprocess(preprocess)
    self.shots, self.seed = shots, seed
    self.sets: dict[str, fewshot.PromptSet] = {}
    self.pool: list[str] = []
    self.given = bool(items)
    loose = []
    for item in items or ():
      if str(item).endswith(".npz"):
        ps = fewshot.load_prompt_set(item)
        self.sets[ps.class_name] = ps
      else:
        loose.append(item)
    if loose:
      paths, problems = image_utils.list_images(loose)
      if problems:
        raise FileNotFoundError("; ".join(problems))
      if not paths:
        raise ValueError(f"--prompts {loose}: no images found")
      self.pool = [str(p) for p in paths]

  @property
  def only_fixed_sets(self) -> bool:
    return bool(self.sets) and not self.pool

  def check_shots(self, explicit: bool) -> None:
    """Saved sets fix K: an explicit different --shots is an error."""
    for ps in self.sets.values():
      if explicit and ps.shots != self.shots:
        raise ValueError(f"--shots {self.shots} but the saved prompt set of "
                         f"{ps.class_name!r} has {ps.shots} images")

  def _resized(self, images) -> np.ndarray:
    s = self.cfg.output_size
    return np.stack([im if im.shape[:2] == (s, s) and im.dtype == np.uint8
                     else transforms.resize_image(np.asarray(im, np.uint8),
                                                  self.cfg)
                     for im in images])

  def _pool_for(self, class_name: str, all_records) -> list[str]:
    if self.pool:
      return self.pool
    if self.given:
      raise ValueError(f"--prompts has no prompt set for class "
                       f"{class_name!r} (sets for {sorted(self.sets)})")
    if all_records is None:
      raise ValueError("InCTRL needs --prompts (normal images or a saved "
                       "prompt set .npz) to score images")
    pool = sorted(r.image_path for r in all_records
                  if r.class_name == class_name and r.split == "train"
                  and r.label == 0)
    if not pool:
      raise ValueError(f"class {class_name!r} has no normal train images "
                       "to draw InCTRL prompts from; give --prompts")
    return pool

  def draw(self, class_name: str, draw: int = 0,
           all_records=None) -> fewshot.PromptSet:
    """Prompt set of `class_name` for draw `draw` (uint8 at model size)."""
    if class_name in self.sets:
      ps = self.sets[class_name]
      return fewshot.PromptSet(ps.class_name, ps.seed, ps.indices,
                               self._resized(ps.images), ps.paths)
    if len(self.sets) == 1 and not self.pool and all_records is None:
      ps = next(iter(self.sets.values()))  # predict: the one saved set
      return fewshot.PromptSet(ps.class_name, ps.seed, ps.indices,
                               self._resized(ps.images), ps.paths)
    pool = self._pool_for(class_name, all_records)
    seed = self.seed + draw
    idx = fewshot.draw_prompt_indices(len(pool), self.shots, seed)
    images = [image_utils.load_rgb(pool[i]) for i in idx]
    return fewshot.PromptSet(class_name, seed, idx, self._resized(images),
                             tuple(pool[i] for i in idx))


def describe(ps: fewshot.PromptSet) -> dict:
  """JSON facts of a drawn set (protocol.json, calibration.json)."""
  return {"class_name": ps.class_name, "seed": ps.seed, "shots": ps.shots,
          "indices": [int(i) for i in ps.indices], "paths": list(ps.paths),
          "fingerprint": fingerprint(ps.images)}


class PromptStore:
  """Every class's encoded prompt set, for a long-lived detector (serve).

  Sources, first match wins: an uploaded set of the class, a saved `.npz`
  set of the class (`--prompts`), an uploaded pool (no class name: every
  class), the `--prompts` image pool. A pool is drawn as `predict` draws it
  (K images, seed), so scores equal `predict --prompts`'s.

  Args:
    source: the detector's `PromptSource` (`--prompts`).
    shots: K.
    encode: uint8 prompt images at the model size [K, S, S, 3] -> features.
  """

  _POOL = ("pool",)  # key of the --prompts pool's draw (same for all)

  def __init__(self, source: PromptSource, shots: int, encode):
    self.source, self.shots, self.encode = source, shots, encode
    self.uploaded: dict[str | None, fewshot.PromptSet] = {}  # None: pool
    self._features: dict = {}  # key -> (set, features)

  def classes(self) -> list[str]:
    """Classes with their own set (uploaded or saved)."""
    return sorted(set(self.source.sets) | {c for c in self.uploaded if c})

  def has_pool(self) -> bool:
    return bool(self.source.pool) or None in self.uploaded

  def available(self, class_name: str) -> bool:
    return (class_name in self.uploaded or class_name in self.source.sets
            or self.has_pool())

  def _key_and_set(self, class_name: str):
    if class_name in self.uploaded:
      return class_name, lambda: self.uploaded[class_name]
    if class_name in self.source.sets:
      return ("saved", class_name), lambda: self.source.draw(class_name, 0)
    if None in self.uploaded:
      return None, lambda: self.uploaded[None]
    if self.source.pool:
      return self._POOL, lambda: self.source.draw(class_name, 0)
    raise KeyError(class_name)

  def get(self, class_name: str) -> tuple[fewshot.PromptSet, dict]:
    """(set, encoded features) of the class (encoded once); KeyError when
    it has none."""
    key, make = self._key_and_set(class_name)
    if key not in self._features:
      ps = make()
      self._features[key] = (ps, self.encode(ps.images))
    return self._features[key]

  def upload(self, images: Sequence[np.ndarray], names: Sequence[str],
             class_name: str | None, seed: int) -> fewshot.PromptSet:
    """Draws K of the uploaded uint8 images (predict's draw) as the class's
    set (every class's when `class_name` is None)."""
    if len(images) < self.shots:
      raise ValueError(f"{len(images)} prompt image(s) uploaded; this "
                       f"detector uses K = {self.shots} (--shots)")
    idx = fewshot.draw_prompt_indices(len(images), self.shots, seed)
    ps = fewshot.PromptSet(class_name or "*", seed, idx,
                           self.source._resized([images[i] for i in idx]),  # pylint: disable=protected-access
                           tuple(f"upload:{names[i]}" for i in idx))
    self.uploaded[class_name] = ps
    self._features.pop(class_name, None)
    return ps

  def blank(self, size: int) -> tuple[fewshot.PromptSet, dict]:
    """K black images (compiles the scoring shapes before any upload)."""
    if "blank" not in self._features:
      ps = fewshot.PromptSet("*", 0, np.arange(self.shots),
                             np.zeros((self.shots, size, size, 3), np.uint8))
      self._features["blank"] = (ps, self.encode(ps.images))
    return self._features["blank"]
