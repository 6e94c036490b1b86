"""State leaves (masks.STATE): untouched by the optimizer, replaced by the
values the loss returns, kept in checkpoints; frozen leaves are neither."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from moeclip_jax.optim import masks
from moeclip_jax.optim import optimizers
from moeclip_jax.train import state as state_lib
from moeclip_jax.train import step as step_lib

TRAINABLE = (r"head/.*",)
FROZEN = (r"backbone/.*",)
STATE = (r"stats/.*",)


def _params():
  return {"backbone": {"w": jnp.full((3, 3), 0.5)},
          "head": {"w": jnp.ones((3,))},
          "stats": {"mean": jnp.zeros((3,))}}


def _loss(params, batch, context, rng):
  del context, rng
  feats = batch["x"] @ params["backbone"]["w"]  # [B, 3]
  pred = feats @ params["head"]["w"]  # [B]
  loss = jnp.mean((pred - batch["y"]) ** 2)
  new_mean = 0.9 * params["stats"]["mean"] + 0.1 * jnp.mean(feats, 0)
  return loss, {"updated_state": {"stats": {"mean": new_mean}}}


def _setup():
  params = _params()
  labels = masks.labels(params, TRAINABLE, FROZEN, STATE)
  cfg = ml_collections.ConfigDict({"name": "adam", "lr": 0.1, "b1": 0.9,
                                   "b2": 0.999})
  tx = optimizers.make_tx(cfg, labels)
  state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                               opt_state=tx.init(params))
  return state, labels, tx


def test_labels_three_way_and_overlap_error():
  labels = masks.labels(_params(), TRAINABLE, FROZEN, STATE)
  assert labels == {"backbone": {"w": "frozen"}, "head": {"w": "trainable"},
                    "stats": {"mean": "state"}}
  with pytest.raises(ValueError, match="stats/mean matches frozen"):
    masks.labels(_params(), TRAINABLE, FROZEN + (r"stats/.*",), STATE)
  with pytest.raises(ValueError, match="no trainable, frozen or state"):
    masks.labels(_params(), TRAINABLE, FROZEN)


def test_step_overlays_state_and_skips_frozen():
  state, labels, tx = _setup()
  rng = np.random.default_rng(0)
  batch = {"x": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
           "y": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}
  new, scalars = step_lib.train_step(state, batch, None, jax.random.key(0),
                                     loss_fn=_loss, tx=tx, param_labels=labels)
  feats = batch["x"] @ state.params["backbone"]["w"]
  np.testing.assert_allclose(new.params["stats"]["mean"],
                             0.1 * np.mean(feats, 0), rtol=1e-6)
  np.testing.assert_array_equal(new.params["backbone"]["w"],
                                state.params["backbone"]["w"])
  assert not np.allclose(new.params["head"]["w"], 1.0)
  assert set(scalars) == {"loss", "grad_norm", "update_norm"}
  item = state_lib.checkpoint_item(new, labels)
  assert set(item["trainable"]) == {"head", "stats"}  # never the backbone
  back = state_lib.restore_from_item(state, item)
  np.testing.assert_array_equal(back.params["stats"]["mean"],
                                new.params["stats"]["mean"])
