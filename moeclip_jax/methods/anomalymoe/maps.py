"""AnomalyMoE maps and scores: the official test-time math (`test.py`) and
the prediction from a trained parameter tree, shared by the trainer
(`predict_fn`, held-out evaluation) and the detector.

Official test time, per image: three raw maps at S px (patch, global,
component), each a routing-weighted sum over its expert group. Per class:
min-max of each map level over all pixels of all images (eps 1e-11), fused
with the per-image **max** routing weight inside each group, resized to 256
(bilinear, no antialias), blurred (5x5, sigma 4, zero padding); image score
= mean of the top 1 % pixels (`evaluate_class`).

Parameter tree of a trained model (what `export_detector` writes):

  model          AnomalyMoE params (encoder, gate, experts)
  mi_estimator   CLUB estimator (training only)
  calib          state: min_max float[C, 3, 2] (per class, per map level
                 patch / global / component: running min and max of the raw
                 maps of normal training images), seen float[C]
  components     frozen: centres float[C, K, D], keep float[C, K] (the
                 `data components` k-means model; zeros = no components)

Per image of class c (eval mode, test fusion; `predict`):
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
import numpy as np

from moeclip_jax.methods.anomalymoe import components_jax, ops
from moeclip_jax.methods.anomalymoe import model as model_lib


# ---- official test-time math ------------------------------------------------
def patch_error_maps(en_map, de_maps):
  """en_map [B, g, g, D], de_maps [E, B, g, g, D] -> [E, B, g, g]."""
  return 1.0 - ops.cosine_similarity(en_map[None], de_maps)


def global_error_maps(ae_out, student_out):
  """[E, B, g, g, D] each -> mean_C (ae - student)^2, [E, B, g, g]."""
  return jnp.mean((ae_out - student_out) ** 2, axis=-1)


def component_scores(feats, recon, weights_c):
  """sum_i w_{owner,i} (1 - cos(recon_i, feats)): [B, K]."""
  per = 1.0 - ops.cosine_similarity(recon, feats[None])  # [E, B, K]
  return jnp.einsum("be,ebk->bk", weights_c, per)


def raw_maps(out, weights_split, image_size: int):
  """The three raw maps of `calculate_raw_anomaly_maps_moe`.

  Args:
    out: eval-mode (test fusion) `AnomalyMoE` outputs.
    weights_split: routing weights (patch [B, Ep], global, component).
    image_size: S.

  Returns:
    dict with map_patch_grid, map_global_grid [B, g, g], patch_error_maps,
    global_error_maps [E, B, g, g], component_scores [B, K] and map_patch,
    map_global, map_component [B, S, S].
  """
  wp, wg, wc = weights_split
  perr = patch_error_maps(out["en_maps"][-1], out["de_maps"][:, -1])
  gerr = global_error_maps(out["ae_out"], out["student_out"])
  pgrid = jnp.einsum("be,ebhw->bhw", wp, perr)
  ggrid = jnp.einsum("be,ebhw->bhw", wg, gerr)
  scores = component_scores(out["component_features"],
                            out["component_recon"], wc)
  scores = jnp.where(out["component_valid"], scores, 0.0)  # [B, K]
  masks = out["component_masks"].astype(scores.dtype)  # [B, K, S, S]
  comp = jnp.max(scores[:, :, None, None] * masks, axis=1)  # [B, S, S]
  size = (image_size, image_size)
  return {
      "patch_error_maps": perr, "global_error_maps": gerr,
      "map_patch_grid": pgrid, "map_global_grid": ggrid,
      "component_scores": scores,
      "map_patch": ops.resize_bilinear_maps(pgrid, size),
      "map_global": ops.resize_bilinear_maps(ggrid, size),
      "map_component": comp,
  }


def fusion_coefficients(weights_split):
  """Per image, the max routing weight inside each group: [B, 3]."""
  return jnp.stack([jnp.max(w, axis=-1) for w in weights_split], axis=-1)


def class_min_max(maps):
  """maps: (patch, global, component) [N, S, S] each -> [3, 2] (min, max)."""
  return jnp.stack([jnp.stack([jnp.min(m), jnp.max(m)]) for m in maps])


def score_maps(final, out_size: int = 256, top_fraction: float = 0.01):
  """final [N, S, S] -> (resized, smoothed [N, o, o], image scores [N])."""
  resized = ops.resize_bilinear_maps(final, (out_size, out_size))
  smoothed = ops.blur_zero_pad(resized, 5, 4.0)
  k = int(out_size * out_size * top_fraction)
  top = jax.lax.top_k(smoothed.reshape(smoothed.shape[0], -1), k)[0]
  return resized, smoothed, jnp.mean(top, axis=-1)


def resize_gt(gt, out_size: int = 256):
  """gt [N, S, S] -> nearest [N, o, o] (index floor(i * S / o))."""
  return ops.resize_nearest_maps(gt, (out_size, out_size))


def evaluate_class(raw, coefficients, gt=None, labels=None):
  """Class-level post-processing and (optionally) AUROCs.

  Args:
    raw: dict of map_patch / map_global / map_component [N, S, S] over the
      whole class (concatenated batches).
    coefficients: [N, 3] fusion coefficients.
    gt: optional {0,1}[N, S, S] ground truth; labels: optional int[N].

  Returns:
    dict with class_map_min_max, final_map, final_map_256,
    final_map_256_smoothed, image_scores and, given gt/labels,
    pixel_auroc / image_auroc.
  """
  maps = (raw["map_patch"], raw["map_global"], raw["map_component"])
  min_max = class_min_max(maps)
  n = coefficients.shape[0]
  final = fuse(jnp.stack(maps, axis=1), coefficients,  # one class: shared
               jnp.broadcast_to(min_max, (n,) + min_max.shape))
  resized, smoothed, scores = score_maps(final)
  out = {"class_map_min_max": min_max, "final_map": final,
         "final_map_256": resized, "final_map_256_smoothed": smoothed,
         "image_scores": scores}
  if gt is not None:
    from sklearn.metrics import roc_auc_score  # pylint: disable=g-import-not-at-top
    gt256 = np.asarray(resize_gt(jnp.asarray(gt, jnp.float32)))
    out["gt_256"] = gt256
    out["pixel_auroc"] = roc_auc_score(
        gt256.reshape(-1) > 0.5, np.asarray(smoothed).reshape(-1))
  if labels is not None:
    from sklearn.metrics import roc_auc_score  # pylint: disable=g-import-not-at-top
    out["image_auroc"] = roc_auc_score(np.asarray(labels),
                                       np.asarray(scores))
  return out


# ---- prediction from a trained parameter tree -------------------------------
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
  raw = raw_maps(out, weights, module.config.image_size)
  return raw, fusion_coefficients(weights)


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
  """sum_level coef * (map - lo) / (hi - lo + eps): maps [B, 3, S, S],
  coefficients [B, 3], min_max [B, 3, 2] (per image, or a class's broadcast)
  -> [B, S, S]."""
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
  _, smoothed, scores = score_maps(final)
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
