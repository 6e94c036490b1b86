"""AnomalyMoE training losses (official `train.py` / `utils.py`).

  total = L_patch + L_global + L_component + lambda_eir * EIR
          + lambda_esb * ESB

Shapes: E experts of a group, G fusion groups, B batch, g grid, D width,
K component slots.

* Patch loss with hard mining: per (expert, group), the threshold is the
  k-th largest point distance 1 - cos over the whole batch tensor,
  k = int(B * g * g * (1 - p_hm)) (at least 1). Positions with a distance
  below it get their gradient scaled by `factor_hm`; the forward value is
  the plain mean. As in the official code (a Python closure over the loop
  variable), every group's gradient uses the last group's mask. Written as
  de' = where(hard, de, f*de + (1-f)*sg(de)) on the fused decoder map,
  applied before both the loss and the EIR feature (the official hook sits
  on that tensor too).
* ESB = E_total * sum_j P_j^2 (full softmax) + sum_j relu(C_j - cap)^2
  (zero gradient) + mean(logits^2).
* EIR: CLUB upper bound between two random patch experts' and two random
  global experts' pooled features (LayerNorm'd by the estimator); the pairs
  and negative permutations are inputs.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from moeclip_jax.convert import common
from moeclip_jax.methods.anomalymoe import ops


@dataclasses.dataclass(frozen=True)
class LossConfig:
  p_hm: float = 0.9
  factor_hm: float = 0.1
  capacity_factor: float = 4.0
  lambda_esb: float = 0.01
  lambda_eir: float = 1e-4
  patch_scale: float = 1.0
  global_scale: float = 0.1
  component_scale: float = 0.1
  # Official late-binding quirk: every group's hard-mining hook uses the
  # last group's mask (see `patch_loss`). False = each group its own mask.
  hm_last_group_mask: bool = True


def hard_mining_k(num_points: int, p_hm: float) -> int:
  """k = int(n * (1 - p)) in float64 (0.9 -> 0.09999999999999998), >= 1."""
  return max(int(num_points * (1 - p_hm)), 1)


def hard_mask(de_map, en_map, p_hm: float):
  """Hard positions of one fused decoder map.

  Args:
    de_map: float[B, g, g, D] decoder map.
    en_map: float[B, g, g, D] encoder map (constant).
    p_hm: quantile; the top (1 - p_hm) distances are "hard".

  Returns:
    (distances float[B, g, g], threshold [], hard bool[B, g, g]); the
    threshold is the k-th largest distance over the whole batch tensor.
  """
  dist = 1.0 - ops.cosine_similarity(en_map, jax.lax.stop_gradient(de_map))
  k = hard_mining_k(dist.size, p_hm)
  thresh = jax.lax.top_k(dist.reshape(-1), k)[0][-1]
  return dist, thresh, dist >= thresh


def scale_easy_gradient(de_map, hard, factor: float):
  """Identity forward; gradient x `factor` where `hard` is False."""
  scaled = factor * de_map + (1.0 - factor) * jax.lax.stop_gradient(de_map)
  return jnp.where(hard[..., None], de_map, scaled)


def hard_mine(de_map, en_map, p_hm: float, factor: float):
  """`hard_mask` then `scale_easy_gradient` on one map.

  Returns:
    (de_map with scaled gradient, distances, threshold, hard).
  """
  dist, thresh, hard = hard_mask(de_map, en_map, p_hm)
  return scale_easy_gradient(de_map, hard, factor), dist, thresh, hard


def patch_loss(en_maps, de_maps, weights, cfg: LossConfig):
  """Patch-expert loss with hard mining.

  Official quirk (kept when `cfg.hm_last_group_mask`): the gradient hook of
  every fusion group closes over the loop variable `grad_mask`, so at
  backward time all groups' hooks use the **last** group's mask. The
  thresholds and counts reported per group are still each group's own.

  Args:
    en_maps: float[G, B, g, g, D] (constant).
    de_maps: float[E, G, B, g, g, D].
    weights: float[B, E] patch routing weights.
    cfg: loss settings.

  Returns:
    (loss [], aux) with aux["per_sample"] float[E, B],
    aux["de_maps_hm"] float[E, G, B, g, g, D], aux["threshold"] [E, G],
    aux["num_hard"] int[E, G], aux["distances"] [E, G, B, g, g].
  """
  num_e, num_g = de_maps.shape[:2]
  masks = [[hard_mask(de_maps[e, g], en_maps[g], cfg.p_hm)
            for g in range(num_g)] for e in range(num_e)]
  de_hm = []
  for e in range(num_e):
    rows = []
    for g in range(num_g):
      hard = masks[e][-1 if cfg.hm_last_group_mask else g][2]
      rows.append(scale_easy_gradient(de_maps[e, g], hard, cfg.factor_hm))
    de_hm.append(jnp.stack(rows))
  de_hm = jnp.stack(de_hm)  # [E, G, B, g, g, D]
  per_sample = jnp.mean(
      1.0 - ops.cosine_similarity(en_maps[None], de_hm), axis=(-2, -1))
  per_sample = jnp.mean(per_sample, axis=1)  # [E, B]
  loss = jnp.sum(jnp.mean(weights.T * per_sample * cfg.patch_scale, axis=1))

  def pick(i):
    return jnp.stack([jnp.stack([m[i] for m in row]) for row in masks])

  aux = {
      "per_sample": per_sample, "de_maps_hm": de_hm, "distances": pick(0),
      "threshold": pick(1),
      "num_hard": jnp.sum(pick(2), axis=(-3, -2, -1)),  # [E, G]
  }
  return loss, aux


def global_loss(ae_out, student_out, ae_target, weights, cfg: LossConfig):
  """sum_i mean_b(scale * w_bi * (MSE(student, ae) + MSE(ae, target))).

  Args:
    ae_out, student_out: float[E, B, g, g, D]; the AE is not detached.
    ae_target: float[B, g, g, D] (constant).
    weights: float[B, E].
    cfg: loss settings.
  """
  stae = jnp.mean((student_out - ae_out) ** 2, axis=(-3, -2, -1))  # [E, B]
  ae = jnp.mean((ae_out - ae_target[None]) ** 2, axis=(-3, -2, -1))
  loss = jnp.sum(jnp.mean(weights.T * (stae + ae) * cfg.global_scale, axis=1))
  return loss, {"stae": stae, "ae": ae}


def component_loss(feats, recon, valid, weights, cfg: LossConfig):
  """sum_i mean over real components of scale * w_{owner,i} * (1 - cos).

  Args:
    feats: float[B, K, D] component features (constant).
    recon: float[E, B, K, D] reconstructions.
    valid: bool[B, K] real component slots.
    weights: float[B, E].
    cfg: loss settings.
  """
  per_comp = 1.0 - ops.cosine_similarity(recon, feats[None])  # [E, B, K]
  count = jnp.sum(valid)
  weighted = weights.T[:, :, None] * per_comp * cfg.component_scale
  weighted = jnp.where(valid[None], weighted, 0.0)
  loss = jnp.sum(weighted) / jnp.maximum(count, 1)
  return jnp.where(count > 0, loss, 0.0), {"per_comp": per_comp}


def esb_loss(logits, expert_mask, capacity_factor: float):
  """Expert Selection Balancing: [importance, load, z] and their sum."""
  num_experts = logits.shape[-1]
  batch = logits.shape[0]
  probs = jnp.mean(jax.nn.softmax(logits, axis=-1), axis=0)  # [E_total]
  importance = num_experts * jnp.sum(probs**2)
  cap = capacity_factor * batch / num_experts
  counts = jnp.sum(jax.lax.stop_gradient(expert_mask), axis=0)
  load = jnp.sum(jax.nn.relu(counts - cap) ** 2)
  z = jnp.mean(logits**2)
  terms = jnp.stack([importance, load, z])
  return jnp.sum(terms), terms


class CLUBSample(nn.Module):
  """mu / logvar MLPs D -> D/2 -> D (tanh on logvar)."""

  dim: int

  def setup(self):
    self.p_mu_0 = nn.Dense(self.dim // 2)
    self.p_mu_2 = nn.Dense(self.dim)
    self.p_logvar_0 = nn.Dense(self.dim // 2)
    self.p_logvar_2 = nn.Dense(self.dim)

  def __call__(self, x):
    mu = self.p_mu_2(nn.relu(self.p_mu_0(x)))
    logvar = jnp.tanh(self.p_logvar_2(nn.relu(self.p_logvar_0(x))))
    return mu, logvar


def club_bound(mu, logvar, y, perm):
  """mean_b [sum_d -(mu-y)^2/e^lv - sum_d -(mu-y[perm])^2/e^lv] / 2."""
  inv_var = jnp.exp(-logvar)
  pos = -jnp.sum((mu - y) ** 2 * inv_var, axis=-1)
  neg = -jnp.sum((mu - y[perm]) ** 2 * inv_var, axis=-1)
  return jnp.mean(pos - neg) / 2.0


def club_learning_loss(mu, logvar, y):
  """-mean_b sum_d -(mu - y)^2 / (2 e^logvar) (no -logvar term)."""
  return -jnp.mean(jnp.sum(-((mu - y) ** 2) / 2.0 * jnp.exp(-logvar), -1))


class MIEstimator(nn.Module):
  """Shared LayerNorm (eps 1e-5) + a CLUB per expert level."""

  dim: int = 768

  def setup(self):
    self.normalizer = nn.LayerNorm(epsilon=1e-5)
    self.patch_estimator = CLUBSample(self.dim)
    self.global_estimator = CLUBSample(self.dim)

  def _pairs(self, patch_feats, global_feats, pairs):
    p1, p2 = (self.normalizer(patch_feats[i]) for i in pairs[0])
    g1, g2 = (self.normalizer(global_feats[i]) for i in pairs[1])
    return (p1, p2), (g1, g2)

  def __call__(self, patch_feats, global_feats, pairs, perms):
    """EIR bounds. feats: float[E, B, D]; pairs, perms: int[2, 2] / [2, B].

    Returns:
      float[2]: [patch bound, global bound]; EIR is their mean.
    """
    (p1, p2), (g1, g2) = self._pairs(patch_feats, global_feats, pairs)
    bp = club_bound(*self.patch_estimator(p1), p2, perms[0])
    bg = club_bound(*self.global_estimator(g1), g2, perms[1])
    return jnp.stack([bp, bg])

  def learning_loss(self, patch_feats, global_feats, pairs):
    (p1, p2), (g1, g2) = self._pairs(patch_feats, global_feats, pairs)
    lp = club_learning_loss(*self.patch_estimator(p1), p2)
    lg = club_learning_loss(*self.global_estimator(g1), g2)
    return (lp + lg) / 2.0


def estimator_shapes(dim: int) -> dict:
  """'/'-joined MIEstimator param path -> shape."""

  shapes = jax.eval_shape(
      MIEstimator(dim).init, jax.random.key(0), jnp.zeros((2, 2, dim)),
      jnp.zeros((2, 2, dim)), np.array([[0, 1], [0, 1]]),
      np.array([[1, 0], [1, 0]]))
  return {k: tuple(v.shape)
          for k, v in common.flatten(shapes["params"]).items()}


def sample_eir_draws(rng, num_patch: int, num_global: int, batch: int):
  """Random (pairs int[2, 2], perms int[2, B]) like random.sample/randperm."""
  k1, k2, k3, k4 = jax.random.split(rng, 4)
  pp = jax.random.permutation(k1, num_patch)[:2]
  gp = jax.random.permutation(k2, num_global)[:2]
  perms = jnp.stack([jax.random.permutation(k3, batch),
                     jax.random.permutation(k4, batch)])
  return jnp.stack([pp, gp]), perms


def total_loss(out, weights_split, est_params, pairs, perms,
               cfg: LossConfig):
  """All terms of the official objective.

  Args:
    out: `AnomalyMoE(..., train=True, with_ae_target=True)` outputs.
    weights_split: (patch [B, Ep], global [B, Eg], component [B, Ec]).
    est_params: MIEstimator params (constants here).
    pairs, perms: EIR draws (see `sample_eir_draws`).
    cfg: loss settings.

  Returns:
    (total [], dict of every term and per-sample value).
  """
  wp, wg, wc = weights_split
  lp, paux = patch_loss(out["en_maps"], out["de_maps"], wp, cfg)
  lg, gaux = global_loss(out["ae_out"], out["student_out"], out["ae_target"],
                         wg, cfg)
  lc, caux = component_loss(out["component_features"],
                            out["component_recon"], out["component_valid"],
                            wc, cfg)
  patch_feats = jnp.mean(paux["de_maps_hm"][:, -1], axis=(-3, -2))  # [E,B,D]
  global_feats = jnp.mean(out["student_out"], axis=(-3, -2))  # [E, B, D]
  dim = patch_feats.shape[-1]
  bounds = MIEstimator(dim).apply(
      {"params": est_params}, patch_feats, global_feats, pairs, perms)
  eir = jnp.mean(bounds)
  esb, esb_terms = esb_loss(out["gate_logits"], out["expert_mask"],
                            cfg.capacity_factor)
  recon = lp + lg + lc
  total = recon + cfg.lambda_eir * eir + cfg.lambda_esb * esb
  terms = {
      "loss_patch": lp, "loss_global": lg, "loss_component": lc,
      "loss_recon": recon, "loss_eir": eir, "loss_eir_club": bounds,
      "loss_esb": esb, "loss_esb_terms": esb_terms, "loss_total": total,
      "patch_per_sample": paux["per_sample"], "hm_threshold":
      paux["threshold"], "hm_num_hard": paux["num_hard"],
      "global_stae": gaux["stae"], "global_ae": gaux["ae"],
      "component_per_comp": caux["per_comp"],
      "patch_features": patch_feats, "global_features": global_feats,
  }
  return total, terms
