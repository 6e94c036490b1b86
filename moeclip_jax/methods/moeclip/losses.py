"""MoECLIP training losses, returned as named values and weighted in ONE place.

Per step (spec/moeclip.md §6):
  L = w_ce * CE(det_feature . T, label)
    + w_seg * sum over maps of [Focal(p) + Dice(p_normal, 1 - mask)
                                + Dice(p_abnormal, mask)]
    + w_balance * sum over MoE layers of CV^2(router probs)
    + w_etf * sum over MoE layers of ETF(all expert outputs)
with p = softmax over [normal, abnormal] of the align-corners upsampled
logits 100 * f T. `faithful="released"` has w_etf = w_balance = 0 (both terms
are dead in the official training run); "paper" uses 0.01 for both.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from moeclip_jax.methods.moeclip import config as config_lib
from moeclip_jax.methods.moeclip import heads as heads_lib
from moeclip_jax.methods.moeclip import maps

HIGHEST = jax.lax.Precision.HIGHEST
FOCAL_SMOOTH = 1e-5


def image_ce(
    det_feature: jax.Array, text_features: jax.Array, labels: jax.Array
) -> jax.Array:
  """Mean cross-entropy of logits det_feature . T (no logit scale): []."""
  logits = maps.det_logits(det_feature, text_features)  # [B, 2]
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(logp, labels.astype(jnp.int32)[:, None], 1)
  return -jnp.mean(picked)


def seg_probs(
    seg_tokens: jax.Array, text_features: jax.Array, size: tuple[int, int]
) -> jax.Array:
  """Softmax over [normal, abnormal] of the upsampled logits.

  Args:
    seg_tokens: float[n_maps, B, L, D].
    text_features: float[D, 2] or [B, D, 2].
    size: mask (H, W).

  Returns:
    float32[n_maps, B, 2, H, W].
  """
  sim = maps.similarity_maps(seg_tokens, text_features)  # [n, B, 2, G, G]
  up = maps.resize_bilinear_align_corners(sim.astype(jnp.float32), size)
  return jax.nn.softmax(up, axis=-3)


def focal_loss(probs: jax.Array, mask: jax.Array, gamma: float = 2.0):
  """Official `FocalLoss` (alpha 1, one-hot clamped to [1e-5, 1 - 1e-5]).

  Args:
    probs: float[..., B, 2, H, W] class probabilities.
    mask: {0, 1}[B, H, W] (1 = anomalous pixel).
    gamma: focusing exponent.

  Returns:
    float[...]: mean over B * H * W pixels.
  """
  target = (mask > 0.5).astype(probs.dtype)  # [B, H, W]
  onehot = jnp.stack([1.0 - target, target], axis=-3)  # [B, 2, H, W]
  onehot = jnp.clip(onehot, FOCAL_SMOOTH, 1.0 - FOCAL_SMOOTH)
  p_t = jnp.sum(onehot * probs, axis=-3) + FOCAL_SMOOTH  # [..., B, H, W]
  loss = -((1.0 - p_t) ** gamma) * jnp.log(p_t)
  return jnp.mean(loss, axis=(-3, -2, -1))


def dice_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Official `BinaryDiceLoss`: 1 - mean_b (2 sum(p t) + 1)/(sum p + sum t + 1).

  Args:
    pred: float[..., B, H, W].
    target: float[B, H, W].

  Returns:
    float[...].
  """
  inter = jnp.sum(pred * target, axis=(-2, -1))  # [..., B]
  denom = jnp.sum(pred, axis=(-2, -1)) + jnp.sum(target, axis=(-2, -1))
  return 1.0 - jnp.mean((2.0 * inter + 1.0) / (denom + 1.0), axis=-1)


def seg_losses(
    seg_tokens: jax.Array, text_features: jax.Array, masks: jax.Array
) -> dict[str, jax.Array]:
  """Per-map focal and dice terms.

  Args:
    seg_tokens: float[n_maps, B, L, D].
    text_features: float[D, 2] or [B, D, 2].
    masks: {0, 1}[B, H, W] (or [B, 1, H, W]) at the training image size.

  Returns:
    dict of float[n_maps]: focal, dice_normal, dice_abnormal, seg (their sum).
  """
  if masks.ndim == 4:
    masks = masks[:, 0]
  masks = masks.astype(jnp.float32)
  probs = seg_probs(seg_tokens, text_features, masks.shape[-2:])
  focal = focal_loss(probs, masks)
  dice_n = dice_loss(probs[:, :, 0], 1.0 - masks)
  dice_a = dice_loss(probs[:, :, 1], masks)
  return {"focal": focal, "dice_normal": dice_n, "dice_abnormal": dice_a,
          "seg": focal + dice_n + dice_a}


def etf_loss(expert_outputs: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Simplex-ETF loss on all experts' outputs, per token.

  Gram matrix of the unit-normalised expert outputs vs the target (1 on the
  diagonal, -1/(E-1) off it); mean over tokens and all E^2 entries.
  Sanity: perfect simplex 0, identical outputs 4/3, all-zero 1/3 (E = 4).

  Args:
    expert_outputs: float[..., E, N].
    eps: normalisation floor (torch `F.normalize(eps=1e-6)`).

  Returns:
    float32[].
  """
  e = expert_outputs.astype(jnp.float32)
  num = e.shape[-2]
  if num <= 1:
    return jnp.zeros((), jnp.float32)
  unit = e / jnp.maximum(heads_lib.safe_norm(e), eps)
  gram = jnp.einsum("...EN,...FN->...EF", unit, unit, precision=HIGHEST)
  eye = jnp.eye(num, dtype=jnp.float32)
  target = eye + (1.0 - eye) * (-1.0 / (num - 1))  # [E, E]
  return jnp.mean((gram - target) ** 2)


def balance_cv2(router_probs: jax.Array) -> jax.Array:
  """(std / (mean + 1e-6))^2 of the per-expert probability mass.

  Args:
    router_probs: float[..., E] over all tokens of the batch.

  Returns:
    float32[] (unbiased std, like torch `Tensor.std`).
  """
  probs = router_probs.astype(jnp.float32)
  mass = jnp.sum(probs.reshape(-1, probs.shape[-1]), axis=0)  # [E]
  # var / (mean + eps)^2 == (std / (mean + eps))^2, without the sqrt whose
  # gradient is NaN when every expert has the same mass (a zero gate).
  var = jnp.var(mass, ddof=1)
  return var / (jnp.mean(mass) + 1e-6) ** 2


def moe_losses(moe_aux: Mapping[int, Mapping[str, jax.Array]]):
  """Per-layer ETF (when expert outputs are present) and CV^2.

  Args:
    moe_aux: block index -> MoE aux dict (from `MoECLIP.__call__`).

  Returns:
    dict(etf=[n_layers] or None, balance=[n_layers] or None), layers in
    increasing block order.
  """
  layers = sorted(moe_aux)
  out = {"etf": None, "balance": None}
  if layers and all("expert_outputs" in moe_aux[i] for i in layers):
    out["etf"] = jnp.stack(
        [etf_loss(moe_aux[i]["expert_outputs"]) for i in layers])
  if layers:
    out["balance"] = jnp.stack(
        [balance_cv2(moe_aux[i]["router_probs"]) for i in layers])
  return out


def total_loss(
    out: Mapping[str, jax.Array],
    aux: Mapping[str, Any],
    text_features: jax.Array,
    labels: jax.Array,
    masks: jax.Array,
    weights: config_lib.LossWeights,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The MoECLIP objective; the only place the terms are weighted.

  Args:
    out: model outputs (seg_tokens [n, B, L, D], det_feature [B, D]).
    aux: model aux (moe: block -> MoE aux).
    text_features: float[D, 2] or [B, D, 2] (per-image class).
    labels: int[B] (0 normal, 1 anomalous).
    masks: {0, 1}[B, H, W] at the image size.
    weights: the loss weights (`MoECLIPConfig.loss_weights()`).

  Returns:
    (total [], named dict of every term, per-map and per-layer values too).
  """
  ce = image_ce(out["det_feature"], text_features, labels)
  seg = seg_losses(out["seg_tokens"], text_features, masks)
  moe = moe_losses(aux.get("moe", {}))
  zero = jnp.zeros((), jnp.float32)
  etf = zero if moe["etf"] is None else jnp.sum(moe["etf"])
  bal = zero if moe["balance"] is None else jnp.sum(moe["balance"])
  seg_sum = jnp.sum(seg["seg"])
  total = (weights.ce * ce + weights.seg * seg_sum + weights.etf * etf
           + weights.balance * bal)
  named = {
      "loss_total": total, "loss_ce": ce, "loss_seg_sum": seg_sum,
      "loss_focal_sum": jnp.sum(seg["focal"]),
      "loss_dice_sum": jnp.sum(seg["dice_normal"] + seg["dice_abnormal"]),
      "loss_etf_sum": etf, "loss_balance_cv2_sum": bal,
      "loss_focal_per_map": seg["focal"],
      "loss_dice_normal_per_map": seg["dice_normal"],
      "loss_dice_abnormal_per_map": seg["dice_abnormal"],
      "loss_seg_per_map": seg["seg"],
  }
  if moe["etf"] is not None:
    named["loss_etf_per_layer"] = moe["etf"]
  if moe["balance"] is not None:
    named["loss_balance_cv2_per_layer"] = moe["balance"]
  return total, named
