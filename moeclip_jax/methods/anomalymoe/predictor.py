"""AnomalyMoE prediction shared by the trainer (`predict_fn`, held-out
evaluation) and `load_detector` (`AnomalyMoEDetector.predict`).

Parameter tree of a trained model (what `export_detector` writes):

  model          AnomalyMoE params (encoder, gate, experts)
  mi_estimator   CLUB estimator (training only)
  calib          state: min_max float[C, 3, 2] (per class, per map level
                 patch / global / component: running min and max of the raw
                 maps of normal training images), seen float[C]
  components     frozen: centres float[C, K, D], keep float[C, K] (the
                 `data components` k-means model; zeros = no components)

Per image of class c (eval mode, test fusion):
  1. component masks from the class centres (components_jax), unless given;
  2. raw maps (patch, global, component) and fusion coefficients;
  3. per-level min-max with class c's statistics (official test.py: over the
     class test set; here over normal training images — a documented
     difference that needs no test set); unseen classes fall back to the
     batch's own min-max;
  4. fusion, 256-px resize, blur, top-1 % image score.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moeclip_jax.methods.anomalymoe import components_jax, inference, ops
from moeclip_jax.methods.anomalymoe import model as model_lib


def feature_map(module, model_params, images):
  """Mean of the target blocks' patch tokens, float[B, g, g, D]."""
  stack, _ = module.apply({"params": model_params}, images,
                          method=model_lib.AnomalyMoE.encode)
  cfg = module.config
  return model_lib.tokens_to_map(jnp.mean(stack, 0),
                                 1 + cfg.backbone.num_registers, cfg.grid)


def predicted_masks(module, params, images, class_id):
  """In-graph component masks float32[B, K, S, S] (K = 1 zeros if none)."""
  comp = params.get("components") if isinstance(params, dict) else None
  s = module.config.image_size
  if comp is None:
    return jnp.zeros((images.shape[0], 1, s, s), jnp.float32)
  fmap = feature_map(module, params["model"], images)
  return components_jax.component_masks(
      fmap, comp["centres"][class_id], comp["keep"][class_id], s)


def eval_maps(module, model_params, images, masks, images_ae=None):
  """(raw maps dict, fusion coefficients [B, 3]) in eval mode.

  `images_ae`: the global experts' view (default: `images`; the official
  test.py feeds a colour-jittered copy, see `predict(jitter_rng=...)`).
  """
  images_ae = images if images_ae is None else images_ae
  out = module.apply({"params": model_params}, images, images_ae, masks)
  weights = model_lib.split_groups(module.config, out["routing_weights"])
  raw = inference.raw_maps(out, weights, module.config.image_size)
  return raw, inference.fusion_coefficients(weights)


def level_maps(raw):
  return jnp.stack([raw["map_patch"], raw["map_global"],
                    raw["map_component"]], axis=1)  # [B, 3, S, S]


def image_min_max(params, class_id, maps):
  """Per-image statistics [B, 3, 2]: the class's, else the batch's."""
  batch = jnp.stack([jnp.min(maps, axis=(0, 2, 3)),
                     jnp.max(maps, axis=(0, 2, 3))], -1)  # [3, 2]
  calib = params.get("calib") if isinstance(params, dict) else None
  if calib is None:
    return jnp.broadcast_to(batch, (maps.shape[0], 3, 2))
  seen = calib["seen"][class_id] > 0  # [B]
  return jnp.where(seen[:, None, None], calib["min_max"][class_id], batch)


def fuse(maps, coefficients, min_max, eps: float = 1e-11):
  """sum_level coef * (map - lo) / (hi - lo + eps) with per-image stats."""
  lo, hi = min_max[..., 0], min_max[..., 1]  # [B, 3]
  norm = (maps - lo[..., None, None]) / (hi - lo + eps)[..., None, None]
  return jnp.sum(coefficients[..., None, None] * norm, axis=1)  # [B, S, S]


def predict(module, params, images, class_id, masks=None, min_max=None,
            jitter_rng=None):
  """{"anomaly_map" [B, S, S] (blurred, back at S), "image_score" [B],
  "fused" [B, S, S] (before the blur), "component_masks"}.

  `jitter_rng`: the official test-time colour jitter of the global experts'
  view with this key (None: deterministic, the default).
  """
  if masks is None:
    masks = predicted_masks(module, params, images, class_id)
  images_ae = None if jitter_rng is None else ops.color_jitter(images,
                                                               jitter_rng)
  raw, coef = eval_maps(module, params["model"], images, masks, images_ae)
  maps = level_maps(raw)
  if min_max is None:
    min_max = image_min_max(params, class_id, maps)
  final = fuse(maps, coef, min_max)
  _, smoothed, scores = inference.score_maps(final)
  s = module.config.image_size
  return {"anomaly_map": ops.resize_bilinear_maps(smoothed, (s, s)),
          "image_score": scores, "fused": final, "component_masks": masks}


def calibration_update(calib, maps, class_id, momentum: float):
  """EMA of per-class min / max of `maps` [B, 3, S, S] (no gradient)."""
  maps = jax.lax.stop_gradient(maps)
  num = calib["seen"].shape[0]
  onehot = jax.nn.one_hot(class_id, num, dtype=bool)  # [B, C]
  lo = jnp.min(maps, axis=(2, 3))  # [B, 3]
  hi = jnp.max(maps, axis=(2, 3))
  big = jnp.finfo(maps.dtype).max
  cls_lo = jnp.min(jnp.where(onehot[..., None], lo[:, None], big), 0)
  cls_hi = jnp.max(jnp.where(onehot[..., None], hi[:, None], -big), 0)
  batch = jnp.stack([cls_lo, cls_hi], -1)  # [C, 3, 2]
  present = jnp.any(onehot, axis=0)[:, None, None]  # [C, 1, 1]
  seen = (calib["seen"] > 0)[:, None, None]
  ema = momentum * calib["min_max"] + (1 - momentum) * batch
  new = jnp.where(present, jnp.where(seen, ema, batch), calib["min_max"])
  return {"min_max": new,
          "seen": jnp.maximum(calib["seen"], present[:, 0, 0].astype(
              calib["seen"].dtype))}
