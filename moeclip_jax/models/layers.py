"""Transformer building blocks shared by the CLIP towers.

Every parameter carries logical axis names (moeclip_jax/sharding/rules.py).
Attention keeps q/k/v as separate `[embed, heads, head_dim]` kernels and the
output as `[heads, head_dim, embed]`, so tensor parallelism over heads is one
rule (`heads -> tensor`).
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from moeclip_jax.models import attention, clip_config
from moeclip_jax.models import precision as precision_lib


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
  """GELU flavours by name ("gelu" is the exact erf form)."""
  if name == "gelu":
    return lambda x: nn.gelu(x, approximate=False)
  if name == "gelu_tanh":
    return lambda x: nn.gelu(x, approximate=True)
  if name == "quick_gelu":
    return lambda x: x * jax.nn.sigmoid(1.702 * x)
  raise ValueError(f"unknown activation {name!r}")


def precision(config: clip_config.CLIPConfig) -> jax.lax.Precision | None:
  if config.matmul_precision == "default":
    return None
  return jax.lax.Precision[config.matmul_precision.upper()]


def dtypes(config: clip_config.CLIPConfig) -> tuple[jnp.dtype, jnp.dtype]:
  return (precision_lib.compute_dtype(config.dtype),
          jnp.dtype(config.param_dtype))


def layer_norm(config, name: str | None = None) -> nn.LayerNorm:
  """LayerNorm computed in float32, with the config's epsilon."""
  _, param_dtype = dtypes(config)
  return nn.LayerNorm(
      epsilon=config.ln_eps,
      dtype=jnp.float32,
      param_dtype=param_dtype,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
      name=name,
  )


def dense(config, features, names, use_bias=True, name=None) -> nn.Dense:
  dtype, param_dtype = dtypes(config)
  return nn.Dense(
      features,
      use_bias=use_bias,
      dtype=dtype,
      param_dtype=param_dtype,
      precision=precision(config),
      kernel_init=nn.with_logical_partitioning(
          nn.initializers.normal(0.02), names
      ),
      bias_init=nn.with_logical_partitioning(
          nn.initializers.zeros, names[-1:]
      ),
      name=name,
  )


class Attention(nn.Module):
  """Multi-head self-attention with torch `nn.MultiheadAttention` numerics."""

  config: clip_config.CLIPConfig
  width: int
  heads: int

  def setup(self):
    dtype, param_dtype = dtypes(self.config)
    head_dim = self.width // self.heads

    def proj(name):
      return nn.DenseGeneral(
          (self.heads, head_dim),
          dtype=dtype,
          param_dtype=param_dtype,
          precision=precision(self.config),
          kernel_init=nn.with_logical_partitioning(
              nn.initializers.normal(0.02), ("embed", "heads", "head_dim")
          ),
          bias_init=nn.with_logical_partitioning(
              nn.initializers.zeros, ("heads", "head_dim")
          ),
          name=name,
      )

    self.query, self.key, self.value = proj("query"), proj("key"), proj("value")
    self.out = nn.DenseGeneral(
        self.width,
        axis=(-2, -1),
        dtype=dtype,
        param_dtype=param_dtype,
        precision=precision(self.config),
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.normal(0.02), ("heads", "head_dim", "embed")
        ),
        bias_init=nn.with_logical_partitioning(
            nn.initializers.zeros, ("embed",)
        ),
        name="out",
    )

  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """x: [B, T, W]; mask: bool[T, T] (True = attend) or None."""
    head_dim = self.width // self.heads
    q = self.query(x) * (head_dim**-0.5)  # [B, T, H, Dh]
    k = self.key(x)  # [B, T, H, Dh]
    v = self.value(x)  # [B, T, H, Dh]
    ctx = attention.softmax_attention(
        q, k, v, mask, precision=precision(self.config))  # [B, T, H, Dh]
    return self.out(ctx)  # [B, T, W]


class MLP(nn.Module):
  config: clip_config.CLIPConfig
  width: int
  mlp_dim: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = dense(self.config, self.mlp_dim, ("embed", "mlp"), name="c_fc")(x)
    x = activation_fn(self.config.activation)(x)  # [B, T, M]
    return dense(self.config, self.width, ("mlp", "embed"), name="c_proj")(x)


class ResidualBlock(nn.Module):
  """Pre-LN block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

  config: clip_config.CLIPConfig
  width: int
  heads: int
  mlp_dim: int

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    dtype, _ = dtypes(self.config)
    h = layer_norm(self.config, "ln_1")(x).astype(dtype)
    x = x + Attention(self.config, self.width, self.heads, name="attn")(h, mask)
    h = layer_norm(self.config, "ln_2")(x).astype(dtype)
    x = x + MLP(self.config, self.width, self.mlp_dim, name="mlp")(h)
    return nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))
