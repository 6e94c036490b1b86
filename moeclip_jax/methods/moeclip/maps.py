"""MoECLIP anomaly maps, image scores and the per-class post-processing.

Test-time recipe of the official `test.py` / `calculate_similarity_map`
(spec/moeclip.md §7), for each of the 12 seg maps f [B, L, D]:
  S = 100 * f T                      [B, 2, G, G]   (T [D, 2]: normal, abnormal)
  a = (S_abn + 1 - S_norm) / 2       [B, G, G]
  kornia Gaussian blur, reflect border: industrial k7 s1, medical k9 s1.5
  bilinear upsampling, align_corners=True, to the image size
and the 12 maps are summed. Blur and upsampling are linear, so
`anomaly_map` sums at grid resolution first (same result up to rounding).

Image score before fusion: (det_feature . t_abn + 1) / 2.
Per class: joint min-max of all maps of the class (only if they leave [0, 1]),
same for the image scores, then industrial 0.5 * max(map) + 0.5 * score,
medical max(map).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

HIGHEST = jax.lax.Precision.HIGHEST

# domain -> (kernel size, sigma) of the blur at grid resolution.
BLUR = {"industrial": (7, 1.0), "medical": (9, 1.5)}


def canonical_domain(domain: str) -> str:
  """'Industrial' / 'industrial' -> 'industrial'; errors on anything else."""
  key = str(domain).lower()
  if key not in BLUR:
    raise ValueError(
        f"unknown domain {domain!r}; expected one of {sorted(BLUR)}"
    )
  return key


def similarity_maps(
    seg_tokens: jax.Array, text_features: jax.Array
) -> jax.Array:
  """S = 100 f T, reshaped onto the patch grid.

  Args:
    seg_tokens: float[..., B, L, D] unit-norm patch tokens, L = G*G.
    text_features: float[D, 2] (one class) or [B, D, 2] (one per image).

  Returns:
    float[..., B, 2, G, G], channels [normal, abnormal].
  """
  grid = int(round(seg_tokens.shape[-2] ** 0.5))
  if text_features.ndim == 2:
    sim = jnp.einsum("...LD,DC->...CL", seg_tokens, text_features,
                     precision=HIGHEST)
  else:
    sim = jnp.einsum("...BLD,BDC->...BCL", seg_tokens, text_features,
                     precision=HIGHEST)
  return (100.0 * sim).reshape(sim.shape[:-1] + (grid, grid))


def anomaly_patch_maps(sim: jax.Array) -> jax.Array:
  """(S_abn + 1 - S_norm) / 2: [..., 2, G, G] -> [..., G, G]."""
  return (sim[..., 1, :, :] + 1.0 - sim[..., 0, :, :]) / 2.0


def gaussian_kernel1d(size: int, sigma: float) -> np.ndarray:
  """kornia's normalised 1-D Gaussian (centre size // 2; +0.5 if even)."""
  x = np.arange(size, dtype=np.float32) - size // 2
  if size % 2 == 0:
    x = x + 0.5
  g = np.exp(-(x**2) / np.float32(2.0 * sigma**2)).astype(np.float32)
  return g / g.sum()


def gaussian_blur(maps: jax.Array, size: int, sigma: float) -> jax.Array:
  """Separable Gaussian blur with reflect padding (no edge repeat).

  Args:
    maps: float[..., H, W].
    size: odd kernel size.
    sigma: standard deviation in pixels.

  Returns:
    float[..., H, W].
  """
  kernel = gaussian_kernel1d(size, sigma)
  pad = size // 2
  h, w = maps.shape[-2:]
  lead = [(0, 0)] * (maps.ndim - 2)
  x = jnp.pad(maps, lead + [(0, 0), (pad, pad)], mode="reflect")
  x = sum(float(kernel[j]) * x[..., :, j:j + w] for j in range(size))
  x = jnp.pad(x, lead + [(pad, pad), (0, 0)], mode="reflect")
  return sum(float(kernel[j]) * x[..., j:j + h, :] for j in range(size))


def blur_for_domain(maps: jax.Array, domain: str) -> jax.Array:
  size, sigma = BLUR[canonical_domain(domain)]
  return gaussian_blur(maps, size, sigma)


def _align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
  """Row i holds the bilinear weights of output i (align_corners=True)."""
  mat = np.zeros((n_out, n_in), np.float32)
  scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
  for i in range(n_out):
    src = np.float32(scale) * np.float32(i)
    i0 = min(int(np.floor(src)), n_in - 1)
    i1 = min(i0 + 1, n_in - 1)
    frac = float(src) - i0
    mat[i, i0] += 1.0 - frac
    mat[i, i1] += frac
  return mat


def resize_bilinear_align_corners(
    x: jax.Array, size: tuple[int, int]
) -> jax.Array:
  """torch `F.interpolate(mode="bilinear", align_corners=True)`.

  Args:
    x: float[..., h, w].
    size: (H, W).

  Returns:
    float[..., H, W].
  """
  rows = jnp.asarray(_align_corners_matrix(x.shape[-2], size[0]))  # [H, h]
  cols = jnp.asarray(_align_corners_matrix(x.shape[-1], size[1]))  # [W, w]
  return jnp.einsum("...hw,Hh,Ww->...HW", x, rows, cols, precision=HIGHEST)


def anomaly_map(
    seg_tokens: jax.Array,
    text_features: jax.Array,
    size: tuple[int, int],
    domain: str,
) -> jax.Array:
  """Summed test-time map of all seg maps.

  Args:
    seg_tokens: float[n_maps, B, L, D].
    text_features: float[D, 2] or [B, D, 2].
    size: output (H, W), the image size.
    domain: "industrial" or "medical" (selects the blur).

  Returns:
    float[B, H, W] (before any min-max).
  """
  patch = anomaly_patch_maps(similarity_maps(seg_tokens, text_features))
  summed = jnp.sum(patch, axis=0)  # [B, G, G]
  return resize_bilinear_align_corners(blur_for_domain(summed, domain), size)


def det_logits(det_feature: jax.Array, text_features: jax.Array) -> jax.Array:
  """det_feature . T: [B, D] x ([D, 2] | [B, D, 2]) -> [B, 2]."""
  if text_features.ndim == 2:
    return jnp.dot(det_feature, text_features, precision=HIGHEST)
  return jnp.einsum("BD,BDC->BC", det_feature, text_features,
                    precision=HIGHEST)


def image_score(det_feature: jax.Array, text_features: jax.Array) -> jax.Array:
  """(det_feature . t_abn + 1) / 2: [B]."""
  return (det_logits(det_feature, text_features)[:, 1] + 1.0) / 2.0


def minmax_if_outside(values: np.ndarray) -> np.ndarray:
  """Joint min-max over the whole array, only if it leaves [0, 1]."""
  values = np.asarray(values)
  lo, hi = values.min(), values.max()
  if hi > 1 or lo < 0:
    return (values - lo) / (hi - lo)
  return values


def fuse_image_scores(
    maps: np.ndarray, scores: np.ndarray, domain: str
) -> np.ndarray:
  """Final image score from normalised maps [N, H, W] and scores [N]."""
  peak = np.asarray(maps).max(axis=(-2, -1))  # [N]
  if canonical_domain(domain) == "medical":
    return peak
  return 0.5 * peak + 0.5 * np.asarray(scores)


def postprocess_class(
    maps: np.ndarray, scores: np.ndarray, domain: str
) -> tuple[np.ndarray, np.ndarray]:
  """Official per-class protocol (`metrics_eval`).

  Args:
    maps: float[N, H, W], every image of one class (or DTD variant).
    scores: float[N] raw image scores.
    domain: "industrial" or "medical".

  Returns:
    (maps min-maxed jointly [N, H, W], final image scores [N]).
  """
  maps_n = minmax_if_outside(maps)
  scores_n = minmax_if_outside(scores)
  return maps_n, fuse_image_scores(maps_n, scores_n, domain)
