"""`inference/jaxpr_onnx`: rules the detectors use rarely (or not yet), each
traced with a symbolic batch, converted, and run in onnxruntime at two
batch sizes against jax; unsupported primitives name themselves."""

import jax
import jax.numpy as jnp
import numpy as np
import onnxruntime
import pytest

from moeclip_jax.inference import jaxpr_onnx


def _scan_reverse(x):
  def body(c, row):
    c = c * 0.5 + row
    return c, jnp.tanh(c)
  carry, ys = jax.lax.scan(body, jnp.zeros(x.shape[:1]), x.swapaxes(0, 1),
                           reverse=True)
  return carry.sum() + ys.swapaxes(0, 1)


CASES = {
    "argmax": lambda x: jnp.argmax(x, axis=-1).astype(jnp.float32),
    "split": lambda x: jnp.split(x, [1, 3], axis=-1)[1],
    "clip_rem_sign": lambda x: jnp.clip(x, -0.5, 0.5) + jnp.fmod(x, 0.3)
                               + jnp.sign(x),
    "log1p_expm1": lambda x: jnp.log1p(jnp.abs(x)) + jnp.expm1(x),
    "select_three": lambda x: jax.lax.select_n(
        jnp.clip((x * 3).astype(jnp.int32), 0, 2), x, -x, x * 2),
    "pad_rev": lambda x: jnp.pad(x, ((0, 0), (2, 1)))[:, ::-1],
    "reduce_or_where": lambda x: jnp.where(jnp.any(x > 1.0, axis=-1,
                                                   keepdims=True), x, 0.0),
    "einsum_two_contractions": lambda x: jnp.einsum(
        "bij,ij->b", x.reshape(-1, 2, 3), jnp.ones((2, 3)))[:, None] * x,
    "batched_no_free": lambda x: jnp.einsum("bi,bi->b", x, x)[:, None],
    "symbolic_reshape": lambda x: jnp.concatenate(
        [x, x]).reshape(2, x.shape[0], 6).sum(0),
    "symbolic_broadcast": lambda x: x + jnp.zeros((x.shape[0], 1)),
    "dynamic_slice_gather": lambda x: jax.lax.dynamic_slice_in_dim(
        x, 2, 3, axis=1),
    "take_gather": lambda x: x[:, jnp.array([5, 0, 2])],
    "top_k": lambda x: jax.lax.top_k(x, 2)[0],
    "iota_is_finite": lambda x: x * jnp.arange(6.0) + jnp.isfinite(x),
    "scan_reverse": _scan_reverse,
    "max_pool": lambda x: jax.lax.reduce_window(
        x.reshape(-1, 2, 3, 1), -jnp.inf, jax.lax.max, (1, 2, 2, 1),
        (1, 1, 1, 1), "SAME").reshape(-1, 6),
}


def _run(fn, batches=(2, 3)):
  (b,) = jax.export.symbolic_shape("batch")
  closed = jax.make_jaxpr(fn)(jax.ShapeDtypeStruct((b, 6), jnp.float32))
  model = jaxpr_onnx.convert(closed, ["x"], ["y"])
  sess = onnxruntime.InferenceSession(model.SerializeToString(),
                                      providers=["CPUExecutionProvider"])
  rng = np.random.default_rng(0)
  for batch in batches:
    x = rng.standard_normal((batch, 6)).astype(np.float32)
    (got,) = sess.run(None, {"x": x})
    np.testing.assert_allclose(got, np.asarray(jax.jit(fn)(x)), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_rule_matches_jax_at_two_batch_sizes(name):
  _run(CASES[name])


def test_unsupported_primitive_is_named():
  with pytest.raises(NotImplementedError, match="'cumsum'"):
    _run(lambda x: jnp.cumsum(x, axis=1))
