"""`CLIPConfig.remat="blocks"`: same parameter tree, outputs and gradients
as without remat (only the backward pass's memory/compute trade changes),
and the rematerialisation really is in the gradient's jaxpr."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moeclip_jax.models import clip
from moeclip_jax.models import clip_config


def _loss(config, params, pixels, ids):
  img, txt = clip.CLIP(config).apply({"params": params}, pixels, ids)
  return jnp.sum(img["pooled"] ** 2) + jnp.sum(txt["pooled"] ** 2)


def test_remat_blocks_same_values_and_grads():
  base = clip_config.get_config("tiny-test")
  remat = base.replace(remat="blocks")
  params = clip.init_params(base, jax.random.key(0))
  remat_params = clip.init_params(remat, jax.random.key(0))
  assert (jax.tree.structure(params) == jax.tree.structure(remat_params))
  pixels = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  ids = jnp.tile(jnp.arange(1, 9)[None], (2, 1))
  want, g_want = jax.value_and_grad(lambda p: _loss(base, p, pixels, ids))(
      params)
  got, g_got = jax.value_and_grad(lambda p: _loss(remat, p, pixels, ids))(
      params)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  jaxpr = str(jax.make_jaxpr(jax.grad(
      lambda p: _loss(remat, p, pixels, ids)))(params))
  assert "remat" in jaxpr or "checkpoint" in jaxpr


def test_remat_choice_is_validated():
  with pytest.raises(ValueError, match="remat"):
    clip_config.get_config("tiny-test").replace(remat="everything")
