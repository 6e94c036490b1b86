"""AnomalyMoE experts: patch (linear-attention decoder), global (AE +
student CNN), component (MLP AE), and the gate.

Each expert group is one module vmapped over a leading `exp` axis
(`stacked(...)`), so its parameters carry the `exp` logical name and shard
across an expert-parallel mesh axis. Parameter names follow the official
`nn.Sequential` indices (`ae_8`, `student_12`, `enc_0`, `dec_7`, ...), which
keeps the official-checkpoint mapping a plain table.

Initialisation follows `train.py`: Linear weights truncated normal
(std 0.01, +-3 std) with zero bias, LayerNorm 1 / 0, convs PyTorch's default
U(+-1/sqrt(fan_in)) for weight and bias.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from moeclip_jax.methods.anomalymoe import ops


def trunc_normal_init(stddev: float = 0.01):
  def init(key, shape, dtype=jnp.float32):
    return stddev * jax.random.truncated_normal(key, -3.0, 3.0, shape, dtype)
  return init


def torch_conv_init(fan_in: int):
  bound = 1.0 / math.sqrt(fan_in)
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def _part(init, names):
  return nn.with_logical_partitioning(init, names)


def dense(features: int, name: str, axes=("embed", "mlp")) -> nn.Dense:
  return nn.Dense(
      features, name=name,
      kernel_init=_part(trunc_normal_init(), axes),
      bias_init=_part(nn.initializers.zeros, axes[1:]))


def layer_norm(name: str, eps: float) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=eps, name=name,
      scale_init=_part(nn.initializers.ones, ("norm",)),
      bias_init=_part(nn.initializers.zeros, ("norm",)))


class Conv1x1(nn.Module):
  """1x1 convolution as a channel einsum (same params as `nn.Conv`).

  XLA's CPU SPMD partitioner returned wrong values for the vmapped
  (grouped) 1x1 convolution when the expert axis was sharded (checked with
  jax 0.10.2 on fake CPU devices); the einsum form is exact.
  """

  features: int
  in_features: int

  @nn.compact
  def __call__(self, x):
    init = torch_conv_init(self.in_features)
    kernel = self.param(
        "kernel", _part(init, ("conv_k", None, None, None)),
        (1, 1, self.in_features, self.features))
    bias = self.param("bias", _part(init, (None,)), (self.features,))
    return jnp.einsum("bhwi,io->bhwo", x, kernel[0, 0]) + bias


def conv(features: int, in_features: int, kernel: int, name: str,
         stride: int = 1, padding: int = 0):
  if kernel == 1 and stride == 1 and padding == 0:
    return Conv1x1(features, in_features, name=name)
  fan_in = in_features * kernel * kernel
  return nn.Conv(
      features, (kernel, kernel), strides=(stride, stride),
      padding=((padding, padding), (padding, padding)), name=name,
      kernel_init=_part(torch_conv_init(fan_in),
                        ("conv_k", None, None, None)),
      bias_init=_part(torch_conv_init(fan_in), (None,)))


@dataclasses.dataclass(frozen=True)
class ExpertDims:
  """Widths of the experts (official values by default)."""

  width: int = 768
  decoder_depth: int = 8
  decoder_heads: int = 12
  decoder_mlp_ratio: float = 4.0
  bottleneck_ratio: float = 4.0
  ae_channels: tuple[int, int, int] = (32, 64, 128)
  ae_up_sizes: tuple[int, ...] = (3, 7, 15, 31, 63, 31)
  student_channels: tuple[int, int] = (256, 512)
  component_dims: tuple[int, int, int] = (256, 64, 64)
  gate_hidden: int = 256
  dropout_bottleneck: float = 0.2
  dropout_ae: float = 0.2
  dropout_component: float = 0.1


# ----------------------------------------------------------------------------
# Patch expert: bMlp bottleneck + linear-attention decoder.
# ----------------------------------------------------------------------------


def linear_attention(q, k, v):
  """ELU+1 kernel attention over all tokens, no scale, no eps.

  Args:
    q, k, v: float[B, N, H, Dh].

  Returns:
    float[B, N, H, Dh]: phi(q)(phi(k)^T v) / (phi(q) . sum_t phi(k)_t).
  """
  q = jax.nn.elu(q) + 1.0
  k = jax.nn.elu(k) + 1.0
  kv = jnp.einsum("bshd,bshe->bhde", k, v)  # [B, H, Dh, Dh]
  k_sum = jnp.sum(k, axis=1)  # [B, H, Dh]
  z = 1.0 / jnp.einsum("bshd,bhd->bsh", q, k_sum)  # [B, N, H]
  return jnp.einsum("bshd,bhde->bshe", q, kv) * z[..., None]


class LinearAttentionBlock(nn.Module):
  """Pre-norm decoder block: x + attn(norm1 x); x + mlp(norm2 x); eps 1e-8."""

  dims: ExpertDims

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = self.dims
    heads = d.decoder_heads
    head_dim = d.width // heads
    h = layer_norm("norm1", 1e-8)(x)
    qkv = nn.DenseGeneral(
        (3, heads, head_dim), name="qkv",
        kernel_init=_part(trunc_normal_init(),
                          ("embed", None, "heads", "head_dim")),
        bias_init=_part(nn.initializers.zeros, (None, "heads", "head_dim")),
    )(h)  # [B, N, 3, H, Dh]
    out = linear_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
    out = nn.DenseGeneral(
        d.width, axis=(-2, -1), name="proj",
        kernel_init=_part(trunc_normal_init(), ("heads", "head_dim", "embed")),
        bias_init=_part(nn.initializers.zeros, ("embed",)),
    )(out)  # [B, N, D]
    x = x + out
    h = layer_norm("norm2", 1e-8)(x)
    mlp_dim = int(d.width * d.decoder_mlp_ratio)
    h = dense(mlp_dim, "fc1")(h)
    h = dense(d.width, "fc2", ("mlp", "embed"))(nn.gelu(h, approximate=False))
    return x + h  # [B, N, D]


class PatchExpert(nn.Module):
  """bMlp bottleneck then `decoder_depth` linear-attention blocks.

  Returns the decoder block outputs in execution order, float[nb, B, N, D].
  """

  dims: ExpertDims

  @nn.compact
  def __call__(self, tokens: jax.Array, deterministic: bool = True):
    d = self.dims
    drop = nn.Dropout(d.dropout_bottleneck)
    x = drop(tokens, deterministic=deterministic)
    x = dense(int(d.width * d.bottleneck_ratio), "bottleneck_fc1")(x)
    x = drop(nn.gelu(x, approximate=False), deterministic=deterministic)
    x = dense(d.width, "bottleneck_fc2", ("mlp", "embed"))(x)
    x = drop(x, deterministic=deterministic)  # [B, N, D]
    self.sow("intermediates", "bottleneck_out", x)
    outs = []
    for i in range(d.decoder_depth):
      x = LinearAttentionBlock(d, name=f"decoder_{i}")(x)
      outs.append(x)
    return jnp.stack(outs)  # [nb, B, N, D]


# ----------------------------------------------------------------------------
# Global expert: EfficientAD-style autoencoder + student CNN on image_ae.
# ----------------------------------------------------------------------------


class GlobalExpert(nn.Module):
  """Returns (ae_out, student_out), float[B, g, g, D] each (NHWC)."""

  dims: ExpertDims
  grid: int = 28

  def autoencoder(self, x, deterministic):
    d = self.dims
    c1, c2, c3 = d.ae_channels
    relu = nn.relu
    x = relu(conv(c1, 3, 4, "ae_0", 2, 1)(x))
    x = relu(conv(c2, c1, 4, "ae_2", 2, 1)(x))
    x = relu(conv(c3, c2, 4, "ae_4", 2, 1)(x))
    x = relu(conv(c3, c3, 3, "ae_6", 1, 1)(x))
    x = relu(conv(c3, c3, 9, "ae_8", 7, 1)(x))
    code = conv(c3, c3, 9, "ae_10", 7, 1)(x)  # [B, 1, 1, c3] at 392 px
    self.sow("intermediates", "ae_code", code)
    x = code
    index = 12
    for size in d.ae_up_sizes:
      x = ops.resize_bilinear_nhwc(x, (size, size))
      x = relu(conv(c3, c3, 4, f"ae_{index}", 1, 2)(x))
      x = nn.Dropout(d.dropout_ae)(x, deterministic=deterministic)
      index += 4
    x = ops.resize_bilinear_nhwc(x, (self.grid, self.grid))
    x = relu(conv(c3, c3, 3, f"ae_{index}", 1, 1)(x))
    return conv(d.width, c3, 3, f"ae_{index + 2}", 1, 1)(x)

  def student(self, x):
    d = self.dims
    s1, s2 = d.student_channels
    relu = nn.relu
    x = relu(conv(s1, 3, 3, "student_0", 1, 1)(x))
    x = nn.avg_pool(x, (2, 2), (2, 2))
    x = relu(conv(s2, s1, 3, "student_3", 1, 1)(x))
    x = nn.avg_pool(x, (7, 7), (7, 7))
    x = relu(conv(s2, s2, 1, "student_6")(x))
    x = relu(conv(s2, s2, 3, "student_8", 1, 1)(x))
    x = relu(conv(d.width, s2, 3, "student_10", 1, 1)(x))
    return conv(d.width, d.width, 1, "student_12")(x)

  @nn.compact
  def __call__(self, images_ae: jax.Array, deterministic: bool = True):
    return self.autoencoder(images_ae, deterministic), self.student(images_ae)


# ----------------------------------------------------------------------------
# Component expert and gate.
# ----------------------------------------------------------------------------


class ComponentExpert(nn.Module):
  """MLP autoencoder on component feature vectors, float[..., D]."""

  dims: ExpertDims

  @nn.compact
  def __call__(self, feats: jax.Array, deterministic: bool = True):
    d = self.dims
    h1, h2, code = d.component_dims
    drop = nn.Dropout(d.dropout_component)
    x = nn.relu(dense(h1, "enc_0")(feats))
    x = nn.relu(dense(h2, "enc_2", ("mlp", None))(x))
    x = dense(code, "enc_4", (None, None))(x)
    x = drop(x, deterministic=deterministic)
    x = nn.relu(dense(h2, "dec_1", (None, None))(x))
    x = drop(x, deterministic=deterministic)
    x = nn.relu(dense(h1, "dec_4", (None, "mlp"))(x))
    x = drop(x, deterministic=deterministic)
    return dense(d.width, "dec_7", ("mlp", "embed"))(x)


class Gate(nn.Module):
  """Linear(D, 256) -> ReLU -> Linear(256, E_total) on the CLS token."""

  num_experts: int
  hidden: int = 256

  @nn.compact
  def __call__(self, cls_token: jax.Array) -> jax.Array:
    h = nn.relu(dense(self.hidden, "gate_0")(cls_token))
    return dense(self.num_experts, "gate_2", ("mlp", None))(h)  # [B, E]


def stacked(module_cls, num_experts: int, num_args: int, loop: str = "vmap"):
  """`module_cls` over a leading `exp` axis of its parameters.

  Inputs are shared; outputs gain a leading [E] axis. `loop="vmap"` runs
  the experts as one batched computation (shards over an `expert` mesh
  axis); `loop="scan"` runs them one after the other with the same
  parameter layout (lower peak memory, e.g. on CPU). Call the result with
  `run_stacked`.
  """
  common = dict(
      variable_axes={"params": 0, "intermediates": 0},
      split_rngs={"params": True, "dropout": True},
      metadata_params={nn.PARTITION_NAME: "exp"},
  )
  if loop == "vmap":
    return nn.vmap(module_cls, in_axes=(None,) * num_args, out_axes=0,
                   axis_size=num_experts, **common)
  if loop != "scan":
    raise ValueError(f"expert loop {loop!r}: expected 'vmap' or 'scan'")

  class Carried(module_cls):
    """(carry, *args) -> (carry, out), the signature nn.scan expects."""

    def __call__(self, carry, *args):
      return carry, super().__call__(*args)

  Carried.__name__ = module_cls.__name__
  return nn.scan(Carried, in_axes=(nn.broadcast,) * num_args,
                 length=num_experts, **common)


def run_stacked(module, loop: str, *args):
  """Calls a `stacked(..., loop)` module; returns the [E, ...] outputs."""
  if loop == "scan":
    return module(None, *args)[1]
  return module(*args)


def group_mean(stack: jax.Array, groups: Sequence[Sequence[int]]):
  """stack: [n, ...] -> [len(groups), ...], the mean of each index group."""
  return jnp.stack([jnp.mean(stack[jnp.asarray(g)], axis=0) for g in groups])
