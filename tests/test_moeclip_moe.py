"""MoE of LoRA experts: routing paths, reference loop, FOFS, zero-B."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moeclip_jax.models import fofs
from moeclip_jax.models import moe
from moeclip_jax.sharding import mesh as mesh_lib
from moeclip_jax.sharding import partition
from moeclip_jax.sharding import rules

E, K, R, M, S, B = 4, 2, 4, 16, 10, 3


def _random_params(key, use_fofs=True):
  """Non-zero router and B (the defaults are zero)."""
  layer = moe.MoELoRA(num_experts=E, top_k=K, rank=R, use_fofs=use_fofs)
  x = jnp.zeros((1, 2, M))
  params = nn.unbox(layer.init(key, x)["params"])
  k1, k2 = jax.random.split(jax.random.fold_in(key, 1))
  params["router"]["kernel"] = jax.random.normal(k1, (M, E))
  params["lora_b"] = 0.3 * jax.random.normal(k2, (E, R, M))
  return params


def _loop_reference(params, x, scale=16.0 / R):
  """Per-token, per-chosen-expert loop in numpy (float64)."""
  x = np.asarray(x, np.float64)
  a = np.asarray(params.get("fofs_a", params.get("lora_a")), np.float64)
  b_mat = np.asarray(params["lora_b"], np.float64)
  logits = x @ np.asarray(params["router"]["kernel"], np.float64)
  out = np.zeros_like(x)
  for i in range(x.shape[0]):
    for s in range(x.shape[1]):
      p = np.exp(logits[i, s] - logits[i, s].max())
      p /= p.sum()
      top = np.argsort(-p, kind="stable")[:K]
      w = p[top] / p[top].sum()
      for k, wk in zip(top, w):
        out[i, s] += wk * scale * (x[i, s] @ a[k] @ b_mat[k])
  return out


def test_dense_capacity_and_loop_reference_agree():
  params = _random_params(jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (B, S, M))
  dense, aux = moe.MoELoRA(num_experts=E, top_k=K, rank=R).apply(
      {"params": params}, x)
  cap, cap_aux = moe.MoELoRA(
      num_experts=E, top_k=K, rank=R, capacity_factor=float(E)).apply(
          {"params": params}, x)
  ref = _loop_reference(params, x)
  np.testing.assert_allclose(dense, ref, atol=1e-5)
  np.testing.assert_allclose(cap, ref, atol=1e-5)
  assert float(cap_aux["dropped_fraction"]) == 0.0
  np.testing.assert_array_equal(aux["topk_idx"], cap_aux["topk_idx"])


def test_router_weights_renormalised_and_sorted():
  params = _random_params(jax.random.key(2))
  x = jax.random.normal(jax.random.key(3), (B, S, M))
  _, aux = moe.MoELoRA(num_experts=E, top_k=K, rank=R).apply(
      {"params": params}, x)
  assert aux["router_probs"].dtype == jnp.float32
  np.testing.assert_allclose(aux["topk_weight"].sum(-1), 1.0, atol=1e-6)
  probs = np.take_along_axis(
      np.asarray(aux["router_probs"]), np.asarray(aux["topk_idx"]), -1)
  assert np.all(probs[..., 0] >= probs[..., 1])


def test_capacity_masks_hand_computed():
  idx = jnp.array([[[0], [0], [1], [0]]], jnp.int32)  # [1, 4, 1]
  weight = jnp.ones((1, 4, 1))
  dispatch, combine, kept = moe.capacity_masks(weight, idx, 2, 2)
  expected = np.zeros((1, 4, 2, 2))
  expected[0, 0, 0, 0] = 1  # token 0 -> expert 0, slot 0
  expected[0, 1, 0, 1] = 1  # token 1 -> expert 0, slot 1
  expected[0, 2, 1, 0] = 1  # token 2 -> expert 1, slot 0
  np.testing.assert_array_equal(dispatch, expected)  # token 3 dropped
  np.testing.assert_array_equal(combine, expected)
  np.testing.assert_array_equal(kept[0, :, 0], [1, 1, 1, 0])


def test_capacity_second_choices_queue_after_first_choices():
  # Two tokens, both choose expert 0 then 1; capacity 1 keeps only the
  # first choice of token 0 and the second choice of token 0 for expert 1.
  idx = jnp.array([[[0, 1], [0, 1]]], jnp.int32)
  weight = jnp.full((1, 2, 2), 0.5)
  _, _, kept = moe.capacity_masks(weight, idx, 2, 1)
  np.testing.assert_array_equal(kept[0], [[1, 1], [0, 0]])


def test_capacity_drops_overflow_tokens():
  params = _random_params(jax.random.key(4))
  params["router"]["kernel"] = jnp.zeros((M, E)).at[:, 0].set(50.0)
  x = jnp.abs(jax.random.normal(jax.random.key(5), (1, 8, M)))  # all -> 0
  layer = moe.MoELoRA(num_experts=E, top_k=1, rank=R, capacity_factor=0.5)
  out, aux = layer.apply({"params": params}, x)
  dense, _ = moe.MoELoRA(num_experts=E, top_k=1, rank=R).apply(
      {"params": params}, x)
  cap = moe.expert_capacity(8, E, 1, 0.5)
  assert cap == 4
  np.testing.assert_allclose(out[:, :cap], dense[:, :cap], atol=1e-6)
  np.testing.assert_array_equal(out[:, cap:], 0.0)
  assert float(aux["dropped_fraction"]) == pytest.approx(0.5)


@pytest.mark.parametrize("capacity_factor", [0.0, 2.0])
def test_zero_b_gives_exactly_zero_output(capacity_factor):
  layer = moe.MoELoRA(capacity_factor=capacity_factor)
  x = jax.random.normal(jax.random.key(6), (2, 9, 64))
  variables = layer.init(jax.random.key(7), x)
  params = nn.unbox(variables["params"])
  assert not np.any(params["lora_b"])
  assert not np.any(params["router"]["kernel"])
  out, aux = layer.apply({"params": params}, x, return_expert_outputs=True)
  assert np.all(np.asarray(out) == 0.0)
  assert np.all(np.asarray(aux["expert_outputs"]) == 0.0)
  np.testing.assert_array_equal(aux["router_probs"], 0.25)


def test_param_paths_name_frozen_frames():
  x = jnp.zeros((1, 3, 32))
  with_fofs = nn.unbox(moe.MoELoRA().init(jax.random.key(0), x)["params"])
  assert sorted(with_fofs) == ["fofs_a", "lora_b", "router"]
  no_fofs = nn.unbox(
      moe.MoELoRA(use_fofs=False).init(jax.random.key(0), x)["params"])
  assert sorted(no_fofs) == ["lora_a", "lora_b", "router"]
  assert np.abs(no_fofs["lora_a"]).max() <= 1 / np.sqrt(32)


def test_dropout_only_in_train_mode():
  params = _random_params(jax.random.key(8))
  x = jax.random.normal(jax.random.key(9), (B, S, M))
  layer = moe.MoELoRA(num_experts=E, top_k=K, rank=R, dropout_rate=0.5)
  eval_out, _ = layer.apply({"params": params}, x)
  again, _ = layer.apply({"params": params}, x, deterministic=True)
  np.testing.assert_array_equal(eval_out, again)
  train_out, _ = layer.apply({"params": params}, x, deterministic=False,
                             rngs={"dropout": jax.random.key(10)})
  assert not np.allclose(train_out, eval_out)


def test_jit_and_grad_flow_to_router_and_b_only():
  params = _random_params(jax.random.key(11))
  x = jax.random.normal(jax.random.key(12), (B, S, M))
  layer = moe.MoELoRA(num_experts=E, top_k=K, rank=R)

  def loss(p):
    out, _ = layer.apply({"params": p}, x)
    return jnp.sum(out**2)

  grads = jax.jit(jax.grad(loss))(params)
  assert np.any(grads["lora_b"]) and np.any(grads["router"]["kernel"])


def test_block_bounds_remainder_to_first_blocks():
  assert fofs.block_bounds(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]
  assert fofs.block_bounds(1024, 4)[-1] == (768, 1024)
  with pytest.raises(ValueError, match="rank"):
    fofs.fofs_numpy(16, 4, 8)


@pytest.mark.parametrize("builder", ["numpy", "jax"])
def test_fofs_frames_orthonormal_and_disjoint(builder):
  if builder == "numpy":
    frames = fofs.fofs_numpy(64, 4, 8, seed=3)
  else:
    frames = np.asarray(fofs.fofs_init(jax.random.key(3), (4, 64, 8)))
  assert frames.shape == (4, 64, 8)
  for k, (start, end) in enumerate(fofs.block_bounds(64, 4)):
    np.testing.assert_allclose(frames[k].T @ frames[k], np.eye(8), atol=1e-5)
    outside = np.delete(frames[k], np.s_[start:end], axis=0)
    assert not np.any(outside)
  cross = np.einsum("emr,fms->efrs", frames, frames)
  for e in range(4):
    for f in range(4):
      if e != f:
        assert not np.any(cross[e, f])


@pytest.mark.parametrize("capacity_factor", [0.0, 4.0])
def test_expert_parallel_mesh_matches_single_device(capacity_factor):
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 (fake) devices")
  layer = moe.MoELoRA(num_experts=E, top_k=K, rank=R,
                      capacity_factor=capacity_factor)
  x = jax.random.normal(jax.random.key(13), (4, S, M))
  mesh = mesh_lib.make_mesh({"data": 2, "expert": 4})
  params, shardings = partition.sharded_init(
      lambda r: layer.init(r, x)["params"], jax.random.key(14), mesh)
  assert shardings["lora_b"].spec[0] == "expert"
  params = dict(params, lora_b=jax.device_put(
      0.3 * jax.random.normal(jax.random.key(15), (E, R, M)),
      shardings["lora_b"]))
  params["router"] = {"kernel": jax.device_put(
      jax.random.normal(jax.random.key(16), (M, E)),
      shardings["router"]["kernel"])}
  with jax.set_mesh(mesh), nn.logical_axis_rules(list(rules.DEFAULT_RULES)):
    xs = jax.device_put(x, partition.batch_sharding(mesh))
    sharded, _ = jax.jit(lambda p, v: layer.apply({"params": p}, v))(
        params, xs)
  local = jax.tree.map(np.asarray, params)
  want, _ = layer.apply({"params": local}, x)
  np.testing.assert_allclose(sharded, want, atol=1e-5)
