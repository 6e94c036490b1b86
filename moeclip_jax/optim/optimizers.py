"""Optimizers: `optax.multi_transform` with `set_to_zero` for frozen leaves.

Frozen (and state) leaves get a stateless transform, so they carry no Adam moments, and
since their (zeroed) gradients are never read, XLA removes their weight
gradients from the jitted step.
"""

from __future__ import annotations

from typing import Any

import optax

from moeclip_jax.optim import masks


def make_schedule(cfg: Any) -> optax.Schedule:
  """Learning-rate schedule from `cfg` (an optim ConfigDict).

  `schedule`: "constant"; "multistep" (torch MultiStepLR stepped per
  iteration: lr * gamma^k after each of `milestones`); "cosine" (linear
  warm-up over `warmup_steps`, cosine decay to `end_lr` at `decay_steps`).
  """
  kind = cfg.get("schedule", "constant")
  if kind == "constant":
    return optax.constant_schedule(cfg.lr)
  if kind == "multistep":
    return optax.piecewise_constant_schedule(
        cfg.lr, {int(m): cfg.gamma for m in cfg.milestones})
  if kind == "cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, cfg.lr, cfg.warmup_steps, cfg.decay_steps, cfg.get("end_lr", 0.0))
  raise ValueError(f"unknown schedule {kind!r} (constant|multistep|cosine)")


def _base(cfg: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
  name = cfg.get("name", "adam")
  if name == "adam":
    return optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.get("eps", 1e-8))
  if name == "adamw":
    # torch AdamW default weight decay is 0.01 (optax's default is 1e-4).
    return optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.get("eps", 1e-8),
                       weight_decay=cfg.get("weight_decay", 0.01))
  raise ValueError(f"unknown optimizer {name!r} (adam|adamw)")


def make_tx(cfg: Any, param_labels) -> optax.GradientTransformation:
  """The full optimizer over the whole params tree."""
  chain = []
  if cfg.get("grad_clip_norm", 0.0):
    chain.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  chain.append(_base(cfg, make_schedule(cfg)))
  return optax.multi_transform(
      {masks.TRAINABLE: optax.chain(*chain), masks.FROZEN: optax.set_to_zero(),
       masks.STATE: optax.set_to_zero()}, param_labels)
