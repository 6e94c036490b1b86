"""The training side (`methods.base.Method`) of the contrast example."""

import jax
import jax.numpy as jnp
import optax

from tests.example_method import model as model_lib

NAME = "contrast"


def forward(params, pixels):
  """f32[B, S, S, 3] -> (map f32[B, S, S] in [0, 1], score f32[B])."""
  logits = model_lib.ContrastHead().apply({"params": params}, pixels)
  amap = jax.nn.sigmoid(logits)
  return amap, amap.reshape(amap.shape[0], -1).max(axis=-1)


class ContrastMethod:
  """Trains the head's 6 weights + bias on the defect masks (balanced
  pixel BCE)."""

  name = NAME
  trainable_patterns = (r"^score/.*",)
  frozen_patterns = ()
  domain = "industrial"

  def __init__(self, config):
    self.config = config
    self.image_size = int(config.model.image_size)
    self.preprocess = {"preset": "moeclip", "size": self.image_size}

  def init_fn(self, rng):
    s = self.image_size
    return model_lib.ContrastHead().init(rng, jnp.zeros((1, s, s, 3)))["params"]

  def load_pretrained(self, params):
    return params  # no backbone

  def make_context(self, params, class_names):
    del params, class_names
    return {}

  def loss_fn(self, params, batch, context, rng):
    del context, rng
    logits = model_lib.ContrastHead().apply({"params": params}, batch["image"])
    mask = batch["mask"]  # [B, S, S]; defects are ~3 % of the pixels
    bce = optax.sigmoid_binary_cross_entropy(logits, mask)
    pos = (bce * mask).sum() / jnp.maximum(mask.sum(), 1.0)
    neg = (bce * (1 - mask)).sum() / jnp.maximum((1 - mask).sum(), 1.0)
    loss = pos + neg  # class-balanced pixel BCE
    return loss, {"pixel_bce": loss}

  def predict_fn(self, params, batch, context):
    del context
    amap, score = forward(params, batch["image"])
    return {"anomaly_map": amap, "image_score": score}

  def checkpoint_config(self) -> dict:
    return {"method": NAME, "image_size": self.image_size}
