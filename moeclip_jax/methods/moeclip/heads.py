"""MoECLIP heads: patch-average aggregation, seg/det projections, text adapter.

Shapes: B images, T = 1 + G*G tokens (CLS first, patches in raster order),
W vision width, D joint width (768), Wt text width.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def safe_norm(x: jax.Array) -> jax.Array:
  """|x| over the last axis (keepdims) with torch's zero subgradient at 0.

  `jnp.linalg.norm` has a NaN gradient at x = 0, which is exactly where
  training starts (B = 0 makes every MoE output 0).
  """
  sq = jnp.sum(x * x, axis=-1, keepdims=True)
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """torch `F.normalize`: x / max(|x|, eps) over the last axis."""
  norm = safe_norm(x)
  return x / jnp.maximum(norm, eps)


def patch_average(tokens: jax.Array, radius: int) -> jax.Array:
  """PAA: r x r neighbourhood mean of the patch tokens; CLS untouched.

  Zero padding of r // 2 on each side, always divided by r^2 (the official
  `F.unfold` + mean, i.e. avg_pool with count_include_pad=True), so border
  tokens are attenuated.

  Args:
    tokens: float[B, 1 + G*G, W].
    radius: r (odd window size; 1 returns the input).

  Returns:
    float[B, 1 + G*G, W].
  """
  if radius == 1:
    return tokens
  b, t, w = tokens.shape
  grid = math.isqrt(t - 1)
  if grid * grid != t - 1:
    raise ValueError(f"PAA needs 1 + G*G tokens, got {t}")
  patches = tokens[:, 1:].reshape(b, grid, grid, w)  # [B, G, G, W]
  pad = radius // 2
  summed = jax.lax.reduce_window(
      patches,
      0.0,  # a Python literal: a traced init value breaks autodiff
      jax.lax.add,
      window_dimensions=(1, radius, radius, 1),
      window_strides=(1, 1, 1, 1),
      padding=((0, 0), (pad, pad), (pad, pad), (0, 0)),
  )  # [B, G, G, W]
  mean = (summed / (radius * radius)).reshape(b, grid * grid, w)
  return jnp.concatenate([tokens[:, :1], mean], axis=1)  # [B, T, W]


def _xavier_depthwise(key, shape, dtype=jnp.float32):
  """torch xavier_uniform on a depthwise Conv1d weight [W, 1, k].

  torch's fans are fan_in = k and fan_out = W * k; stored here as [k, W].
  """
  taps, width = shape
  bound = math.sqrt(6.0 / (taps + width * taps))
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def xavier_dense(names: tuple[str, str]):
  return nn.with_logical_partitioning(
      nn.initializers.xavier_uniform(), names
  )


class DetHead(nn.Module):
  """`ConvAdapterProj`: LN -> depthwise 1-D conv -> exact GELU -> 1x1 conv.

  The depthwise conv runs over the flattened raster sequence (so it wraps
  across row ends), zero 'same' padding at the sequence ends, no bias.

  Params: ln/{scale, bias} [W]; depthwise [k, W]; pointwise [W, D].
  """

  proj_dim: int = 768
  kernel_size: int = 3
  ln_eps: float = 1e-5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: float[B, L, W] (post ln_post, no CLS) -> float[B, L, D]."""
    width, k = x.shape[-1], self.kernel_size
    x = nn.LayerNorm(
        epsilon=self.ln_eps, dtype=jnp.float32, param_dtype=self.param_dtype,
        scale_init=nn.with_logical_partitioning(
            nn.initializers.ones, ("norm",)),
        bias_init=nn.with_logical_partitioning(
            nn.initializers.zeros, ("norm",)),
        name="ln",
    )(x).astype(self.dtype)  # [B, L, W]
    depthwise = self.param(
        "depthwise",
        nn.with_logical_partitioning(_xavier_depthwise, ("conv_k", "embed")),
        (k, width), self.param_dtype,
    ).astype(self.dtype)
    pointwise = self.param(
        "pointwise", xavier_dense(("embed", "proj")),
        (width, self.proj_dim), self.param_dtype,
    ).astype(self.dtype)
    left = (k - 1) // 2  # torch padding='same'
    length = x.shape[1]
    xp = jnp.pad(x, ((0, 0), (left, k - 1 - left), (0, 0)))  # [B, L+k-1, W]
    y = sum(xp[:, j:j + length] * depthwise[j] for j in range(k))  # [B, L, W]
    y = nn.gelu(y, approximate=False)
    return jnp.einsum(
        "BLW,WD->BLD", y, pointwise, precision=self.precision
    )  # [B, L, D]


class TextAdapter(nn.Module):
  """Linear(Wt -> D, no bias) + LeakyReLU(0.01) on EOT features."""

  proj_dim: int = 768
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, eot: jax.Array) -> jax.Array:
    """eot: float[N, Wt] -> float[N, D]."""
    y = nn.Dense(
        self.proj_dim, use_bias=False, dtype=self.dtype,
        param_dtype=self.param_dtype, precision=self.precision,
        kernel_init=xavier_dense(("embed", "proj")), name="fc",
    )(eot)
    return nn.leaky_relu(y, negative_slope=0.01)


def class_text_features(
    sentence_embeddings: jax.Array, is_abnormal: jax.Array
) -> jax.Array:
  """T [D, 2]: normalise each sentence, mean per state, renormalise.

  Args:
    sentence_embeddings: float[N, D] adapted text embeddings.
    is_abnormal: int/bool[N], 1 for abnormal-state sentences.

  Returns:
    float[D, 2], columns [normal, abnormal].
  """
  emb = sentence_embeddings / jnp.linalg.norm(
      sentence_embeddings, axis=-1, keepdims=True
  )  # [N, D]
  abn = jnp.asarray(is_abnormal).astype(emb.dtype)  # [N]
  masks = jnp.stack([1.0 - abn, abn], axis=1)  # [N, 2]
  means = jnp.einsum("ND,NC->DC", emb, masks,
                     precision=jax.lax.Precision.HIGHEST) / jnp.sum(masks, 0)
  return means / jnp.linalg.norm(means, axis=0, keepdims=True)  # [D, 2]
