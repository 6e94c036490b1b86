"""Few-shot evaluation: seeded prompt draws, saved prompt sets, mean +- std.

InCTRL's results depend strongly on which K normal images are drawn as
prompts (mala-lab/InCTRL #29, #34, #40), so an evaluation draws N prompt sets
and reports the mean and standard deviation (ddof = 0) of image AUROC and
AUPRC over the draws. Draw d uses `numpy.random.default_rng(seed + d)` and
picks K distinct indices of the normal pool (the target class's train/good
images). A draw can be saved with its images and reloaded, so a published
prompt set is evaluated exactly.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Callable, Sequence

import numpy as np

from moeclip_jax.eval import metrics


@dataclasses.dataclass(frozen=True)
class PromptSet:
  """K normal prompt images of one class, as drawn.

  Attributes:
    class_name: the class the prompts belong to.
    seed: the draw's seed (None for a hand-picked set).
    indices: int[K] positions in the normal pool.
    images: uint8[K, H, W, 3] (or float32 normalised) images.
    paths: the images' source files, if known.
  """

  class_name: str
  seed: int | None
  indices: np.ndarray
  images: np.ndarray
  paths: tuple[str, ...] = ()

  @property
  def shots(self) -> int:
    return len(self.indices)


def draw_prompt_indices(pool_size: int, shots: int, seed: int) -> np.ndarray:
  """K distinct indices in [0, pool_size), reproducible from `seed`."""
  if not 0 < shots <= pool_size:
    raise ValueError(f"cannot draw {shots} prompts from a pool of {pool_size}")
  rng = np.random.default_rng(seed)
  return np.sort(rng.choice(pool_size, size=shots, replace=False))


def draw_prompt_set(pool_images, class_name: str, shots: int, seed: int,
                    paths: Sequence[str] = ()) -> PromptSet:
  """Draws K prompts from `pool_images` [M, H, W, 3]."""
  idx = draw_prompt_indices(len(pool_images), shots, seed)
  picked = tuple(paths[i] for i in idx) if len(paths) else ()
  return PromptSet(class_name, seed, idx, np.asarray(pool_images)[idx], picked)


def save_prompt_set(path, prompt_set: PromptSet) -> pathlib.Path:
  """Writes a prompt set as .npz (no pickle)."""
  path = pathlib.Path(path)
  np.savez(
      path, class_name=np.str_(prompt_set.class_name),
      seed=np.int64(-1 if prompt_set.seed is None else prompt_set.seed),
      indices=np.asarray(prompt_set.indices, np.int64),
      images=prompt_set.images, paths=np.asarray(prompt_set.paths, np.str_))
  return path if path.suffix == ".npz" else path.with_suffix(".npz")


def load_prompt_set(path) -> PromptSet:
  """Reads a set written by `save_prompt_set`."""
  with np.load(path, allow_pickle=False) as z:
    missing = {"class_name", "indices", "images"} - set(z.files)
    if missing:
      raise ValueError(f"{path}: not a prompt set (missing {sorted(missing)})")
    seed = int(z["seed"]) if "seed" in z.files else -1
    return PromptSet(str(z["class_name"]), None if seed < 0 else seed,
                     z["indices"], z["images"],
                     tuple(str(p) for p in z["paths"]) if "paths" in z.files
                     else ())


def image_metrics(scores, labels) -> dict[str, float]:
  """Image AUROC and AUPRC (sklearn's average precision) of one set."""
  out = metrics.binary_metrics(np.asarray(scores, np.float64),
                               np.asarray(labels).astype(np.int64))
  return {"auroc": out["auroc"], "auprc": out["ap"]}


def summarize(per_draw: Sequence[dict[str, float]]) -> dict:
  """Mean and std (ddof = 0) of every metric over the draws."""
  out = {"draws": list(per_draw), "num_draws": len(per_draw)}
  for key in ("auroc", "auprc"):
    values = np.asarray([d[key] for d in per_draw], np.float64)
    out[f"{key}_mean"] = float(values.mean())
    out[f"{key}_std"] = float(values.std())
  return out


def evaluate_prompt_draws(
    score_fn: Callable[[np.ndarray], np.ndarray],
    pool_images: np.ndarray,
    labels: np.ndarray,
    *,
    shots: int,
    num_draws: int,
    seed: int = 0,
) -> dict:
  """Evaluates `num_draws` seeded prompt draws of K = `shots` images.

  Args:
    score_fn: prompt images [K, H, W, 3] -> scores float[N] of the fixed
      query set whose labels are `labels`.
    pool_images: [M, H, W, 3] normal images prompts are drawn from.
    labels: int[N] query labels (1 = anomalous).
    shots: K.
    num_draws: N draws; draw d uses seed + d.
    seed: base seed.

  Returns:
    dict(auroc_mean, auroc_std, auprc_mean, auprc_std, num_draws, shots,
    draws=[{seed, indices, auroc, auprc}, ...]).
  """
  per_draw = []
  for d in range(num_draws):
    idx = draw_prompt_indices(len(pool_images), shots, seed + d)
    scores = np.asarray(score_fn(np.asarray(pool_images)[idx]))
    if scores.shape != np.shape(labels):
      raise ValueError(
          f"score_fn returned {scores.shape}, expected {np.shape(labels)}")
    per_draw.append({"seed": seed + d, "indices": idx.tolist(),
                     **image_metrics(scores, labels)})
  return {**summarize(per_draw), "shots": shots}


def format_summary(result: dict) -> str:
  """One line: 'K=4 (5 draws): AUROC 0.812 +- 0.021, AUPRC ...'."""
  return (f"K={result['shots']} ({result['num_draws']} draws): "
          f"AUROC {result['auroc_mean']:.4f} +- {result['auroc_std']:.4f}, "
          f"AUPRC {result['auprc_mean']:.4f} +- {result['auprc_std']:.4f}")
