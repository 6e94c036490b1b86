"""The one softmax-attention path of the CLIP towers and DINOv2.

Built on `jax.nn.dot_product_attention`: cuDNN flash attention on GPU where
the inputs allow it, XLA's reference lowering elsewhere (CPU, TPU). Logits
and the softmax are float32 for every input dtype.

Callers scale q themselves (torch's `nn.MultiheadAttention` and DINOv2 both
multiply q by head_dim ** -0.5 before q k^T), so `scale` stays 1.0 and the
numerics match the official code bit for bit in float32.

Dimension legend: B batch, T query tokens, S key tokens, H heads, Dh head
width.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp


def softmax_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                      mask: jax.Array | None = None, *,
                      precision: jax.lax.Precision | None = None,
                      implementation: str | None = None) -> jax.Array:
  """softmax(q k^T + mask) v per head, q already scaled.

  Args:
    q: [B, T, H, Dh] (scaled); k, v: [B, S, H, Dh].
    mask: bool, True = attend: [T, S] or broadcastable to [B, H, T, S].
    precision: matmul precision of the two einsums (None = the default).
    implementation: None (automatic), "xla" or "cudnn"
      (`jax.nn.dot_product_attention`).

  Returns:
    [B, T, H, Dh] in v's dtype.
  """
  if mask is not None and mask.ndim == 2:
    mask = mask[None, None]  # [1, 1, T, S]
  ctx = (jax.default_matmul_precision(str(precision.name).lower())
         if precision is not None else contextlib.nullcontext())
  with ctx:
    out = jax.nn.dot_product_attention(
        q, k.astype(q.dtype), v.astype(q.dtype), mask=mask, scale=1.0,
        implementation=implementation)
  return out.astype(v.dtype)


def reference_attention(q, k, v, mask=None):
  """Plain einsum/softmax attention (float32 softmax): the test reference."""
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
  if mask is not None:
    mask = mask[None, None] if mask.ndim == 2 else mask
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, v)
