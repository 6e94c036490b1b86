"""ContrastHead: a learned per-pixel score on local colour contrast.

Dimension legend: B batch, S image side, C = 3 colour channels.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp


class ContrastHead(nn.Module):
  """x f32[B, S, S, C] (normalised) -> logits f32[B, S, S]: a linear
  score of the local contrast and the distance to the image median."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    local = nn.avg_pool(x, (5, 5), strides=(1, 1), padding="SAME")
    median = jnp.median(x, axis=(1, 2), keepdims=True)  # [B, 1, 1, C]
    contrast = jnp.concatenate(  # [B, S, S, 2C]
        [jnp.abs(x - local), jnp.abs(x - median)], axis=-1)
    dense = nn.Dense(1, kernel_init=nn.with_logical_partitioning(
        nn.initializers.ones, (None, None)), bias_init=nn.with_logical_partitioning(
            nn.initializers.zeros, (None,)), name="score")
    return dense(contrast)[..., 0]  # [B, S, S]
