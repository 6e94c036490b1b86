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
