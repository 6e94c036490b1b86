"""The pure train step: `train_step(state, batch, context, rng)`.

A method supplies `loss_fn(params, batch, context, rng) -> (loss, metrics)`;
the step differentiates it, applies the optimizer and returns scalar metrics
(loss, every named aux value, gradient and update norms over trainable
leaves). Jitted once by the loop with shardings and `donate_argnums=(0,)`.

A method with state leaves (masks.STATE, e.g. BatchNorm running statistics)
returns their new values as `metrics[UPDATED_STATE]`, a partial params tree
(nested dicts) that the step puts into the params after the update.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from moeclip_jax.optim import masks
from moeclip_jax.train import state as state_lib

UPDATED_STATE = "updated_state"
LossFn = Callable[[Any, dict, Any, jax.Array], tuple[jax.Array, dict]]


def _trainable_norm(tree, param_labels) -> jax.Array:
  leaves = [x for x, l in zip(jax.tree.leaves(tree), jax.tree.leaves(param_labels))
            if l == masks.TRAINABLE]
  return optax.tree.norm(leaves)


def train_step(state: state_lib.TrainState, batch: dict, context: Any,
               rng: jax.Array, *, loss_fn: LossFn,
               tx: optax.GradientTransformation, param_labels
               ) -> tuple[state_lib.TrainState, dict]:
  """One optimizer step. Pure; `rng` is folded with the step inside."""
  rng = jax.random.fold_in(rng, state.step)
  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, batch, context, rng)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  updated = metrics.pop(UPDATED_STATE, None)
  if updated is not None:
    params = state_lib.overlay(params, updated)
  scalars = {k: v for k, v in metrics.items() if jnp.ndim(v) == 0}
  scalars.update(
      loss=loss,
      grad_norm=_trainable_norm(grads, param_labels),
      update_norm=_trainable_norm(updates, param_labels),
  )
  new_state = state.replace(step=state.step + 1, params=params,
                            opt_state=opt_state)
  return new_state, scalars
