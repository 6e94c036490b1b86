"""AnomalyMoE test-time maps and scores (official `test.py`).

Per image: three raw maps at S px (patch, global, component), each a
routing-weighted sum over its expert group. Per class: min-max of each map
level over all pixels of all images (eps 1e-11), fused with the per-image
**max** routing weight inside each group, resized to 256 (bilinear, no
antialias), blurred (5x5, sigma 4, zero padding); image score = mean of the
top 1 % pixels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from moeclip_jax.methods.anomalymoe import ops


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


def fuse(maps, coefficients, min_max, eps: float = 1e-11):
  """sum_level coef * (map - min) / (max - min + eps): [N, S, S]."""
  final = 0.0
  for level, m in enumerate(maps):
    lo, hi = min_max[level, 0], min_max[level, 1]
    final = final + coefficients[:, level, None, None] * (m - lo) / (
        hi - lo + eps)
  return final


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
  final = fuse(maps, coefficients, min_max)
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
