"""InCTRL batch semantics: per-sample by default, official mixing on request.

Also checks the torch-semantics BatchNorm used by the heads.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moeclip_jax.methods.inctrl import heads
from moeclip_jax.methods.inctrl import model as M

B, K, L, G, W, D = 4, 2, 3, 4, 8, 16
P = G * G


def _features(seed: int, shared_prompts: bool):
  rng = np.random.default_rng(seed)
  query = {
      "layer_tokens": rng.standard_normal((B, L, 1 + P, W), np.float32),
      "pooled": rng.standard_normal((B, D), np.float32),
  }
  lead = (K,) if shared_prompts else (B, K)
  prompts = {
      "layer_tokens": rng.standard_normal(lead + (L, 1 + P, W), np.float32),
      "pooled": rng.standard_normal(lead + (D,), np.float32),
  }
  text = rng.standard_normal((B, 2, D), np.float32)
  text /= np.linalg.norm(text, axis=-1, keepdims=True)
  return query, prompts, text


def _variables():
  variables = M.init_head_variables(
      jax.random.key(0), num_patches=P, embed_dim=D)
  # Non-trivial running statistics, so eval-mode BN is not the identity.
  stats = jax.tree.map(
      lambda x: x + 0.3 * jnp.arange(x.shape[0]) / x.shape[0],
      variables["batch_stats"])
  return {**variables, "batch_stats": stats}


def _score(variables, query, prompts, text, official=False):
  scores, _ = M.InCTRL(official_batch_layout=official).apply(
      variables, query, prompts, text, method=M.InCTRL.score_features)
  return np.asarray(scores)


def _take(tree, i, shared_prompts):
  q, p, t = tree
  q_i = {k: v[i:i + 1] for k, v in q.items()}
  p_i = p if shared_prompts else {k: v[i:i + 1] for k, v in p.items()}
  return q_i, p_i, t[i:i + 1]


@pytest.mark.parametrize("shared_prompts", [False, True])
def test_batch_equals_one_at_a_time(shared_prompts):
  variables = _variables()
  feats = _features(1, shared_prompts)
  batched = _score(variables, *feats)
  single = np.concatenate([
      _score(variables, *_take(feats, i, shared_prompts)) for i in range(B)
  ])
  np.testing.assert_allclose(batched, single, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shared_prompts", [False, True])
def test_official_layout_mixes_samples(shared_prompts):
  variables = _variables()
  feats = _features(2, shared_prompts)
  ours = _score(variables, *feats)
  official = _score(variables, *feats, official=True)
  assert np.max(np.abs(ours - official)) > 1e-4
  # At batch 1 both layouts agree exactly.
  one = _take(feats, 0, shared_prompts)
  np.testing.assert_array_equal(
      _score(variables, *one), _score(variables, *one, official=True))


def test_official_layout_index_tracing():
  """Query i, slot j reads (layer, image) = divmod(L*i + j, B) (spec A3)."""
  rng = np.random.default_rng(3)
  query = rng.standard_normal((B, L, 1 + P, W)).astype(np.float32)
  prompt = rng.standard_normal((B, K, L, 1 + P, W)).astype(np.float32)
  pooled = rng.standard_normal((B, K, D)).astype(np.float32)
  q, p, pp = map(np.asarray, M.official_layout(query, prompt, pooled))
  for i in range(B):
    for j in range(L):
      layer, image = divmod(L * i + j, B)
      np.testing.assert_array_equal(q[i, j], query[image, layer, 1:])
      # Prompt rows: flat (layer, shot-major image s * B + b) blocks of P.
      for t in range(K):
        layer_p, m = divmod((L * i + j) * K + t, K * B)
        shot, b = divmod(m, B)
        np.testing.assert_array_equal(
            p[i, j, t * P:(t + 1) * P], prompt[b, shot, layer_p, 1:])
    for t in range(K):
      shot, b = divmod(i * K + t, B)
      np.testing.assert_array_equal(pp[i, t], pooled[b, shot])


@pytest.mark.needs_torch
def test_batchnorm_matches_torch_training_and_eval():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(4)
  xs = [rng.standard_normal((6, 5)).astype(np.float32) * 3 + 1
        for _ in range(3)]
  ref = torch.nn.BatchNorm1d(5)
  with torch.no_grad():
    ref.weight.copy_(torch.tensor(rng.standard_normal(5), dtype=torch.float32))
    ref.bias.copy_(torch.tensor(rng.standard_normal(5), dtype=torch.float32))
  bn = heads.TorchBatchNorm()
  variables = bn.init(jax.random.key(0), xs[0], use_running_average=True)
  params = {"scale": jnp.asarray(ref.weight.detach().numpy()),
            "bias": jnp.asarray(ref.bias.detach().numpy())}
  stats = variables["batch_stats"]
  ref.train()
  for x in xs:
    y, upd = bn.apply({"params": params, "batch_stats": stats}, x,
                      use_running_average=False, mutable=["batch_stats"])
    stats = upd["batch_stats"]
    y_ref = ref(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(np.asarray(y), y_ref, atol=1e-5)
  np.testing.assert_allclose(stats["mean"], ref.running_mean.numpy(), atol=1e-6)
  np.testing.assert_allclose(stats["var"], ref.running_var.numpy(), atol=1e-6)
  ref.eval()
  y = bn.apply({"params": params, "batch_stats": stats}, xs[0],
               use_running_average=True)
  y_ref = ref(torch.from_numpy(xs[0])).detach().numpy()
  np.testing.assert_allclose(np.asarray(y), y_ref, atol=1e-5)


def test_batchnorm_training_rejects_batch_of_one():
  bn = heads.TorchBatchNorm()
  x = jnp.ones((1, 3))
  variables = bn.init(jax.random.key(0), x, use_running_average=True)
  with pytest.raises(ValueError, match="more than 1 value"):
    bn.apply(variables, x, use_running_average=False, mutable=["batch_stats"])


def test_bn1_params_exist_but_are_unused():
  variables = _variables()
  assert set(variables["params"]["diff_head"]) >= {"bn1", "bn2", "bn3"}
  assert variables["params"]["diff_head"]["bn1"]["scale"].shape == (P,)
  feats = _features(5, True)
  base = _score(variables, *feats)
  poked = jax.tree.map(lambda x: x, variables)
  poked["params"]["diff_head"]["bn1"]["scale"] = (
      variables["params"]["diff_head"]["bn1"]["scale"] * 7.0)
  np.testing.assert_array_equal(base, _score(poked, *feats))


def test_batch_sharded_over_devices_matches_unsharded():
  """Queries split over the 8 fake CPU devices score as on one device."""
  devices = np.array(jax.devices())
  if devices.size < 2:
    pytest.skip("needs several devices")
  mesh = jax.sharding.Mesh(devices, ("data",))
  spec = jax.sharding.PartitionSpec("data")
  n = devices.size
  rng = np.random.default_rng(6)
  query = {
      "layer_tokens": rng.standard_normal((n, L, 1 + P, W), np.float32),
      "pooled": rng.standard_normal((n, D), np.float32),
  }
  _, prompts, _ = _features(6, True)
  text = rng.standard_normal((n, 2, D)).astype(np.float32)
  variables = _variables()
  sharded = jax.tree.map(
      lambda x: jax.device_put(x, jax.sharding.NamedSharding(mesh, spec)),
      (query, text))
  fn = jax.jit(lambda v, q, p, t: M.InCTRL().apply(
      v, q, p, t, method=M.InCTRL.score_features)[0])
  out = fn(variables, sharded[0], prompts, sharded[1])
  np.testing.assert_allclose(np.asarray(out),
                             _score(variables, query, prompts, text),
                             atol=1e-6)
