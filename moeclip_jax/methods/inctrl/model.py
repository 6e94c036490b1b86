"""InCTRL (in-context residual learning) on the shared CLIP towers.

Dimension legend: B queries, K normal prompts (shots), L residual layers (3),
T tokens (1 + P), P patches (G * G, 225 at 240 px), W vision width (896),
D joint embedding width (640).

Score of a query x given K normal prompts of its class (spec/inctrl.md A3):
  1. patch residual map M_p [P]: for each layer l in `feature_layers` (raw
     residual stream after 0-based blocks 6, 8, 10, no ln_post), the distance
     0.5 * (1 - cos) of every query patch to its nearest neighbour among all
     K * P prompt patches; averaged over layers. s_p = max_j M_p(j).
  2. image residual: s_i = diff_head_ref(mean_k Adapter(v_k) - Adapter(v_x)).
  3. text prior: s_a = softmax(100 * [v^ . t_n, v^ . t_a])[1], with t_n / t_a
     the class's cached prompt-ensemble features (`text.TextFeatureCache`).
  4. s_h = diff_head(s_a + s_i + M_p); final score s = (s_h + s_p) / 2.

Per-sample semantics hold at any batch size. `official_batch_layout=True`
reproduces the official reshape without permute, which pairs queries with
other samples' layers and prompts when B > 1 (spec A3), for study only.

Params tree: img/..., txt/... (the shared CLIP towers, frozen), adapter/...,
diff_head/..., diff_head_ref/... (heads.py); batch_stats for the heads' BN.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from moeclip_jax.methods.inctrl import heads
from moeclip_jax.models import clip

DEFAULT_LAYERS = (6, 8, 10)
TEXT_SCALE = 100.0

Features = dict[str, jax.Array]


def l2_normalize(x: jax.Array) -> jax.Array:
  """x / ||x|| over the last axis, without eps (as the official code)."""
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def class_text_features(
    normal_embeddings: jax.Array, anomaly_embeddings: jax.Array
) -> jax.Array:
  """[t_n, t_a] from one class's prompt embeddings.

  Args:
    normal_embeddings: float[Nn, D] text-tower outputs of the normal prompts.
    anomaly_embeddings: float[Na, D] same for the anomaly prompts.

  Returns:
    float[2, D]: each prompt normalised, averaged, normalised again.
  """
  t_n = l2_normalize(jnp.mean(l2_normalize(normal_embeddings), axis=0))
  t_a = l2_normalize(jnp.mean(l2_normalize(anomaly_embeddings), axis=0))
  return jnp.stack([t_n, t_a])  # [2, D]


def patch_residual_maps(
    query_patches: jax.Array, prompt_patches: jax.Array
) -> jax.Array:
  """Per-layer nearest-neighbour residuals of query patches.

  Args:
    query_patches: float[B, L, P, W] (CLS dropped).
    prompt_patches: float[B, L, N, W], N = K * P prompt patches per query.

  Returns:
    float[B, L, P]: min over n of 0.5 * (1 - cos(q_j, n)).
  """
  q = l2_normalize(query_patches)  # [B, L, P, W]
  n = l2_normalize(prompt_patches)  # [B, L, N, W]
  cos = jnp.einsum("blpw,blnw->blpn", q, n)  # [B, L, P, N]
  # 0.5 * (1 - c) is monotone, so the min distance is at the max cosine.
  return 0.5 * (1.0 - jnp.max(cos, axis=-1))  # [B, L, P]


def text_prior(
    query_pooled: jax.Array, text_features: jax.Array, scale: float
) -> jax.Array:
  """softmax(scale * [v^ . t_n, v^ . t_a]).

  Args:
    query_pooled: float[B, D] CLIP image embeddings.
    text_features: float[B, 2, D] [t_n, t_a] per query.
    scale: fixed logit scale (100 in InCTRL).

  Returns:
    float[B, 2] probabilities [normal, anomalous].
  """
  v = l2_normalize(query_pooled)  # [B, D]
  logits = scale * jnp.einsum("bd,bcd->bc", v, text_features)  # [B, 2]
  return jax.nn.softmax(logits, axis=-1)


def per_sample_layout(
    query_tokens: jax.Array, prompt_tokens: jax.Array, prompt_pooled: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Pairs every query with its own K prompts.

  Args:
    query_tokens: float[B, L, T, W].
    prompt_tokens: float[B, K, L, T, W].
    prompt_pooled: float[B, K, D].

  Returns:
    (query_patches [B, L, P, W], prompt_patches [B, L, K*P, W],
     prompt_pooled [B, K, D]).
  """
  b, k, l, t, w = prompt_tokens.shape
  prompt = prompt_tokens[:, :, :, 1:].transpose(0, 2, 1, 3, 4)  # [B,L,K,P,W]
  prompt = prompt.reshape(b, l, k * (t - 1), w)  # [B, L, K*P, W]
  return query_tokens[:, :, 1:], prompt, prompt_pooled


def official_layout(
    query_tokens: jax.Array, prompt_tokens: jax.Array, prompt_pooled: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The official forward's layout for B > 1 (mixes samples; spec A3).

  The official code stacks the per-layer token lists layer-first ([L, B, ...];
  prompts are encoded as one shot-major batch s * B + b) and then reshapes to
  (B, L, ...) without a permute. Same arguments and results as
  `per_sample_layout`; identical to it when B == 1.
  """
  b, k, l, t, w = prompt_tokens.shape
  query = query_tokens.transpose(1, 0, 2, 3)[:, :, 1:]  # [L, B, P, W]
  query = query.reshape(b, l, t - 1, w)  # raw reinterpretation
  prompt = prompt_tokens.transpose(2, 1, 0, 3, 4)[:, :, :, 1:]  # [L,K,B,P,W]
  prompt = prompt.reshape(b, l, k * (t - 1), w)
  pooled = prompt_pooled.transpose(1, 0, 2).reshape(b, k, -1)  # [B, K, D]
  return query, prompt, pooled


def _per_query(x: jax.Array, batch: int, per_query_ndim: int) -> jax.Array:
  """Broadcasts a shared array (no batch axis) to [B, ...]."""
  if x.ndim == per_query_ndim:
    return x
  if x.ndim != per_query_ndim - 1:
    raise ValueError(
        f"expected an array of rank {per_query_ndim} (per query) or "
        f"{per_query_ndim - 1} (shared), got shape {x.shape}"
    )
  return jnp.broadcast_to(x[None], (batch,) + x.shape)


def patch_map_to_image(patch_map: jax.Array, size) -> jax.Array:
  """M_p [B, P] -> bilinear heatmap [B, H, W] (P = G * G).

  Args:
    patch_map: float[B, P] patch residual map.
    size: output side S (square) or (H, W).
  """
  b, p = patch_map.shape
  g = int(round(p**0.5))
  if g * g != p:
    raise ValueError(f"patch map of {p} positions is not a square grid")
  h, w = (size, size) if isinstance(size, int) else tuple(size)
  grid = patch_map.reshape(b, g, g)  # [B, G, G] raster order
  return jax.image.resize(grid, (b, h, w), method="bilinear")


class InCTRL(nn.Module):
  """InCTRL scorer.

  Attributes:
    clip_config: the shared CLIP config (`clip_config.get_config(
      "ViT-B-16-plus-240")`); None builds the heads only, for scoring stored
      features (`score_features`).
    feature_layers: 0-based blocks whose raw outputs give the patch residuals.
    adapter_reduction: adapter bottleneck ratio.
    text_scale: fixed softmax scale of the text prior.
    official_batch_layout: reproduce the official cross-sample mixing.
  """

  clip_config: Any = None
  feature_layers: Sequence[int] = DEFAULT_LAYERS
  adapter_reduction: int = 4
  text_scale: float = TEXT_SCALE
  official_batch_layout: bool = False

  def setup(self):
    if self.clip_config is not None:
      self.img = clip.VisionTransformer(self.clip_config)
      if self.clip_config.text is not None:
        self.txt = clip.TextTransformer(self.clip_config)
    self.adapter = heads.Adapter(self.adapter_reduction)
    self.diff_head = heads.TransformerBasicHead()
    self.diff_head_ref = heads.TransformerBasicHead()

  def encode_text(self, ids: jax.Array) -> jax.Array:
    """ids: int32[N, 77] -> text embeddings float[N, D] (EOT @ proj)."""
    return self.txt(ids)["pooled"]

  def encode_images(self, pixels: jax.Array) -> Features:
    """Vision features InCTRL uses.

    Args:
      pixels: float[N, H, W, 3] normalised NHWC.

    Returns:
      dict(layer_tokens=[N, L, T, W] raw block outputs, pooled=[N, D]).
    """
    depth = self.clip_config.vision.layers
    if max(self.feature_layers) >= depth:
      raise ValueError(
          f"feature_layers {tuple(self.feature_layers)} need more than the "
          f"vision tower's {depth} blocks")
    out = self.img(pixels, layers=tuple(self.feature_layers))
    tokens = [out["hidden"][i] for i in self.feature_layers]
    return {"layer_tokens": jnp.stack(tokens, axis=1), "pooled": out["pooled"]}

  def encode_prompts(self, pixels: jax.Array) -> Features:
    """Prompt features: pixels [K, H, W, 3] (shared) or [B, K, H, W, 3].

    Returns:
      dict(layer_tokens=[(B,) K, L, T, W], pooled=[(B,) K, D]).
    """
    lead = pixels.shape[:-3]  # (K,) or (B, K)
    feats = self.encode_images(pixels.reshape((-1,) + pixels.shape[-3:]))
    return {k: v.reshape(lead + v.shape[1:]) for k, v in feats.items()}

  def score_features(
      self,
      query: Features,
      prompts: Features,
      text_features: jax.Array,
      *,
      train: bool = False,
  ) -> tuple[jax.Array, dict]:
    """Everything after the backbone.

    Args:
      query: dict(layer_tokens=[B, L, T, W], pooled=[B, D]).
      prompts: dict(layer_tokens=[(B,) K, L, T, W], pooled=[(B,) K, D]); no
        batch axis = the same K prompts for every query.
      text_features: float[(B,) 2, D] [t_n, t_a] of each query's class.
      train: BatchNorm heads on batch statistics.

    Returns:
      (final_score [B], aux) with the named stages of the golden fixture:
      patch_residual_maps [B, L, P], patch_map [B, P], patch_score [B],
      adapter_query [B, D], adapter_prompts [B, K, D], adapter_prototype,
      image_residual [B, D], image_residual_score [B], text_probs [B, 2],
      text_score [B], holistic_map [B, P], diff_head_projection1 [B, 128],
      diff_head_bn3 [B, 64], holistic_score [B], final_score [B].
    """
    b = query["pooled"].shape[0]
    p_tokens = _per_query(prompts["layer_tokens"], b, 5)  # [B, K, L, T, W]
    p_pooled = _per_query(prompts["pooled"], b, 3)  # [B, K, D]
    text_features = _per_query(text_features, b, 3)  # [B, 2, D]
    layout = (official_layout if self.official_batch_layout
              else per_sample_layout)
    q_patches, p_patches, p_pooled = layout(
        query["layer_tokens"], p_tokens, p_pooled
    )
    aux = {}
    aux["patch_residual_maps"] = patch_residual_maps(q_patches, p_patches)
    aux["patch_map"] = jnp.mean(aux["patch_residual_maps"], axis=1)  # [B, P]
    aux["patch_score"] = jnp.max(aux["patch_map"], axis=-1)  # [B]
    aux.update(self._image_residual(query["pooled"], p_pooled, train))
    aux["text_probs"] = text_prior(
        query["pooled"], text_features, self.text_scale
    )
    aux["text_score"] = aux["text_probs"][:, 1]  # [B]
    aux["holistic_map"] = (
        aux["text_score"][:, None]
        + aux["image_residual_score"][:, None]
        + aux["patch_map"]
    )  # [B, P]
    s_h, head_aux = self.diff_head(aux["holistic_map"], train=train)
    aux["diff_head_projection1"] = head_aux["projection1"]
    aux["diff_head_bn3"] = head_aux["bn3"]
    aux["holistic_score"] = s_h[:, 0]  # [B]
    aux["final_score"] = 0.5 * (aux["holistic_score"] + aux["patch_score"])
    return aux["final_score"], aux

  def _image_residual(self, query_pooled, prompt_pooled, train) -> dict:
    """Adapter, prototype - query, diff_head_ref."""
    a_q = self.adapter(query_pooled)  # [B, D]
    a_k = self.adapter(prompt_pooled)  # [B, K, D]
    proto = jnp.mean(a_k, axis=1)  # [B, D]
    residual = proto - a_q  # [B, D] (prototype minus query, official sign)
    s_i, _ = self.diff_head_ref(residual, train=train)  # [B, 1]
    return {
        "adapter_query": a_q,
        "adapter_prompts": a_k,
        "adapter_prototype": proto,
        "image_residual": residual,
        "image_residual_score": s_i[:, 0],
    }

  def __call__(
      self,
      query_pixels: jax.Array,
      prompt_pixels: jax.Array,
      text_features: jax.Array,
      *,
      train: bool = False,
  ) -> tuple[jax.Array, dict]:
    """Scores queries from pixels.

    Args:
      query_pixels: float[B, H, W, 3] normalised NHWC.
      prompt_pixels: float[K, H, W, 3] shared or [B, K, H, W, 3] per query.
      text_features: float[(B,) 2, D] (see `text.TextFeatureCache`).
      train: BatchNorm heads on batch statistics.

    Returns:
      (final_score [B], aux) as in `score_features`.
    """
    query = self.encode_images(query_pixels)
    prompts = self.encode_prompts(prompt_pixels)
    return self.score_features(query, prompts, text_features, train=train)

  def init_all(self, query_pixels, prompt_pixels, ids):
    """Touches every submodule (towers and heads); used by `init_variables`."""
    emb = self.encode_text(ids)  # [N, D]
    text_features = class_text_features(emb, emb)
    return self(query_pixels, prompt_pixels, text_features)


def init_variables(
    model: InCTRL, rng: jax.Array, *, shots: int = 2, unbox: bool = True
) -> dict:
  """Random variables {params, batch_stats} of a full InCTRL (towers too).

  Args:
    model: an InCTRL with a `clip_config` that has a text tower.
    rng: PRNG key.
    shots: K used for the dummy prompts (any K works afterwards).
    unbox: strip logical-partitioning metadata.
  """
  v = model.clip_config.vision
  query = jnp.zeros((2, v.image_size, v.image_size, 3), jnp.float32)
  prompts = jnp.zeros((shots,) + query.shape[1:], jnp.float32)
  ids = jnp.zeros((1, model.clip_config.text.context_length), jnp.int32)
  variables = model.init(rng, query, prompts, ids, method=InCTRL.init_all)
  return nn.unbox(variables) if unbox else variables


def init_head_variables(
    rng: jax.Array, *, num_patches: int = 225, embed_dim: int = 640
) -> dict:
  """Random variables of the trainable heads only (no towers)."""
  model = InCTRL(clip_config=None)
  query = {
      "layer_tokens": jnp.zeros((2, 3, 1 + num_patches, 4), jnp.float32),
      "pooled": jnp.zeros((2, embed_dim), jnp.float32),
  }
  prompts = {
      "layer_tokens": jnp.zeros((1, 3, 1 + num_patches, 4), jnp.float32),
      "pooled": jnp.zeros((1, embed_dim), jnp.float32),
  }
  text = jnp.ones((2, embed_dim), jnp.float32)
  return nn.unbox(
      model.init(rng, query, prompts, text, method=InCTRL.score_features)
  )
