"""AnomalyMoE unit tests: parameter counts, hard mining, ESB/EIR on hand
cases, StableAdamW, expert-parallel sharding of a train step."""


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from moeclip_jax.methods.anomalymoe import losses
from moeclip_jax.methods.anomalymoe import model as model_lib
from moeclip_jax.methods.anomalymoe import training
from moeclip_jax.sharding import rules
from moeclip_jax.checkpoint import params as ckpt_params


def test_parameter_counts_match_spec():
  counts = model_lib.param_counts(model_lib.AnomalyMoEConfig())
  assert round(counts["encoder"] / 1e6, 2) == 86.58
  assert round(counts["patch_expert"] / 1e6, 2) == 61.43
  assert round(counts["global_expert"] / 1e6, 2) == 13.51
  assert round(counts["component_expert"] / 1e6, 2) == 0.44
  assert round(counts["gate"] / 1e6, 2) == 0.20
  assert round(counts["trainable"] / 1e6, 2) == 452.45


def test_expert_params_carry_exp_axis():
  config = model_lib.tiny_config()
  s = config.image_size
  shapes = jax.eval_shape(
      model_lib.AnomalyMoE(config).init, jax.random.key(0),
      jnp.zeros((1, s, s, 3)), jnp.zeros((1, s, s, 3)),
      jnp.zeros((1, 1, s, s)))["params"]
  for group in ("patch_experts", "global_experts", "component_experts"):
    leaves = jax.tree_util.tree_leaves(
        shapes[group], is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves
    for leaf in leaves:
      assert leaf.names[0] == "exp", (group, leaf.names)
      assert leaf.value.shape[0] == 6


def test_hard_mining_scales_gradients_exactly():
  rng = np.random.default_rng(0)
  en = jnp.asarray(rng.standard_normal((2, 4, 5, 8)), jnp.float32)
  de = jnp.asarray(rng.standard_normal((2, 4, 5, 8)), jnp.float32)

  def loss(de, factor):
    mined, dist, thresh, hard = losses.hard_mine(de, en, 0.9, factor)
    cos = 1.0 - jnp.sum(mined * en, -1) / (
        jnp.linalg.norm(mined, axis=-1) * jnp.linalg.norm(en, axis=-1))
    return jnp.mean(cos), (dist, thresh, hard)

  (value, (dist, thresh, hard)), g_hm = jax.value_and_grad(
      loss, has_aux=True)(de, 0.1)
  (value1, _), g_plain = jax.value_and_grad(loss, has_aux=True)(de, 1.0)
  assert value == value1  # the forward value is unchanged
  k = losses.hard_mining_k(dist.size, 0.9)
  assert k == 3 and int(hard.sum()) == k  # int(40 * 0.09999999999999998)
  np.testing.assert_allclose(
      np.sort(np.asarray(dist).ravel())[-k], thresh, rtol=0)
  want = np.where(np.asarray(hard)[..., None], g_plain, 0.1 * g_plain)
  np.testing.assert_allclose(g_hm, want, rtol=1e-6, atol=1e-9)


def test_patch_loss_uses_last_group_mask_like_official_hooks():
  rng = np.random.default_rng(1)
  en = jnp.asarray(rng.standard_normal((2, 2, 4, 5, 8)), jnp.float32)
  de = jnp.asarray(rng.standard_normal((1, 2, 2, 4, 5, 8)), jnp.float32)
  w = jnp.ones((2, 1))

  def grads(cfg):
    return jax.grad(lambda d: losses.patch_loss(en, d, w, cfg)[0])(de)

  plain = grads(losses.LossConfig(factor_hm=1.0))
  official = grads(losses.LossConfig())
  own = grads(losses.LossConfig(hm_last_group_mask=False))
  _, _, hard0 = losses.hard_mask(de[0, 0], en[0], 0.9)
  _, _, hard1 = losses.hard_mask(de[0, 1], en[1], 0.9)
  assert np.any(np.asarray(hard0) != np.asarray(hard1))
  for g, hard in ((0, hard1), (1, hard1)):
    want = np.where(np.asarray(hard)[..., None], plain[0, g],
                    0.1 * plain[0, g])
    np.testing.assert_allclose(official[0, g], want, rtol=1e-6, atol=1e-9)
  want0 = np.where(np.asarray(hard0)[..., None], plain[0, 0], 0.1 * plain[0, 0])
  np.testing.assert_allclose(own[0, 0], want0, rtol=1e-6, atol=1e-9)


def test_esb_hand_computed():
  logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
  mask = jnp.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
  total, terms = losses.esb_loss(logits, mask, capacity_factor=1.0)
  e2 = np.exp(2.0)
  p_hi, p_lo = e2 / (e2 + 2), 1 / (e2 + 2)
  probs = np.array([(p_hi + p_lo) / 2, p_lo, (p_hi + p_lo) / 2])
  importance = 3 * np.sum(probs**2)
  cap = 1.0 * 2 / 3
  load = 2 * (1 - cap) ** 2 + (2 - cap) ** 2
  z = 8.0 / 6.0
  np.testing.assert_allclose(terms, [importance, load, z], rtol=1e-6)
  np.testing.assert_allclose(total, importance + load + z, rtol=1e-6)
  grad = jax.grad(lambda m: losses.esb_loss(logits, m, 1.0)[0])(mask)
  assert np.all(np.asarray(grad) == 0)  # the load term has no gradient


def test_club_bound_hand_computed():
  mu = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  logvar = jnp.zeros((2, 2))
  y = jnp.array([[1.0, 0.0], [0.0, 0.0]])
  # pos = -[0, 1]; negatives use y[[1, 0]] = [[0, 0], [1, 0]]:
  # neg = -[1, 1 + 1] = -[1, 2]; mean(pos - neg) / 2 = mean([1, 1]) / 2.
  bound = losses.club_bound(mu, logvar, y, jnp.array([1, 0]))
  np.testing.assert_allclose(bound, 0.5)
  assert losses.club_bound(mu, logvar, y, jnp.array([0, 1])) == 0.0
  ll = losses.club_learning_loss(mu, jnp.log(2.0) * jnp.ones((2, 2)), y)
  np.testing.assert_allclose(ll, (0 + 1 / 4) / 2, rtol=1e-6)


def _stable_adamw_reference(p, grads, lr, wd=1e-4, b1=0.9, b2=0.999,
                            eps=1e-10):
  m = np.zeros_like(p)
  v = np.zeros_like(p)
  vmax = np.zeros_like(p)
  for t, g in enumerate(grads, 1):
    p = p * (1 - lr * wd)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    vmax = np.maximum(vmax, v)
    denom = np.sqrt(vmax) / np.sqrt(1 - b2**t) + eps
    scale = max(1.0, np.sqrt(np.mean((g / denom) ** 2)))
    p = p - lr / (1 - b1**t) / scale * m / denom
  return p


def test_stable_adamw_matches_reference():
  rng = np.random.default_rng(0)
  p0 = rng.standard_normal((4, 3))
  grads = [rng.standard_normal((4, 3)) * s for s in (1.0, 0.1, 3.0, 0.01)]
  tx = training.stable_adamw(1e-2)
  p = jnp.asarray(p0)
  state = tx.init(p)
  for g in grads:
    upd, state = tx.update(jnp.asarray(g), state, p)
    p = optax.apply_updates(p, upd)
  np.testing.assert_allclose(p, _stable_adamw_reference(p0, grads, 1e-2),
                             rtol=1e-5, atol=1e-6)


def test_warm_cosine_schedule():
  sched = training.warm_cosine_schedule(1.0, 0.01, 10, 3)
  np.testing.assert_allclose(
      [float(sched(i)) for i in range(11)],
      [0, 0.5, 1.0] + [0.01 + 0.495 * (1 + np.cos(np.pi * i / 7))
                       for i in range(7)] + [0.01], rtol=1e-6)


def _tiny_batch(config, batch=2, seed=0):
  rng = np.random.default_rng(seed)
  s = config.image_size
  masks = np.zeros((batch, 2, s, s), np.float32)
  masks[:, 0, : s // 2] = 1
  masks[0, 1, s // 2:, : s // 2] = 1
  return {
      "images": jnp.asarray(rng.standard_normal((batch, s, s, 3)),
                            jnp.float32),
      "images_ae": jnp.asarray(rng.standard_normal((batch, s, s, 3)),
                               jnp.float32),
      "component_masks": jnp.asarray(masks),
      "component_valid": jnp.asarray(masks.any(axis=(2, 3))),
  }


def _shardings(mesh, config, params):
  """NamedShardings of the trainable params from their logical names."""
  s = config.image_size
  boxed = jax.eval_shape(
      model_lib.AnomalyMoE(config).init, jax.random.key(0),
      jnp.zeros((1, s, s, 3)), jnp.zeros((1, s, s, 3)),
      jnp.zeros((1, 1, s, s)))["params"]
  boxed = {k: v for k, v in boxed.items() if k != "encoder"}
  specs = nn.get_partition_spec(boxed)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules.DEFAULT_RULES)
  return jax.tree.map(jax.device_put, params, shardings)


def _micro_config():
  """tiny_config with 2 backbone / decoder blocks (fast compiles)."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  base = model_lib.tiny_config()
  return model_lib.tiny_config(
      backbone=dataclasses.replace(base.backbone, depth=2),
      dims=dataclasses.replace(base.dims, decoder_depth=2),
      target_layers=(0, 1), train_fusion=((0,), (1,)),
      test_fusion=((0, 1),))


def test_expert_parallel_forward_matches_single_device():
  config = _micro_config()
  batch = _tiny_batch(config)
  module = model_lib.AnomalyMoE(config)
  s = config.image_size
  params = dict(nn.unbox(jax.jit(lambda k: module.init(
      k, jnp.zeros((1, s, s, 3)), jnp.zeros((1, s, s, 3)),
      jnp.zeros((1, 1, s, s))))(jax.random.key(0))["params"]))
  frozen = params.pop("encoder")

  def forward(params, frozen):
    out = module.apply({"params": {**params, "encoder": frozen}},
                       batch["images"], batch["images_ae"],
                       batch["component_masks"], batch["component_valid"])
    return {k: out[k] for k in ("routing_weights", "de_maps", "ae_out",
                                "student_out", "component_recon")}

  ref = jax.jit(forward)(params, frozen)
  devices = np.array(jax.devices()[:2]).reshape(1, 1, 1, 2)
  mesh = jax.sharding.Mesh(devices, rules.MESH_AXES)
  sharded = _shardings(mesh, config, params)
  leaf = sharded["global_experts"]["student_12"]["kernel"]
  assert leaf.sharding.spec[0] == "expert"
  # `with mesh` (not jax.set_mesh): under set_mesh flax applies its global
  # logical constraints, which reject DenseGeneral's flattened kernels.
  with mesh, nn.logical_axis_rules(rules.DEFAULT_RULES):
    out = jax.jit(forward)(sharded, frozen)
  for key in ref:
    scale = float(np.abs(ref[key]).max())
    np.testing.assert_allclose(out[key], ref[key], rtol=1e-5,
                               atol=1e-6 * max(scale, 1.0), err_msg=key)


@pytest.mark.slow
def test_method_seam_loss_and_predict():
  import importlib.util  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  from moeclip_jax.methods.anomalymoe import method as method_lib  # pylint: disable=g-import-not-at-top

  path = pathlib.Path(__file__).parent.parent / "configs" / (
      "anomalymoe_dinov2_b14.py")
  spec = importlib.util.spec_from_file_location("am_cfg", path)
  cfg_mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(cfg_mod)
  method = method_lib.AnomalyMoEMethod(cfg_mod.get_config("tiny"))
  params = nn.unbox(method.init_fn(jax.random.key(0)))
  tx = method.make_tx()
  opt_state = tx.init(params)
  batch = {"image": _tiny_batch(method.config)["images"]}
  (loss, metrics), grads = jax.jit(jax.value_and_grad(
      method.loss_fn, has_aux=True), static_argnums=2)(
          params, batch, None, jax.random.key(1))
  assert np.isfinite(loss) and set(metrics) >= {"loss_esb", "loss_estimator"}
  updates, _ = tx.update(grads, opt_state, params)
  enc = jax.tree_util.tree_leaves(updates["model"]["encoder"])
  assert all(np.all(np.asarray(u) == 0) for u in enc)  # backbone frozen
  est = jax.tree_util.tree_leaves(grads["mi_estimator"])
  assert any(np.any(np.asarray(g) != 0) for g in est)
  out = jax.jit(method.predict_fn, static_argnums=2)(params, batch, None)
  assert out["anomaly_map"].shape == (2, 392, 392)
  assert out["image_score"].shape == (2,)


def test_detector_load_and_predict(tmp_path):
  from moeclip_jax.methods.anomalymoe import detector  # pylint: disable=g-import-not-at-top

  config = _micro_config()
  s = config.image_size
  params = nn.unbox(jax.jit(lambda k: model_lib.AnomalyMoE(config).init(
      k, jnp.zeros((1, s, s, 3)), jnp.zeros((1, s, s, 3)),
      jnp.zeros((1, 1, s, s))))(jax.random.key(0))["params"])
  ckpt_params.write_params_checkpoint(
      tmp_path / "ckpt", {"model": params},
      {"method": "anomalymoe", **config.to_dict()}, {"method": "anomalymoe"})
  det = detector.AnomalyMoEDetector.load(tmp_path / "ckpt")
  assert det.config == config
  images = np.random.default_rng(0).integers(0, 255, (2, s, s, 3), np.uint8)
  out = det.predict(images, class_min_max=det.calibrate(images))
  assert out["anomaly_map"].shape == (2, s, s)
  assert out["image_score"].shape == (2,)
  assert np.all(np.isfinite(out["image_score"]))


def test_component_loss_gradient_finite_with_zero_slots():
  feats = jnp.zeros((2, 3, 8)).at[:, 0].set(1.0)  # padded slots are zero
  recon = jnp.zeros((4, 2, 3, 8)).at[:, :, 0].set(0.5)  # MLP(0) = 0
  valid = jnp.array([[True, False, False], [True, True, False]])
  grad = jax.grad(lambda r: losses.component_loss(
      feats, r, valid, jnp.full((2, 4), 0.25), losses.LossConfig())[0])(recon)
  assert np.all(np.isfinite(np.asarray(grad)))
