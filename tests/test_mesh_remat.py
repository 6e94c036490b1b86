"""Every `CLIPConfig.remat` policy: same parameter tree, outputs and
gradients as without remat (only the backward pass's memory/compute trade
changes), on a tiny CLIP loss and on the tiny MoECLIP train loss (the
trainer's `loss_fn`, dropout and MoE routing included); and the
rematerialisation really is in the gradient's jaxpr."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train_fixtures as tf
from moeclip_jax.methods import registry
from moeclip_jax.models import clip
from moeclip_jax.models import clip_config

POLICIES = [p for p in clip_config.REMAT if p != "none"]


def _loss(config, params, pixels, ids):
  img, txt = clip.CLIP(config).apply({"params": params}, pixels, ids)
  return jnp.sum(img["pooled"] ** 2) + jnp.sum(txt["pooled"] ** 2)


def _assert_same(got, want):
  (loss, grads), (loss_want, grads_want) = got, want
  np.testing.assert_allclose(loss, loss_want, rtol=1e-6)
  assert jax.tree.structure(grads) == jax.tree.structure(grads_want)
  # 1e-5 of each leaf's own scale (leaves span 1e-3 .. 1e5 and the
  # recomputed forward may sum in another order); 1e-6 absolute for leaves
  # whose exact gradient is 0 (attention key biases).
  for (path, a), b in zip(jax.tree.leaves_with_path(grads),
                          jax.tree.leaves(grads_want)):
    a, b = np.asarray(a), np.asarray(b)
    err, scale = float(np.abs(a - b).max()), float(np.abs(b).max())
    assert err <= 1e-5 * scale + 1e-6, (jax.tree_util.keystr(path), err, scale)


@pytest.fixture(scope="module")
def clip_reference():
  base = clip_config.get_config("tiny-test")
  params = clip.init_params(base, jax.random.key(0))
  pixels = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  ids = jnp.tile(jnp.arange(1, 9)[None], (2, 1))
  want = jax.value_and_grad(lambda p: _loss(base, p, pixels, ids))(params)
  return params, pixels, ids, want


@pytest.mark.parametrize("policy", POLICIES)
def test_remat_clip_same_values_and_grads(policy, clip_reference):
  params, pixels, ids, want = clip_reference
  remat = clip_config.get_config("tiny-test", remat=policy)
  remat_params = clip.init_params(remat, jax.random.key(0))
  assert jax.tree.structure(params) == jax.tree.structure(remat_params)
  loss = lambda p: _loss(remat, p, pixels, ids)
  _assert_same(jax.value_and_grad(loss)(params), want)
  jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params))
  assert "remat" in jaxpr or "checkpoint" in jaxpr


def _moeclip_method(policy):
  config = tf.load_config("moeclip_tiny.py")
  config.backbone.remat = policy
  return registry.make_method(config)


@pytest.fixture(scope="module")
def moeclip_reference():
  method = _moeclip_method("none")
  params = method.init_fn(jax.random.key(0))
  context = method.make_context(params, ["bottle", "candle"])
  keys = jax.random.split(jax.random.key(1), 2)
  batch = {
      "image": jax.random.normal(keys[0], (4, 32, 32, 3)),
      "mask": (jax.random.uniform(keys[1], (4, 32, 32)) > 0.8).astype(
          jnp.float32),
      "label": jnp.array([0, 1, 1, 0], jnp.int32),
      "class_id": jnp.array([0, 1, 0, 1], jnp.int32),
  }
  rng = jax.random.key(2)
  want = _moeclip_grads(method, params, batch, context, rng)
  return params, batch, context, rng, want


def _moeclip_grads(method, params, batch, context, rng):
  fn = lambda p: method.loss_fn(p, batch, context, rng)[0]
  return jax.jit(jax.value_and_grad(fn))(params)


@pytest.mark.parametrize("policy", POLICIES)
def test_remat_moeclip_train_loss_same_grads(policy, moeclip_reference):
  params, batch, context, rng, want = moeclip_reference
  method = _moeclip_method(policy)
  assert method.clip_config.remat == policy
  assert (jax.tree.structure(method.init_fn(jax.random.key(0)))
          == jax.tree.structure(params))
  got = _moeclip_grads(method, params, batch, context, rng)
  assert float(jnp.abs(want[0])) > 0
  _assert_same(got, want)


def test_remat_choice_is_validated():
  with pytest.raises(ValueError, match="remat"):
    clip_config.get_config("tiny-test").replace(remat="everything")
