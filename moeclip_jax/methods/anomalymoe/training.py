"""AnomalyMoE optimisation: StableAdamW-equivalent optax chain, the
warm-up + cosine schedule and the CLUB estimator's optimizer (the step
itself is the generic trainer's, see method.py `make_tx`/`loss_fn`).

StableAdamW (official `optimizers/StableAdamW.py`), per tensor:
  p <- p * (1 - lr * wd)                        (decoupled decay, plain lr)
  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;  vmax <- max(vmax, v)
  denom = sqrt(vmax) / sqrt(1 - b2^t) + eps
  s = max(1, RMS(g / denom) / clip_threshold)   (per-tensor update clipping)
  p <- p - lr / (1 - b1^t) / s * m / denom
preceded by a global-norm gradient clip at 0.1 over the trainable params.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


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
