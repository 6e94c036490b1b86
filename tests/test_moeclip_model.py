"""MoECLIP Linen module: tiny-config behaviour, labels, full golden parity."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moeclip_jax.convert import common
from moeclip_jax.convert import moeclip_official
from moeclip_jax.methods.moeclip import config as config_lib
from moeclip_jax.methods.moeclip import losses
from moeclip_jax.methods.moeclip import model as model_lib
from moeclip_jax.models import clip
from moeclip_jax.models import clip_config

TINY_LAYERS = (0, 1, 2, 3)


def tiny_configs(**overrides):
  ccfg = clip_config.get_config("tiny-test")
  cfg = config_lib.MoECLIPConfig(
      moe_layers=TINY_LAYERS, feature_layers=TINY_LAYERS, proj_dim=32,
      text_width=ccfg.text.width, **overrides)
  return ccfg, cfg


@functools.lru_cache(maxsize=1)
def tiny_params():
  ccfg, cfg = tiny_configs()
  return model_lib.init_params(ccfg, cfg, jax.random.key(0))


@functools.lru_cache(maxsize=None)
def forward_fn(cfg, train=False):
  """Jitted tiny forward `(params, pixels, rng) -> (out, aux)` per config."""
  model = model_lib.MoECLIP(clip_config.get_config("tiny-test"), cfg)
  return jax.jit(lambda p, x, rng: model.apply(
      {"params": p}, x, train=train, rngs={"dropout": rng}))


def randomised(params, seed=1):
  """Non-zero router and LoRA B in every MoE layer."""
  params = jax.tree.map(lambda x: x, params)
  key = jax.random.key(seed)
  for name in [n for n in params if n.startswith("moe_")]:
    key, k1, k2 = jax.random.split(key, 3)
    layer = params[name]
    layer["router"]["kernel"] = jax.random.normal(
        k1, layer["router"]["kernel"].shape)
    layer["lora_b"] = 0.1 * jax.random.normal(k2, layer["lora_b"].shape)
  return params


def pixels(batch=2, size=32, seed=3):
  return jax.random.normal(jax.random.key(seed), (batch, size, size, 3))


def test_param_tree_and_labels():
  labels = model_lib.param_labels(tiny_params())
  trainable = sorted(p for p, lab in labels.items() if lab == "trainable")
  assert all("fofs_a" not in p for p in trainable)
  assert not any(p.startswith(("img/", "txt/")) for p in trainable)
  assert [p for p in labels if "fofs_a" in p] == [
      f"moe_{j}/fofs_a" for j in range(4)]
  want = ({f"moe_{j}/router/kernel" for j in range(4)}
          | {f"moe_{j}/lora_b" for j in range(4)}
          | {f"seg_proj_{j}/kernel" for j in range(4)}
          | {"det_proj/ln/scale", "det_proj/ln/bias", "det_proj/depthwise",
             "det_proj/pointwise", "text_adapter/fc/kernel"})
  assert set(trainable) == want


def test_zero_b_scales_stream_by_point_nine_per_moe_layer():
  ccfg, cfg = tiny_configs()
  params = tiny_params()
  x = pixels()
  _, aux = forward_fn(cfg)(params, x, jax.random.key(0))
  tower = jax.jit(lambda p, v: clip.VisionTransformer(ccfg).apply(
      {"params": p}, v, layers=TINY_LAYERS,
      block_hook=lambda i, h: 0.9 * h))(params["img"], x)
  want = np.stack([tower["hidden"][i] for i in TINY_LAYERS])
  np.testing.assert_allclose(aux["layer_outputs"], want, atol=1e-5)


def test_forward_shapes_and_capacity_equals_dense():
  ccfg, cfg = tiny_configs()
  params = randomised(tiny_params())
  x = pixels()
  out, aux = forward_fn(cfg)(params, x, jax.random.key(0))
  assert out["seg_tokens"].shape == (12, 2, 16, 32)
  assert out["det_feature"].shape == (2, 32)
  assert aux["layer_outputs"].shape == (4, 2, 17, 64)
  np.testing.assert_allclose(
      jnp.linalg.norm(out["seg_tokens"], axis=-1), 1.0, atol=1e-5)
  cap_out, _ = forward_fn(cfg.replace(capacity_factor=4.0))(
      params, x, jax.random.key(0))
  np.testing.assert_allclose(cap_out["seg_tokens"], out["seg_tokens"],
                             atol=1e-5)


def test_paper_mode_train_step_inputs():
  ccfg, cfg = tiny_configs(faithful="paper")
  params = randomised(tiny_params())
  model = model_lib.MoECLIP(ccfg, cfg)
  x = pixels()
  out_eval, aux_eval = forward_fn(cfg)(params, x, jax.random.key(4))
  assert "expert_outputs" not in aux_eval["moe"][0]
  out_train, aux = forward_fn(cfg, True)(params, x, jax.random.key(4))
  assert aux["moe"][0]["expert_outputs"].shape == (2, 17, 4, 64)
  assert not np.allclose(out_train["det_feature"], out_eval["det_feature"])
  ids = jnp.zeros((16, 77), jnp.int32).at[:, 0].set(49406).at[:, 5].set(49407)
  eot = jax.jit(functools.partial(
      model.apply, method=model_lib.MoECLIP.encode_text_eot))(
          {"params": params}, ids)
  abn = jnp.arange(16) >= 6
  features = jax.jit(functools.partial(
      model.apply, method=model_lib.MoECLIP.text_features))
  text = features({"params": params}, eot, abn)
  batched = features({"params": params}, jnp.stack([eot, eot]), abn)
  assert text.shape == (32, 2) and batched.shape == (2, 32, 2)
  np.testing.assert_allclose(batched[1], text, atol=1e-6)
  _, named = losses.total_loss(out_train, aux, text, jnp.array([0, 1]),
                               jnp.zeros((2, 32, 32)), cfg.loss_weights())
  assert named["loss_etf_per_layer"].shape == (4,)


def test_released_mode_ignores_train_flag():
  ccfg, cfg = tiny_configs()
  params = randomised(tiny_params())
  del ccfg
  x = pixels()
  a, _ = forward_fn(cfg)(params, x, jax.random.key(0))
  b, aux = forward_fn(cfg, True)(params, x, jax.random.key(0))
  np.testing.assert_array_equal(a["seg_tokens"], b["seg_tokens"])
  assert "expert_outputs" not in aux["moe"][0]


def test_bad_inputs_fail_clearly():
  ccfg, cfg = tiny_configs()
  model = model_lib.MoECLIP(ccfg, cfg)
  with pytest.raises(ValueError, match="32, 32, 3"):
    model.apply({"params": tiny_params()}, pixels(size=48))
  with pytest.raises(ValueError, match="32, 32, 3"):
    model.apply({"params": tiny_params()}, jnp.zeros((1, 32, 32, 4)))
  with pytest.raises(ValueError, match="top_k"):
    config_lib.MoECLIPConfig(top_k=5)


def test_vitl_param_tree_counts_without_allocation():
  ccfg = clip_config.get_config("ViT-L-14-336", image_size=518)
  cfg = config_lib.MoECLIPConfig()
  flat = common.flatten(nn.unbox(model_lib.abstract_params(ccfg, cfg)))
  labels = model_lib.param_labels(common.unflatten(flat))
  count = lambda keep: sum(
      int(np.prod(v.shape)) for k, v in flat.items() if keep(k))
  image_side = count(lambda k: labels[k] == "trainable"
                     and not k.startswith("text_adapter"))
  assert image_side == 4_084_736  # spec §3
  assert count(lambda k: k.startswith("text_adapter")) == 589_824
  assert flat["img/positional_embedding"].shape == (1370, 1024)
  shapes = moeclip_official.adapter_shapes(cfg, 1024, 768)
  assert {k: tuple(flat[k].shape) for k in shapes} == shapes


def test_gradients_finite_at_init():
  """B = 0 makes m = 0 exactly: the norm's gradient there must not be NaN.

  Paper mode also has the ETF term on all-zero expert outputs.
  """
  ccfg, cfg = tiny_configs(faithful="paper")
  model = model_lib.MoECLIP(ccfg, cfg)
  text = jnp.eye(32)[:, :2]
  masks = jnp.zeros((2, 32, 32)).at[1, 4:9, 4:9].set(1.0)

  def loss(params):
    out, aux = model.apply({"params": params}, pixels(), train=True,
                           rngs={"dropout": jax.random.key(0)})
    return losses.total_loss(out, aux, text, jnp.array([0, 1]), masks,
                             cfg.loss_weights())[0]

  grads = jax.jit(jax.grad(loss))(tiny_params())
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    assert np.all(np.isfinite(g)), jax.tree_util.keystr(path)
  assert np.any(grads["moe_0"]["lora_b"])


def test_bfloat16_towers_and_adapters_run():
  ccfg, cfg = tiny_configs(dtype="bfloat16")
  ccfg = ccfg.replace(dtype="bfloat16")
  model = model_lib.MoECLIP(ccfg, cfg)
  out, _ = jax.jit(model.apply)({"params": tiny_params()}, pixels())
  assert np.all(np.isfinite(np.asarray(out["det_feature"], np.float32)))
