"""DINOv2-with-registers vision transformer (frozen AnomalyMoE backbone).

Token layout, as both transformers' `Dinov2WithRegistersModel` and the
official DINOv2 code build it: the positional table is added to
[CLS, patches] first, then the register tokens are inserted right after CLS
**without** a positional embedding, giving [CLS, r_0 .. r_{R-1}, patches].
Patch p = row * grid_w + col (raster order).

Blocks are pre-norm with LayerScale on both residual branches:
  x = x + ls1 * attn(norm1(x));  x = x + ls2 * mlp(norm2(x))
with LayerNorm eps 1e-6, softmax attention (q scaled by head_dim ** -0.5)
and the exact (erf) GELU.

The positional table (CLS row + a G0 x G0 grid) is resampled to the input's
patch grid in one of two modes:
  * `hf`: transformers' scheme, `size=(gh, gw)`, bicubic with antialias=True,
    i.e. the PIL-style Keys a = -0.5 kernel = `jax.image.resize(cubic,
    antialias=True)`;
  * `official`: the DINOv2 code's scheme (used by AnomalyMoE),
    `scale_factor=(g + 0.1) / G0`, bicubic A = -0.75, no antialias, border
    taps clamped; the source coordinate is (i + 0.5) / scale - 0.5.
Both keep the CLS row and return the table unchanged at the native grid.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from moeclip_jax.models import attention
from moeclip_jax.models import precision as precision_lib

INTERPOLATION_MODES = ("hf", "official")


@dataclasses.dataclass(frozen=True)
class DinoV2Config:
  """Hyper-parameters of a DINOv2(-with-registers) ViT.

  Attributes:
    width: residual width D.
    depth: number of blocks.
    num_heads: attention heads (head_dim = width // num_heads).
    mlp_ratio: MLP hidden width = int(width * mlp_ratio).
    patch_size: square patch side in pixels.
    pos_grid: side G0 of the stored positional grid (37 for 518-px models).
    num_registers: register tokens inserted after CLS.
    layer_norm_eps: LayerNorm epsilon (1e-6 in DINOv2).
    interpolation: `hf` or `official` positional-table resampling.
    interpolate_offset: the official scheme's offset (0.1).
    dtype: compute dtype: "auto" (default; models/precision.py) or a
      concrete name.
  """

  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  patch_size: int = 14
  pos_grid: int = 37
  num_registers: int = 4
  layer_norm_eps: float = 1e-6
  interpolation: str = "hf"
  interpolate_offset: float = 0.1
  dtype: str = "auto"

  @property
  def compute_dtype(self):
    return precision_lib.compute_dtype(self.dtype)

  def __post_init__(self):
    if self.dtype not in precision_lib.CHOICES:
      raise ValueError(f"DinoV2Config.dtype={self.dtype!r}: expected one of "
                       f"{precision_lib.CHOICES}")
    if self.interpolation not in INTERPOLATION_MODES:
      raise ValueError(
          f"DinoV2Config.interpolation={self.interpolation!r}: expected one "
          f"of {INTERPOLATION_MODES}"
      )
    if self.width % self.num_heads:
      raise ValueError(
          f"DinoV2Config: width {self.width} is not divisible by "
          f"num_heads {self.num_heads}"
      )

  @property
  def mlp_dim(self) -> int:
    return int(self.width * self.mlp_ratio)

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


VARIANTS = {
    "dinov2reg_vit_small_14": dict(width=384, depth=12, num_heads=6),
    "dinov2reg_vit_base_14": dict(width=768, depth=12, num_heads=12),
    "dinov2reg_vit_large_14": dict(width=1024, depth=24, num_heads=16),
}


def get_config(variant: str = "dinov2reg_vit_base_14", **overrides):
  """Returns the `DinoV2Config` of a named variant, with overrides."""
  if variant not in VARIANTS:
    raise KeyError(
        f"unknown DINOv2 variant {variant!r}; known: {list(VARIANTS)}"
    )
  return DinoV2Config(**{**VARIANTS[variant], **overrides})


# ----------------------------------------------------------------------------
# Positional-table resampling.
# ----------------------------------------------------------------------------


def _cubic_a075(t: np.ndarray) -> np.ndarray:
  """torch's bicubic kernel (A = -0.75) at distances |t|."""
  a = -0.75
  t = np.abs(t)
  near = ((a + 2) * t - (a + 3)) * t * t + 1
  far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
  return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def official_resize_matrix(
    in_size: int, out_size: int, scale: float
) -> np.ndarray:
  """Row-resampling matrix of torch bicubic (A=-0.75, no antialias).

  Reproduces `F.interpolate(mode="bicubic", scale_factor=scale,
  align_corners=False, antialias=False)` along one axis: source coordinate
  (i + 0.5) / scale - 0.5 (negative values not clamped), four taps with
  indices clamped to the edge.

  Returns:
    float64[out_size, in_size] weights.
  """
  mat = np.zeros((out_size, in_size), np.float64)
  for i in range(out_size):
    src = (i + 0.5) / scale - 0.5
    base = math.floor(src)
    frac = src - base
    for tap in range(-1, 3):
      idx = min(max(base + tap, 0), in_size - 1)
      mat[i, idx] += _cubic_a075(np.asarray(tap - frac))
  return mat


def _resize_official(grid, out_hw, offset):
  """grid: float32[G0, G0, D] -> float32[gh, gw, D] (official scheme)."""
  g0 = grid.shape[0]
  mats = [
      official_resize_matrix(g0, g, (g + offset) / g0).astype(np.float32)
      for g in out_hw
  ]
  rows, cols = (jnp.asarray(m) for m in mats)
  out = jnp.einsum("ih,hwd->iwd", rows, grid)  # [gh, G0, D]
  return jnp.einsum("jw,iwd->ijd", cols, out)  # [gh, gw, D]


def interpolate_pos_embed(
    pos_embed: jax.Array,
    grid_hw: tuple[int, int],
    mode: str = "hf",
    offset: float = 0.1,
) -> jax.Array:
  """Resamples a [CLS + G0*G0] positional table to a new patch grid.

  Args:
    pos_embed: float[1, 1 + G0*G0, D] (the stored table).
    grid_hw: (gh, gw), the input's patch grid.
    mode: `hf` (transformers) or `official` (DINOv2 code, offset scale).
    offset: the official scheme's interpolate_offset.

  Returns:
    float[1, 1 + gh*gw, D]; computed in float32, cast back.
  """
  num_pos = pos_embed.shape[1] - 1
  g0 = int(round(math.sqrt(num_pos)))
  if g0 * g0 != num_pos:
    raise ValueError(
        f"positional table of {num_pos} rows is not a square grid"
    )
  gh, gw = grid_hw
  if (gh, gw) == (g0, g0):
    return pos_embed
  dtype = pos_embed.dtype
  cls_row = pos_embed[:, :1]  # [1, 1, D]
  grid = pos_embed[0, 1:].astype(jnp.float32).reshape(g0, g0, -1)
  if mode == "hf":
    out = jax.image.resize(
        grid, (gh, gw, grid.shape[-1]), method="cubic", antialias=True
    )
  elif mode == "official":
    out = _resize_official(grid, (gh, gw), offset)
  else:
    raise ValueError(f"unknown interpolation mode {mode!r}")
  out = out.reshape(1, gh * gw, -1).astype(dtype)  # [1, gh*gw, D]
  return jnp.concatenate([cls_row, out], axis=1)


# ----------------------------------------------------------------------------
# Modules.
# ----------------------------------------------------------------------------


_NORMAL_002 = nn.initializers.normal(0.02)


def _init(names, init=_NORMAL_002):
  return nn.with_logical_partitioning(init, names)


def _layer_norm(eps, name):
  return nn.LayerNorm(
      epsilon=eps,
      name=name,
      scale_init=_init(("norm",), nn.initializers.ones),
      bias_init=_init(("norm",), nn.initializers.zeros),
  )


class Attention(nn.Module):
  """Multi-head softmax self-attention with q/k/v/out projections."""

  config: DinoV2Config

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: float[B, L, D] -> float[B, L, D]."""
    cfg = self.config
    heads, head_dim = cfg.num_heads, cfg.head_dim

    def proj(name):
      return nn.DenseGeneral(
          (heads, head_dim),
          name=name,
          dtype=cfg.compute_dtype,
          kernel_init=_init(("embed", "heads", "head_dim")),
          bias_init=_init(("heads", "head_dim"), nn.initializers.zeros),
      )(x)  # [B, L, H, Dh]

    q, k, v = proj("query"), proj("key"), proj("value")
    q = q * (head_dim**-0.5)
    out = attention.softmax_attention(q, k, v)  # [B, L, H, Dh]
    return nn.DenseGeneral(
        cfg.width,
        axis=(-2, -1),
        name="out",
        dtype=cfg.compute_dtype,
        kernel_init=_init(("heads", "head_dim", "embed")),
        bias_init=_init(("embed",), nn.initializers.zeros),
    )(out)  # [B, L, D]


class Mlp(nn.Module):
  """fc1 -> exact GELU -> fc2."""

  config: DinoV2Config

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    h = nn.Dense(
        cfg.mlp_dim,
        name="fc1",
        dtype=cfg.compute_dtype,
        kernel_init=_init(("embed", "mlp")),
        bias_init=_init(("mlp",), nn.initializers.zeros),
    )(x)  # [B, L, M]
    h = nn.gelu(h, approximate=False)
    return nn.Dense(
        cfg.width,
        name="fc2",
        dtype=cfg.compute_dtype,
        kernel_init=_init(("mlp", "embed")),
        bias_init=_init(("embed",), nn.initializers.zeros),
    )(h)  # [B, L, D]


class Block(nn.Module):
  """Pre-norm ViT block with LayerScale on both residual branches."""

  config: DinoV2Config

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    ls_init = _init(("embed",), nn.initializers.constant(1e-5))
    ls1 = self.param("ls1", ls_init, (cfg.width,))
    ls2 = self.param("ls2", ls_init, (cfg.width,))
    eps = cfg.layer_norm_eps
    h = Attention(cfg, name="attn")(_layer_norm(eps, "norm1")(x))
    x = x + ls1 * h
    h = Mlp(cfg, name="mlp")(_layer_norm(eps, "norm2")(x))
    return x + ls2 * h  # [B, L, D]


class DinoV2(nn.Module):
  """DINOv2 ViT with register tokens.

  `__call__(pixels, layers=(...))` returns `(last_hidden_state, aux)`:
    * last_hidden_state: float[B, L, D], final block output after `norm`;
    * aux["hidden"]: dict block index -> float[B, L, D] (raw stream after
      that 0-based block, before any norm) for each requested block;
    * aux["final_block"]: float[B, L, D], the last block's raw output;
    * aux["embeddings"]: float[B, L, D], the input of block 0.
  with L = 1 + num_registers + gh * gw.
  """

  config: DinoV2Config

  def setup(self):
    cfg = self.config
    d = cfg.width
    self.patch_embed = nn.Dense(
        d,
        dtype=cfg.compute_dtype,
        kernel_init=_init(("patch", "embed")),
        bias_init=_init(("embed",), nn.initializers.zeros),
    )
    normal = nn.initializers.normal(0.02)
    token_axes = (None, None, "embed")
    self.cls_token = self.param(
        "cls_token", _init(token_axes, normal), (1, 1, d)
    )
    self.mask_token = self.param(
        "mask_token", _init((None, "embed"), nn.initializers.zeros), (1, d)
    )
    self.register_tokens = self.param(
        "register_tokens", _init(token_axes, normal),
        (1, cfg.num_registers, d),
    )
    self.pos_embed = self.param(
        "pos_embed", _init((None, "pos", "embed"), normal),
        (1, 1 + cfg.pos_grid**2, d),
    )
    self.blocks = [Block(cfg, name=f"blocks_{i}") for i in range(cfg.depth)]
    self.norm = _layer_norm(cfg.layer_norm_eps, "norm")

  def embed(self, pixels: jax.Array) -> jax.Array:
    """pixels: float[B, H, W, 3] (normalised) -> tokens float[B, L, D]."""
    cfg = self.config
    b, h, w, c = pixels.shape
    p = cfg.patch_size
    if h % p or w % p:
      raise ValueError(f"image size {h}x{w} is not a multiple of patch {p}")
    gh, gw = h // p, w // p
    patches = pixels.reshape(b, gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(b, gh * gw, p * p * c)  # [B, N, p*p*3]
    x = self.patch_embed(patches.astype(cfg.compute_dtype))  # [B, N, D]
    cls = jnp.broadcast_to(self.cls_token, (b, 1, cfg.width)).astype(x.dtype)
    x = jnp.concatenate([cls, x], axis=1)  # [B, 1 + N, D]
    pos = interpolate_pos_embed(
        self.pos_embed, (gh, gw), cfg.interpolation, cfg.interpolate_offset
    )
    x = x + pos.astype(x.dtype)
    regs = jnp.broadcast_to(
        self.register_tokens, (b, cfg.num_registers, cfg.width)
    ).astype(x.dtype)
    return jnp.concatenate([x[:, :1], regs, x[:, 1:]], axis=1)  # [B, L, D]

  def __call__(self, pixels: jax.Array, layers: Sequence[int] = ()):
    cfg = self.config
    for layer in layers:
      if not 0 <= layer < cfg.depth:
        raise ValueError(f"block index {layer} outside [0, {cfg.depth})")
    x = self.embed(pixels)
    aux = {"embeddings": x, "hidden": {}}
    for i, block in enumerate(self.blocks):
      x = block(x)
      x = nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))
      if i in layers:
        aux["hidden"][i] = x
    aux["final_block"] = x
    return self.norm(x), aux
