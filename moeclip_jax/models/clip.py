"""Flax Linen CLIP: vision and text towers, OpenCLIP / OpenAI numerics.

Params tree (the converters in moeclip_jax/convert/ map onto it):

  img/conv1/kernel                 [p, p, 3, W]   patch conv, no bias
  img/class_embedding              [W]
  img/positional_embedding         [1 + G*G, W]
  img/ln_pre, img/ln_post          LayerNorm {scale, bias}
  img/blocks_{i}/...               see layers.ResidualBlock
  img/proj                         [W, D]         (absent if output_dim None)
  txt/token_embedding/embedding    [V, Wt]
  txt/positional_embedding         [L, Wt]
  txt/blocks_{i}/..., txt/ln_final
  txt/text_projection              [Wt, D]
  logit_scale                      []

Token layout of the vision tower: [CLS, patches in raster order].
"""

from __future__ import annotations

from typing import Callable, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp

from moeclip_jax.models import clip_config
from moeclip_jax.models import layers as L
from moeclip_jax.sharding import partition

BlockHook = Callable[[int, jax.Array], jax.Array]


_ACT = ("act_batch", "act_len", "act_embed")  # block-boundary activations


def _block_class(config: clip_config.CLIPConfig):
  """ResidualBlock, wrapped in `nn.remat` when `config.remat == "blocks"`
  (activations inside each block are recomputed in the backward pass)."""
  if config.remat == "blocks":
    return nn.remat(L.ResidualBlock)
  return L.ResidualBlock


def _param(module, name, shape, names, std, param_dtype):
  init = nn.with_logical_partitioning(nn.initializers.normal(std), names)
  return module.param(name, init, shape, param_dtype)


class VisionTransformer(nn.Module):
  """ViT image tower. See the module docstring for the params layout."""

  config: clip_config.CLIPConfig

  def setup(self):
    v = self.config.vision
    dtype, param_dtype = L.dtypes(self.config)
    self.conv1 = nn.Conv(
        v.width,
        (v.patch_size, v.patch_size),
        strides=(v.patch_size, v.patch_size),
        padding="VALID",
        use_bias=False,
        dtype=dtype,
        param_dtype=param_dtype,
        precision=L.precision(self.config),
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.normal(0.02), (None, None, None, "embed")
        ),
    )
    self.class_embedding = _param(
        self, "class_embedding", (v.width,), ("embed",), 0.02, param_dtype
    )
    self.positional_embedding = _param(
        self,
        "positional_embedding",
        (v.num_tokens, v.width),
        ("pos", "embed"),
        0.01,
        param_dtype,
    )
    self.ln_pre = L.layer_norm(self.config)
    self.blocks = [
        _block_class(self.config)(self.config, v.width, v.heads, v.mlp_dim)
        for _ in range(v.layers)
    ]
    self.ln_post = L.layer_norm(self.config)
    if v.output_dim is not None:
      self.proj = _param(
          self, "proj", (v.width, v.output_dim), ("embed", "proj"),
          v.width**-0.5, param_dtype,
      )

  def embed(self, pixels: jax.Array) -> jax.Array:
    """pixels: float[B, H, W, 3] normalised -> tokens [B, 1 + G*G, W]."""
    v = self.config.vision
    if pixels.ndim != 4 or pixels.shape[1:] != (v.image_size, v.image_size, 3):
      raise ValueError(
          f"expected pixels [B, {v.image_size}, {v.image_size}, 3] (NHWC, "
          f"normalised), got {tuple(pixels.shape)}"
      )
    dtype, _ = L.dtypes(self.config)
    x = self.conv1(pixels.astype(dtype))  # [B, G, G, W]
    x = x.reshape(x.shape[0], -1, v.width)  # [B, G*G, W]
    cls = jnp.broadcast_to(
        self.class_embedding.astype(dtype), (x.shape[0], 1, v.width)
    )
    x = jnp.concatenate([cls, x], axis=1)  # [B, T, W]
    x = x + self.positional_embedding.astype(dtype)
    return self.ln_pre(x).astype(dtype)

  def ln_post_apply(self, x: jax.Array) -> jax.Array:
    """The tower's own `ln_post`, for callers that pool tokens themselves."""
    return self.ln_post(x)

  def pool(self, tokens: jax.Array) -> jax.Array:
    """tokens [B, T, W] -> ln_post(CLS) @ proj: [B, D]."""
    x = self.ln_post(tokens[:, 0])
    if self.config.vision.output_dim is None:
      return x
    return jnp.dot(
        x, self.proj.astype(x.dtype), precision=L.precision(self.config)
    )

  def __call__(
      self,
      pixels: jax.Array,
      *,
      layers: Iterable[int] = (),
      block_hook: BlockHook | None = None,
  ) -> dict:
    """Runs the tower.

    Args:
      pixels: float[B, H, W, 3], NHWC, already normalised, H = W = image_size.
      layers: 0-based block indices whose outputs go into `hidden`.
      block_hook: optional `hook(i, h) -> h`, applied after block i.

    Returns:
      dict(tokens=[B, T, W] final stream (no ln_post), pooled=[B, D],
      hidden={i: [B, T, W]}).
    """
    layers = set(layers)
    x = self.embed(pixels)
    hidden = {}
    for i, block in enumerate(self.blocks):
      x = partition.constrain(block(x), _ACT)  # [B, T, W]
      if block_hook is not None:
        x = block_hook(i, x)
      if i in layers:
        hidden[i] = x
    return {"tokens": x, "pooled": self.pool(x), "hidden": hidden}


class TextTransformer(nn.Module):
  """Causal text tower; pools the EOT token (argmax of the ids)."""

  config: clip_config.CLIPConfig

  def setup(self):
    t = self.config.text
    dtype, param_dtype = L.dtypes(self.config)
    self.token_embedding = nn.Embed(
        t.vocab_size,
        t.width,
        dtype=dtype,
        param_dtype=param_dtype,
        embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(0.02), ("vocab", "embed")
        ),
    )
    self.positional_embedding = _param(
        self, "positional_embedding", (t.context_length, t.width),
        ("pos", "embed"), 0.01, param_dtype,
    )
    self.blocks = [
        _block_class(self.config)(self.config, t.width, t.heads, t.mlp_dim)
        for _ in range(t.layers)
    ]
    self.ln_final = L.layer_norm(self.config)
    if t.output_dim is not None:
      self.text_projection = _param(
          self, "text_projection", (t.width, t.output_dim), ("embed", "proj"),
          t.width**-0.5, param_dtype,
      )

  def __call__(self, ids: jax.Array, *, layers: Iterable[int] = ()) -> dict:
    """ids: int[N, L] (L <= context_length) -> dict(eot, pooled, tokens, hidden)."""
    t = self.config.text
    if ids.ndim != 2 or ids.shape[1] > t.context_length:
      raise ValueError(
          f"expected token ids [N, <= {t.context_length}], got {ids.shape}"
      )
    dtype, _ = L.dtypes(self.config)
    length = ids.shape[1]
    x = self.token_embedding(ids)  # [N, L, Wt]
    x = x + self.positional_embedding[:length].astype(dtype)
    mask = jnp.tril(jnp.ones((length, length), bool))  # causal
    layers, hidden = set(layers), {}
    for i, block in enumerate(self.blocks):
      x = partition.constrain(block(x, mask), _ACT)  # [N, L, Wt]
      if i in layers:
        hidden[i] = x
    x = self.ln_final(x)  # [N, L, Wt]
    eot = x[jnp.arange(x.shape[0]), jnp.argmax(ids, axis=-1)]  # [N, Wt]
    pooled = eot
    if t.output_dim is not None:
      pooled = jnp.dot(
          eot, self.text_projection.astype(eot.dtype),
          precision=L.precision(self.config),
      )
    return {"eot": eot, "pooled": pooled, "tokens": x, "hidden": hidden}


class CLIP(nn.Module):
  """Both towers under `img` / `txt`, plus `logit_scale`."""

  config: clip_config.CLIPConfig

  def setup(self):
    self.img = VisionTransformer(self.config)
    if self.config.text is not None:
      self.txt = TextTransformer(self.config)
    self.logit_scale = self.param(
        "logit_scale",
        nn.with_logical_partitioning(
            nn.initializers.constant(jnp.log(1 / 0.07)), ()
        ),
        (),
        jnp.float32,
    )

  def encode_image(self, pixels, **kwargs) -> dict:
    return self.img(pixels, **kwargs)

  def encode_text(self, ids, **kwargs) -> dict:
    if self.config.text is None:
      raise ValueError("this CLIP checkpoint has no text tower")
    return self.txt(ids, **kwargs)

  def __call__(self, pixels, ids):
    """Both towers (used by `init`): returns (image_out, text_out)."""
    out_txt = self.encode_text(ids) if self.config.text is not None else None
    return self.encode_image(pixels), out_txt


def init_params(config: clip_config.CLIPConfig, rng: jax.Array) -> dict:
  """Random parameters (unboxed), for tests and from-scratch runs."""
  v, t = config.vision, config.text
  pixels = jnp.zeros((1, v.image_size, v.image_size, 3), jnp.float32)
  ids = jnp.zeros((1, t.context_length if t else 1), jnp.int32)
  variables = CLIP(config).init(rng, pixels, ids)
  return nn.unbox(variables["params"])


def abstract_params(config: clip_config.CLIPConfig):
  """Shape/dtype tree (with logical-axis metadata) without allocating."""
  v, t = config.vision, config.text
  pixels = jax.ShapeDtypeStruct((1, v.image_size, v.image_size, 3), jnp.float32)
  ids = jax.ShapeDtypeStruct((1, t.context_length if t else 1), jnp.int32)
  return jax.eval_shape(
      CLIP(config).init, jax.random.key(0), pixels, ids
  )["params"]
