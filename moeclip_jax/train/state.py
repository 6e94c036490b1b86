"""Train state and the split into what a checkpoint holds.

`TrainState.params` is the whole tree (frozen backbone included) so the step
is one pure function; a checkpoint holds only the trainable and state leaves
(masks.STATE: e.g. BatchNorm running statistics), the optimizer state (which
has no moments for frozen leaves) and the step.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax

from moeclip_jax.optim import masks


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def split_trainable(params, param_labels):
  """(trainable + state subtree, frozen subtree); absent leaves are None."""
  train = jax.tree.map(lambda p, l: None if l == masks.FROZEN else p,
                       params, param_labels)
  frozen = jax.tree.map(lambda p, l: p if l == masks.FROZEN else None,
                        params, param_labels)
  return train, frozen


def merge_trainable(trainable, frozen):
  """Inverse of `split_trainable`."""
  return jax.tree.map(lambda t, f: f if t is None else t, trainable, frozen,
                      is_leaf=lambda x: x is None)


def checkpoint_item(state: TrainState, param_labels) -> dict:
  """What a training checkpoint holds (never the frozen backbone)."""
  trainable, _ = split_trainable(state.params, param_labels)
  return {"step": state.step, "trainable": _drop_none(trainable),
          "opt_state": state.opt_state}


def _drop_none(tree):
  if isinstance(tree, dict):
    out = {k: _drop_none(v) for k, v in tree.items() if v is not None}
    return {k: v for k, v in out.items() if not (isinstance(v, dict) and not v)}
  return tree


def restore_from_item(state: TrainState, item: dict) -> TrainState:
  """`state` with step, trainable leaves and opt_state from a checkpoint."""
  params = overlay(state.params, item["trainable"])
  return state.replace(step=item["step"], params=params,
                       opt_state=item["opt_state"])


def overlay(base, top):
  """`base` with the leaves of the partial tree `top` (nested dicts) put in."""
  if isinstance(top, dict):
    return {k: overlay(base[k], top[k]) if k in top else base[k] for k in base}
  return top
