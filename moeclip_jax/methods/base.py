"""The seam between one generic trainer and each method.

A method object exposes (names the trainer relies on):

  name                     "moeclip", "inctrl", ...
  preprocess               data preprocessing preset/mapping for the pipeline
  image_size               model input side
  trainable_patterns       regexes (optim/masks.py) of trainable leaves
  frozen_patterns          regexes of frozen leaves (coverage check)
  init_fn(rng)             boxed params (logical axes) for sharded init
  load_pretrained(params)  params with the converted backbone merged in
  make_context(params, class_names) -> arrays the steps need (text caches)
  loss_fn(params, batch, context, rng) -> (loss, named metrics)
  predict_fn(params, batch, context) -> {"anomaly_map" [B,H,W], "image_score" [B]}
  checkpoint_config()      JSON-able dict written to config.json on export

Optional (the trainer uses a default when absent):

  state_patterns           regexes of state leaves (masks.STATE: not trained,
                           checkpointed; loss_fn returns their new values as
                           metrics["updated_state"], a partial params tree)
  make_tx(param_labels)    the optimizer (default: optimizers.make_tx over
                           config.optim)
  batch_keys               batch fields the step receives (default
                           loop.STEP_KEYS: image, mask, label, class_id)
  make_train_data(config, batch_multiple)
                           the training data object (default train.data.
                           TrainData): next(), state(), restore(s),
                           class_names, holdout, holdout_loader(),
                           eval_batch_size
  domain                   "industrial" | "medical" (metrics protocol)

Methods never import the trainer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol


class Method(Protocol):
  name: str
  preprocess: Any
  image_size: int
  trainable_patterns: tuple[str, ...]
  frozen_patterns: tuple[str, ...]

  def init_fn(self, rng): ...
  def load_pretrained(self, params): ...
  def make_context(self, params, class_names): ...
  def loss_fn(self, params, batch, context, rng): ...
  def predict_fn(self, params, batch, context): ...
  def checkpoint_config(self) -> dict: ...


def dataclass_from_config(cls, cfg: Any):
  """A frozen dataclass from a ConfigDict/mapping; unknown keys fail loudly."""
  raw = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(raw) - known)
  if unknown:
    raise ValueError(f"{cls.__name__}: unknown config keys {unknown}")
  for key, value in raw.items():
    if isinstance(value, list):
      raw[key] = tuple(value)
  return cls(**raw)
