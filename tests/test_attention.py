"""The shared softmax-attention path against the plain einsum reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moeclip_jax.models import attention


def _qkv(seed, b=2, t=37, s=37, h=4, d=16, dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(seed), 3)
  q = jax.random.normal(keys[0], (b, t, h, d), dtype) * d**-0.5
  k = jax.random.normal(keys[1], (b, s, h, d), dtype)
  v = jax.random.normal(keys[2], (b, s, h, d), dtype)
  return q, k, v


def test_matches_reference_without_mask():
  q, k, v = _qkv(0)
  got = attention.softmax_attention(q, k, v)
  want = attention.reference_attention(q, k, v)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_matches_reference_with_causal_mask():
  q, k, v = _qkv(1, t=77, s=77)
  mask = jnp.tril(jnp.ones((77, 77), bool))
  got = attention.softmax_attention(q, k, v, mask)
  want = attention.reference_attention(q, k, v, mask)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  # Causality: the first token only sees itself.
  np.testing.assert_allclose(got[:, 0], v[:, 0], atol=1e-6)


@pytest.mark.parametrize("precision", [None, jax.lax.Precision.HIGHEST])
def test_precision_and_gradients(precision):
  q, k, v = _qkv(2)

  def loss(fn, q, k, v):
    return jnp.sum(jnp.sin(fn(q, k, v)))

  fast = lambda q, k, v: attention.softmax_attention(q, k, v,
                                                     precision=precision)
  got = jax.grad(loss, argnums=(1, 2, 3))(fast, q, k, v)
  want = jax.grad(loss, argnums=(1, 2, 3))(attention.reference_attention,
                                           q, k, v)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_bfloat16_keeps_the_dtype():
  q, k, v = _qkv(3, dtype=jnp.bfloat16)
  out = attention.softmax_attention(q, k, v)
  assert out.dtype == jnp.bfloat16
  want = attention.reference_attention(q.astype(jnp.float32),
                                       k.astype(jnp.float32),
                                       v.astype(jnp.float32))
  np.testing.assert_allclose(out.astype(jnp.float32), want, atol=3e-2)
