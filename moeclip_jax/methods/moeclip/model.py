"""MoECLIP (Flax Linen): CLIP towers + MoE-of-LoRA blends + seg/det heads.

Forward (spec/moeclip.md §2, §3, §6):
  1. The frozen CLIP vision tower runs; after each block in `moe_layers` the
     stream h [B, T, W] is blended with the MoE output m:
       h <- w * m * |h| / (|m| + 1e-6) + (1 - w) * h      (per token, w = 0.1)
  2. The streams after `feature_layers` are aggregated by PAA (r in 1, 3, 5),
     go through CLIP's shared `ln_post`, lose CLS, through `seg_proj_{j}`
     (one per layer, shared across r) and are L2-normalised: 12 seg maps.
  3. The detection head runs on the last layer's r = 1 tokens (post ln_post,
     no CLS); per-token L2-normalise, mean over tokens: det_feature [B, D].
  4. Text: the frozen text tower's EOT features (cached per class by the
     trainer) go through `text_adapter`; T [D, 2] is the per-state mean.

Params tree:
  img/...              frozen CLIP vision tower (moeclip_jax.models.clip)
  txt/...              frozen CLIP text tower
  moe_{j}/router/kernel [W, E]   trainable
  moe_{j}/fofs_a        [E, W, R] frozen FOFS frames
  moe_{j}/lora_b        [E, R, W] trainable
  seg_proj_{j}/kernel   [W, D]    trainable
  det_proj/{ln/{scale,bias}, depthwise [k, W], pointwise [W, D]}  trainable
  text_adapter/fc/kernel [Wt, D]  trainable
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from moeclip_jax.methods.moeclip import config as config_lib
from moeclip_jax.methods.moeclip import heads as heads_lib
from moeclip_jax.models import clip, clip_config, moe
from moeclip_jax.models import precision as precision_lib

# Regexes over "/"-joined param paths; everything else is frozen. None of
# them matches a path containing "fofs_a".
TRAINABLE_PATTERNS = (
    r"^moe_\d+/router/kernel$",
    r"^moe_\d+/lora_b$",
    r"^moe_\d+/lora_a$",  # only exists with use_fofs=False
    r"^seg_proj_\d+/kernel$",
    r"^det_proj/.*",
    r"^text_adapter/.*",
)
FROZEN_PATTERNS = (r"^img/.*", r"^txt/.*", r"^moe_\d+/fofs_a$")


def param_labels(params) -> dict[str, str]:
  """{'/'-joined path: 'trainable' | 'frozen'} for every leaf.

  Raises:
    ValueError: a leaf matches neither or both pattern lists.
  """
  labels, problems = {}, []
  for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    train = any(re.match(p, name) for p in TRAINABLE_PATTERNS)
    frozen = any(re.match(p, name) for p in FROZEN_PATTERNS)
    if train == frozen:
      problems.append(name)
    labels[name] = "trainable" if train else "frozen"
  if problems:
    raise ValueError(f"params matched by neither or both label lists: "
                     f"{sorted(problems)}")
  return labels


def norm_matched_blend(h: jax.Array, m: jax.Array, weight: float) -> jax.Array:
  """h <- weight * m * |h| / (|m| + 1e-6) + (1 - weight) * h, per token.

  Args:
    h: float[B, T, W] residual stream.
    m: float[B, T, W] MoE output.
    weight: image_adapt_weight.

  Returns:
    float[B, T, W] in h.dtype (norms in float32).
  """
  h32, m32 = h.astype(jnp.float32), m.astype(jnp.float32)
  h_norm = heads_lib.safe_norm(h32)  # [B, T, 1]
  m_norm = heads_lib.safe_norm(m32)  # [B, T, 1]
  out = weight * (m32 * h_norm / (m_norm + 1e-6)) + (1.0 - weight) * h32
  return out.astype(h.dtype)


def run_heads(
    layer_tokens: Sequence[jax.Array],
    ln_post: Callable[[jax.Array], jax.Array],
    seg_proj: Sequence[Callable[[jax.Array], jax.Array]],
    det_proj: Callable[[jax.Array], jax.Array],
    radii: Sequence[int],
) -> dict[str, jax.Array]:
  """PAA -> ln_post -> drop CLS -> seg_proj -> normalise; det head.

  Args:
    layer_tokens: per feature layer, float[B, T, W] (post-blend, pre-ln_post).
    ln_post: CLIP's shared `ln_post`.
    seg_proj: one projection W -> D per layer.
    det_proj: the detection head, [B, L, W] -> [B, L, D].
    radii: PAA window sizes, the first being 1.

  Returns:
    dict(seg_tokens=[n_layers * n_radii, B, L, D] unit-norm, ordered
    [layer0 r1, layer0 r3, ..., last r5]; det_tokens=[B, L, D] (before
    normalise/mean); det_feature=[B, D] (mean of unit vectors)).
  """
  seg, det_in = [], None
  for j, tokens in enumerate(layer_tokens):
    for r in radii:
      x = ln_post(heads_lib.patch_average(tokens, r))[:, 1:]  # [B, L, W]
      if r == 1 and j == len(layer_tokens) - 1:
        det_in = x
      seg.append(heads_lib.l2_normalize(seg_proj[j](x)))  # [B, L, D]
  det_tokens = det_proj(det_in)  # [B, L, D]
  det_feature = jnp.mean(heads_lib.l2_normalize(det_tokens), axis=1)  # [B, D]
  return {"seg_tokens": jnp.stack(seg), "det_tokens": det_tokens,
          "det_feature": det_feature}


class MoECLIP(nn.Module):
  """MoECLIP on a CLIP backbone (see the module docstring).

  Attributes:
    clip_config: CLIP towers.
    config: adapter hyperparameters.
  """

  clip_config: clip_config.CLIPConfig
  config: config_lib.MoECLIPConfig

  def setup(self):
    cfg, ccfg = self.config, self.clip_config
    dtype = precision_lib.compute_dtype(cfg.dtype)
    self.precision = (
        None if ccfg.matmul_precision == "default"
        else jax.lax.Precision[ccfg.matmul_precision.upper()]
    )
    self.img = clip.VisionTransformer(ccfg)
    if ccfg.text is not None:
      self.txt = clip.TextTransformer(ccfg)
    self.moe = [
        moe.MoELoRA(
            num_experts=cfg.num_experts, top_k=cfg.top_k, rank=cfg.lora_rank,
            alpha=cfg.lora_alpha, dropout_rate=cfg.lora_dropout,
            capacity_factor=cfg.capacity_factor, use_fofs=cfg.use_fofs,
            dtype=dtype, precision=self.precision,
        )
        for _ in cfg.moe_layers
    ]
    self.seg_proj = [
        nn.Dense(
            cfg.proj_dim, use_bias=False, dtype=dtype,
            precision=self.precision,
            kernel_init=heads_lib.xavier_dense(("embed", "proj")),
        )
        for _ in cfg.feature_layers
    ]
    self.det_proj = heads_lib.DetHead(
        proj_dim=cfg.proj_dim, kernel_size=cfg.det_kernel,
        ln_eps=ccfg.ln_eps, dtype=dtype, precision=self.precision,
    )
    self.text_adapter = heads_lib.TextAdapter(
        proj_dim=cfg.proj_dim, dtype=dtype, precision=self.precision
    )

  def __call__(
      self,
      pixels: jax.Array,
      *,
      train: bool = False,
      return_expert_outputs: bool | None = None,
  ) -> tuple[dict[str, jax.Array], dict[str, Any]]:
    """Image forward.

    Args:
      pixels: float[B, S, S, 3] NHWC, CLIP-normalised, S = image_size.
      train: training step. The CLIP towers always run in eval mode; the
        adapters run in train mode (LoRA dropout) only in paper mode.
      return_expert_outputs: return every expert's output per MoE layer (the
        ETF input). Default: train and paper mode.

    Returns:
      (out, aux): out = dict(seg_tokens [n_maps, B, L, D], det_tokens
      [B, L, D], det_feature [B, D]); aux = dict(layer_outputs
      [n_layers, B, T, W], moe = {block index: MoE aux dict}).
    """
    cfg = self.config
    adapters_train = train and cfg.adapters_train_mode
    if return_expert_outputs is None:
      return_expert_outputs = adapters_train
    moe_aux = {}

    def block_hook(i: int, h: jax.Array) -> jax.Array:
      if i not in cfg.moe_layers:
        return h
      m, aux = self.moe[cfg.moe_layers.index(i)](
          h, deterministic=not adapters_train,
          return_expert_outputs=return_expert_outputs,
      )  # m: [B, T, W]
      moe_aux[i] = aux
      return norm_matched_blend(h, m, cfg.image_adapt_weight)

    tower = self.img(
        pixels, layers=cfg.feature_layers, block_hook=block_hook
    )
    layer_tokens = [tower["hidden"][i] for i in cfg.feature_layers]
    out = run_heads(
        layer_tokens, self.img.ln_post_apply, self.seg_proj, self.det_proj,
        cfg.paa_radii,
    )
    aux = {"layer_outputs": jnp.stack(layer_tokens), "moe": moe_aux}
    return out, aux

  def encode_text_eot(self, ids: jax.Array) -> jax.Array:
    """Frozen text tower: int[N, L] token ids -> EOT features [N, Wt]."""
    return self.txt(ids)["eot"]

  def adapt_text(self, eot: jax.Array) -> jax.Array:
    """text_adapter: [..., Wt] -> [..., D]."""
    return self.text_adapter(eot)

  def text_features(self, eot: jax.Array, is_abnormal: jax.Array) -> jax.Array:
    """Class text matrix from cached EOT features.

    Args:
      eot: float[N, Wt] or [C, N, Wt] (C classes sharing one sentence layout).
      is_abnormal: int[N], 1 for abnormal-state sentences.

    Returns:
      float[D, 2] (or [C, D, 2]), columns [normal, abnormal].
    """
    emb = self.text_adapter(eot)  # [..., N, D]
    if emb.ndim == 2:
      return heads_lib.class_text_features(emb, is_abnormal)
    return jax.vmap(heads_lib.class_text_features, in_axes=(0, None))(
        emb, is_abnormal
    )

  def init_all(self, pixels: jax.Array, ids: jax.Array):
    """Touches every submodule (use as `init(..., method=MoECLIP.init_all)`)."""
    out, _ = self(pixels)
    eot = self.encode_text_eot(ids) if self.clip_config.text else ids
    return out, self.text_features(eot, jnp.arange(ids.shape[0]) % 2)


def _dummy_inputs(ccfg: clip_config.CLIPConfig, abstract: bool):
  size = ccfg.vision.image_size
  length = ccfg.text.context_length if ccfg.text is not None else 1
  shapes = ((1, size, size, 3), jnp.float32), ((2, length), jnp.int32)
  if abstract:
    return [jax.ShapeDtypeStruct(s, d) for s, d in shapes]
  return [jnp.zeros(s, d) for s, d in shapes]


def init_params(
    ccfg: clip_config.CLIPConfig,
    cfg: config_lib.MoECLIPConfig,
    rng: jax.Array,
) -> dict:
  """Random parameters (unboxed): backbone + fresh adapters."""
  model = MoECLIP(ccfg, cfg)
  pixels, ids = _dummy_inputs(ccfg, abstract=False)
  init = jax.jit(
      lambda r: model.init(r, pixels, ids, method=MoECLIP.init_all)
  )
  return nn.unbox(init(rng)["params"])


def abstract_params(
    ccfg: clip_config.CLIPConfig, cfg: config_lib.MoECLIPConfig
):
  """Shape/dtype tree with logical-axis metadata, without allocating."""
  model = MoECLIP(ccfg, cfg)
  pixels, ids = _dummy_inputs(ccfg, abstract=True)
  return jax.eval_shape(
      lambda r, x, i: model.init(r, x, i, method=MoECLIP.init_all),
      jax.random.key(0), pixels, ids,
  )["params"]
