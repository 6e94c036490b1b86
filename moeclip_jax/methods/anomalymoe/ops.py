"""Small torch-exact array ops used by AnomalyMoE (resizes, cosine, blur).

All resizes are written as explicit 1-D weight matrices built in numpy at
trace time (static shapes), so they match `torch.nn.functional.interpolate`
exactly rather than `jax.image.resize`'s conventions:
  * bilinear, align_corners=False, no antialias (also when downsampling):
    source coordinate max((i + 0.5) * in / out - 0.5, 0), taps clamped;
  * nearest: index floor(i * in / out).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=64)
def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """float32[out, in] weights of torch bilinear (align_corners=False)."""
  mat = np.zeros((out_size, in_size), np.float64)
  scale = in_size / out_size
  for i in range(out_size):
    src = max((i + 0.5) * scale - 0.5, 0.0)
    i0 = min(int(math.floor(src)), in_size - 1)
    i1 = min(i0 + 1, in_size - 1)
    frac = src - i0
    mat[i, i0] += 1.0 - frac
    mat[i, i1] += frac
  return mat.astype(np.float32)


def resize_bilinear_nhwc(x: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
  """x: float[B, H, W, C] -> float[B, oh, ow, C] (torch bilinear)."""
  rows = jnp.asarray(bilinear_matrix(x.shape[1], out_hw[0]), x.dtype)
  cols = jnp.asarray(bilinear_matrix(x.shape[2], out_hw[1]), x.dtype)
  x = jnp.einsum("ih,bhwc->biwc", rows, x)  # [B, oh, W, C]
  return jnp.einsum("jw,biwc->bijc", cols, x)  # [B, oh, ow, C]


def resize_bilinear_maps(x: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
  """x: float[..., H, W] -> float[..., oh, ow] (torch bilinear)."""
  rows = jnp.asarray(bilinear_matrix(x.shape[-2], out_hw[0]), x.dtype)
  cols = jnp.asarray(bilinear_matrix(x.shape[-1], out_hw[1]), x.dtype)
  x = jnp.einsum("ih,...hw->...iw", rows, x)
  return jnp.einsum("jw,...iw->...ij", cols, x)


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """torch `mode='nearest'` source indices floor(i * in / out)."""
  return np.floor(np.arange(out_size) * (in_size / out_size)).astype(np.int32)


def resize_nearest_maps(x: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
  """x: [..., H, W] -> [..., oh, ow] (torch nearest)."""
  rows = nearest_indices(x.shape[-2], out_hw[0])
  cols = nearest_indices(x.shape[-1], out_hw[1])
  return x[..., rows, :][..., cols]


def cosine_similarity(a: jax.Array, b: jax.Array, axis: int = -1,
                      eps: float = 1e-8) -> jax.Array:
  """torch 2.x `F.cosine_similarity`: each norm clamped at eps separately.

  The clamp is taken on the squared norm, sqrt(max(|x|^2, eps^2)): the same
  value as max(|x|, eps), but a zero vector (e.g. a padded component slot
  reconstructed by a zero-bias MLP) gets a zero gradient instead of NaN.
  """
  na = jnp.sqrt(jnp.maximum(jnp.sum(a * a, axis=axis, keepdims=True),
                            eps * eps))
  nb = jnp.sqrt(jnp.maximum(jnp.sum(b * b, axis=axis, keepdims=True),
                            eps * eps))
  return jnp.sum((a / na) * (b / nb), axis=axis)


def max_pool_same(x: jax.Array, size: int) -> jax.Array:
  """x: [..., H, W]; max-pool stride 1, padding size//2 (implicit -inf)."""
  pad = (size - 1) // 2
  nd = x.ndim
  window = (1,) * (nd - 2) + (size, size)
  padding = ((0, 0),) * (nd - 2) + ((pad, pad), (pad, pad))
  return jax.lax.reduce_window(
      x, -jnp.inf, jax.lax.max, window, (1,) * nd, padding)


def gaussian_kernel(size: int = 5, sigma: float = 4.0) -> np.ndarray:
  """`utils.get_gaussian_kernel`: 2-D Gaussian, normalised to sum 1."""
  coords = np.arange(size, dtype=np.float32)
  mean = (size - 1) / 2.0
  sq = (coords[None, :] - mean) ** 2 + (coords[:, None] - mean) ** 2
  kernel = np.exp(-sq / (2.0 * sigma**2)).astype(np.float32)
  return kernel / kernel.sum()


def blur_zero_pad(maps: jax.Array, size: int = 5,
                  sigma: float = 4.0) -> jax.Array:
  """maps: float[B, H, W] -> blurred float[B, H, W], zero padding size//2."""
  kernel = jnp.asarray(gaussian_kernel(size, sigma))[:, :, None, None]
  pad = size // 2
  out = jax.lax.conv_general_dilated(
      maps[..., None], kernel, (1, 1), ((pad, pad), (pad, pad)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return out[..., 0]


IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def color_jitter(images, rng, strength: float = 0.2):
  """One random ColorJitter (brightness, contrast or saturation) per image.

  Args:
    images: float[B, H, W, 3], ImageNet-normalised.
    rng: PRNG key.
    strength: factors are drawn from U[1 - strength, 1 + strength].

  Returns:
    float[B, H, W, 3], jittered and re-normalised.
  """
  b = images.shape[0]
  k1, k2 = jax.random.split(rng)
  kind = jax.random.randint(k1, (b,), 0, 3)
  factor = jax.random.uniform(k2, (b,), minval=1 - strength,
                              maxval=1 + strength)[:, None, None, None]
  x = images * IMAGENET_STD + IMAGENET_MEAN  # [B, H, W, 3] in [0, 1]
  grey = jnp.sum(x * jnp.array([0.299, 0.587, 0.114]), -1, keepdims=True)
  bright = x * factor
  contrast = factor * x + (1 - factor) * jnp.mean(grey, (1, 2, 3),
                                                  keepdims=True)
  sat = factor * x + (1 - factor) * grey
  out = jnp.select([kind[:, None, None, None] == i for i in range(3)],
                   [bright, contrast, sat])
  return (jnp.clip(out, 0.0, 1.0) - IMAGENET_MEAN) / IMAGENET_STD
