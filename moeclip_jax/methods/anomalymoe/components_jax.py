"""Component masks in-graph: `components.ComponentModel.masks` in JAX.

Used at prediction time (held-out evaluation in the trainer, the detector)
so a new image gets its part masks from the per-class centres saved with
the model, without a host round trip:

  fmap [B, g, g, D] (mean of the target blocks' patch tokens)
    -> cosine to the class centres [B, k, g*g], minus the mean, clamp 0
    -> bilinear upsample (align_corners) to S, softmax over clusters
    -> x 255 rounded, Otsu threshold per map (skimage's rule on uint8)
    -> kept clusters only.

Float32 here vs float64 in `components.py`: a pixel whose value rounds
across a grey level may flip (a few pixels per map).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from moeclip_jax.data import components


@functools.lru_cache(maxsize=8)
def _upsample_matrix(grid: int, size: int) -> np.ndarray:
  # pylint: disable-next=protected-access
  mat = components._align_corners_matrix(grid, size)
  return mat.astype(np.float32)


def cluster_probs(fmap, centres, size: int):
  """fmap [B, g, g, D], centres [B, k, D] -> softmax maps [B, k, S, S].

  All-zero centre rows are padding: they take no part in the softmax.
  """
  b, g = fmap.shape[0], fmap.shape[1]
  real = jnp.linalg.norm(centres, axis=-1) > 0  # [B, k]
  f = fmap.reshape(b, g * g, -1)
  f = f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), 1e-12)
  c = centres / jnp.maximum(
      jnp.linalg.norm(centres, axis=-1, keepdims=True), 1e-12)
  sim = jnp.einsum("bkd,bnd->bkn", c, f)  # [B, k, g*g]
  sim = jnp.maximum(sim - jnp.mean(sim, axis=-1, keepdims=True), 0.0)
  sim = sim.reshape(b, -1, g, g)
  mat = jnp.asarray(_upsample_matrix(g, size))  # [S, g]
  up = jnp.einsum("ih,bkhw,jw->bkij", mat, sim, mat)  # [B, k, S, S]
  up = jnp.where(real[:, :, None, None], up, -1e30)
  return jax.nn.softmax(up, axis=1)


def otsu_threshold(grey):
  """skimage `threshold_otsu` of one uint8-valued map (int32[S, S]) -> int.

  Bins are the 256 grey levels; levels outside [min, max] carry no weight
  and are never chosen (skimage only histograms the image's own range).
  """
  hist = jnp.bincount(grey.reshape(-1), length=256).astype(jnp.float32)
  levels = jnp.arange(256, dtype=jnp.float32)
  w1 = jnp.cumsum(hist)
  w2 = jnp.cumsum(hist[::-1])[::-1]
  m1 = jnp.cumsum(hist * levels) / jnp.maximum(w1, 1.0)
  m2 = (jnp.cumsum((hist * levels)[::-1]) / jnp.maximum(w2[::-1], 1.0))[::-1]
  var = w1[:-1] * w2[1:] * (m1[:-1] - m2[1:]) ** 2  # [255]
  var = jnp.where((w1[:-1] > 0) & (w2[1:] > 0), var, -1.0)
  return jnp.argmax(var)


def otsu_masks(probs):
  """probs [B, k, S, S] -> {0, 1} float32 masks (x 255, Otsu per map)."""
  grey = jnp.round(probs * 255.0).astype(jnp.int32)
  flat = grey.reshape(-1, *grey.shape[-2:])
  thresh = jax.vmap(otsu_threshold)(flat).reshape(grey.shape[:2])
  lo = jnp.min(grey, axis=(-2, -1))
  hi = jnp.max(grey, axis=(-2, -1))
  masks = grey > thresh[..., None, None]
  return (masks & (hi > lo)[..., None, None]).astype(jnp.float32)


def component_masks(fmap, centres, keep, size: int):
  """Masks of kept clusters.

  Args:
    fmap: float[B, g, g, D] features (mean of the target blocks).
    centres: float[B, k, D] each image's class centres.
    keep: float[B, k], 1 for kept clusters (0 rows: no components).
    size: S.

  Returns:
    float32[B, k, S, S]; dropped clusters are all zero.
  """
  masks = otsu_masks(cluster_probs(fmap, centres, size))
  return masks * keep[:, :, None, None]


def model_arrays(model: components.ComponentModel, class_names, k: int,
                 dim: int) -> dict[str, np.ndarray]:
  """ComponentModel -> {"centres" [C, k, D], "keep" [C, k]} (absent: 0)."""
  centres = np.zeros((len(class_names), k, dim), np.float32)
  keep = np.zeros((len(class_names), k), np.float32)
  for i, name in enumerate(class_names):
    if name not in model.centres:
      continue
    c = np.asarray(model.centres[name], np.float32)
    if c.shape[0] > k or c.shape[1] != dim:
      raise ValueError(f"component centres of class {name!r} have shape "
                       f"{c.shape}; the model holds at most [{k}, {dim}]")
    centres[i, :c.shape[0]] = c
    keep[i, [j for j in model.keep[name] if j < c.shape[0]]] = 1.0
  return {"centres": centres, "keep": keep}
