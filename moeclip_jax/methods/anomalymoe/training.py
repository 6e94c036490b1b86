"""AnomalyMoE optimisation: StableAdamW-equivalent optax chain, the
warm-up + cosine schedule, and a pure train step (main step + CLUB
estimator step).

StableAdamW (official `optimizers/StableAdamW.py`), per tensor:
  p <- p * (1 - lr * wd)                        (decoupled decay, plain lr)
  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;  vmax <- max(vmax, v)
  denom = sqrt(vmax) / sqrt(1 - b2^t) + eps
  s = max(1, RMS(g / denom) / clip_threshold)   (per-tensor update clipping)
  p <- p - lr / (1 - b1^t) / s * m / denom
preceded by a global-norm gradient clip at 0.1 over the trainable params.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from moeclip_jax.methods.anomalymoe import losses
from moeclip_jax.methods.anomalymoe import model as model_lib


def warm_cosine_schedule(base: float, final: float, total_iters: int,
                         warmup_iters: int = 0):
  """`utils.WarmCosineScheduler` as an optax schedule of the step count."""
  warm = np.linspace(0.0, base, warmup_iters)
  iters = np.arange(total_iters - warmup_iters)
  cos = final + 0.5 * (base - final) * (
      1 + np.cos(np.pi * iters / max(len(iters), 1)))
  table = jnp.asarray(np.concatenate([warm, cos]), jnp.float32)

  def schedule(count):
    idx = jnp.minimum(count, total_iters - 1)
    return jnp.where(count >= total_iters, final, table[idx])

  return schedule


class StableAdamWState(NamedTuple):
  count: jax.Array
  mu: Any
  nu: Any
  nu_max: Any


def stable_adamw(learning_rate, b1: float = 0.9, b2: float = 0.999,
                 eps: float = 1e-10, weight_decay: float = 1e-4,
                 amsgrad: bool = True, clip_threshold: float = 1.0):
  """StableAdamW as an `optax.GradientTransformation` (needs params)."""
  sched = learning_rate if callable(learning_rate) else (
      lambda _: learning_rate)

  def init(params):
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)
    return StableAdamWState(jnp.zeros([], jnp.int32), zeros(), zeros(),
                            zeros())

  def update(grads, state, params):
    count = state.count + 1
    lr = sched(state.count)
    bc1 = 1 - b1**count.astype(jnp.float32)
    bc2 = 1 - b2**count.astype(jnp.float32)
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, grads)
    nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu) if amsgrad else nu

    def one(p, g, m, v):
      denom = jnp.sqrt(v) / jnp.sqrt(bc2) + eps
      rms = jnp.sqrt(jnp.mean((g / denom) ** 2))
      scale = jnp.maximum(1.0, rms / clip_threshold)
      return -lr * weight_decay * p - (lr / bc1 / scale) * m / denom

    updates = jax.tree.map(one, params, grads, mu, nu_max)
    return updates, StableAdamWState(count, mu, nu, nu_max)

  return optax.GradientTransformation(init, update)


def make_optimizer(lr: float = 5e-4, total_iters: int = 100_000,
                   warmup_iters: int = 100, grad_clip: float = 0.1):
  """Main optimiser: global-norm clip 0.1, then StableAdamW + schedule."""
  schedule = warm_cosine_schedule(lr, lr * 0.01, total_iters, warmup_iters)
  return optax.chain(optax.clip_by_global_norm(grad_clip),
                     stable_adamw(schedule))


def make_estimator_optimizer(lr: float = 5e-4, weight_decay: float = 1e-4,
                             grad_clip: float = 0.1):
  """torch Adam(weight_decay=L2) with a 0.1 global-norm clip."""
  return optax.chain(optax.clip_by_global_norm(grad_clip),
                     optax.add_decayed_weights(weight_decay),
                     optax.scale_by_adam(eps=1e-8),
                     optax.scale(-lr))


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any  # trainable: experts + gate
  frozen: Any  # the backbone ("encoder")
  opt_state: Any
  est_params: Any
  est_opt_state: Any


def init_state(config: model_lib.AnomalyMoEConfig, rng, tx, est_tx,
               encoder_params=None):
  """Fresh trainable params (+ given or random backbone) and optimisers."""
  s = config.image_size
  k1, k2 = jax.random.split(rng)
  init = jax.jit(lambda key: model_lib.AnomalyMoE(config).init(
      key, jnp.zeros((1, s, s, 3)), jnp.zeros((1, s, s, 3)),
      jnp.zeros((1, 1, s, s))))
  params = dict(nn.unbox(init(k1)["params"]))
  frozen = params.pop("encoder")
  if encoder_params is not None:
    frozen = encoder_params
  dim = config.dims.width
  est = nn.unbox(jax.jit(lambda key: losses.MIEstimator(dim).init(
      key, jnp.zeros((2, 2, dim)), jnp.zeros((2, 2, dim)),
      np.array([[0, 1], [0, 1]]), np.array([[1, 0], [1, 0]])))(k2))["params"]
  return TrainState(jnp.zeros([], jnp.int32), params, frozen,
                    tx.init(params), est, est_tx.init(est))


def _forward(module, params, frozen, batch, rng, deterministic):
  return module.apply(
      {"params": {**params, "encoder": frozen}}, batch["images"],
      batch["images_ae"], batch["component_masks"],
      batch["component_valid"], train=True, deterministic=deterministic,
      with_ae_target=True, rngs={"dropout": rng})


def train_step(state: TrainState, batch, rng, *, config, loss_cfg, tx,
               est_tx, deterministic: bool = False):
  """One official iteration: main update, then the CLUB estimator update.

  Args:
    state: `TrainState`.
    batch: dict images, images_ae [B, S, S, 3], component_masks
      [B, K, S, S], component_valid [B, K].
    rng: PRNG key (folded with the step).
    config, loss_cfg, tx, est_tx: static (bind with functools.partial).
    deterministic: disable dropout (tests).

  Returns:
    (new state, metrics dict).
  """
  module = model_lib.AnomalyMoE(config)
  rng = jax.random.fold_in(rng, state.step)
  r_drop, r_eir, r_drop2, r_eir2 = jax.random.split(rng, 4)
  batch_size = batch["images"].shape[0]
  pairs, perms = losses.sample_eir_draws(
      r_eir, config.num_patch_experts, config.num_global_experts, batch_size)

  def loss_fn(params):
    out = _forward(module, params, state.frozen, batch, r_drop, deterministic)
    weights = model_lib.split_groups(config, out["routing_weights"])
    return losses.total_loss(out, weights, state.est_params, pairs, perms,
                             loss_cfg)

  (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  # Estimator step on a fresh no-gradient forward with the updated model.
  out = _forward(module, params, state.frozen, batch, r_drop2, deterministic)
  _, terms2 = jax.lax.stop_gradient(losses.total_loss(
      out, model_lib.split_groups(config, out["routing_weights"]),
      state.est_params, pairs, perms, loss_cfg))
  est_pairs, _ = losses.sample_eir_draws(
      r_eir2, config.num_patch_experts, config.num_global_experts, batch_size)

  def est_loss_fn(est):
    return losses.MIEstimator(config.dims.width).apply(
        {"params": est}, terms2["patch_features"], terms2["global_features"],
        est_pairs, method=losses.MIEstimator.learning_loss)

  est_loss, est_grads = jax.value_and_grad(est_loss_fn)(state.est_params)
  est_updates, est_opt = est_tx.update(est_grads, state.est_opt_state,
                                       state.est_params)
  new_state = state.replace(
      step=state.step + 1, params=params, opt_state=opt_state,
      est_params=optax.apply_updates(state.est_params, est_updates),
      est_opt_state=est_opt)
  metrics = {k: terms[k] for k in ("loss_total", "loss_patch", "loss_global",
                                   "loss_component", "loss_esb", "loss_eir")}
  metrics["loss_estimator"] = est_loss
  metrics["grad_norm"] = optax.global_norm(grads)
  return new_state, metrics


def make_train_step(config, loss_cfg=losses.LossConfig(), tx=None,
                    est_tx=None, deterministic=False):
  """Returns (jitted step, tx, est_tx) with the static parts bound."""
  tx = tx or make_optimizer()
  est_tx = est_tx or make_estimator_optimizer()
  step = functools.partial(train_step, config=config, loss_cfg=loss_cfg,
                           tx=tx, est_tx=est_tx, deterministic=deterministic)
  return jax.jit(step, donate_argnums=(0,)), tx, est_tx
