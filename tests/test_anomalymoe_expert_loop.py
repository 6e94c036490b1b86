"""AnomalyMoE expert loops: "scan" (default, one host) and "vmap" (expert
parallel) compute the same outputs from the same parameters, and the
config's "auto" picks "vmap" only when the mesh has an expert axis."""

import dataclasses
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moeclip_jax.methods.anomalymoe import method as method_lib
from moeclip_jax.methods.anomalymoe import model as model_lib
from moeclip_jax.sharding import presets

CONFIG = pathlib.Path(__file__).parent.parent / "configs" / (
    "anomalymoe_dinov2_b14.py")


def _train_config():
  spec = importlib.util.spec_from_file_location("am_cfg", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("tiny")


def test_default_expert_loop_is_scan():
  assert model_lib.AnomalyMoEConfig().expert_loop == "scan"


@pytest.mark.parametrize("mesh, preset, want", [
    (None, "", "scan"),
    ({"data": 8, "fsdp": 1, "tensor": 1, "expert": 1}, "", "scan"),
    ({"data": 4, "fsdp": 1, "tensor": 1, "expert": 2}, "", "vmap"),
    (None, "expert_parallel", "vmap"),
    (None, "fsdp", "scan"),
])
def test_auto_expert_loop_follows_the_mesh(mesh, preset, want):
  config = _train_config()
  assert config.model.expert_loop == "auto"
  if mesh is not None:
    config.mesh.update(mesh)
  if preset:
    presets.apply(config, preset)
  assert method_lib.expert_loop(config) == want
  assert method_lib.model_config(config).expert_loop == want


def test_explicit_expert_loop_wins():
  config = presets.apply(_train_config(), "expert_parallel")
  config.model.expert_loop = "scan"
  assert method_lib.model_config(config).expert_loop == "scan"


@pytest.mark.slow  # two 392-px compiles of the tiny model
def test_scan_and_vmap_compute_the_same_outputs():
  base = model_lib.tiny_config()
  config = model_lib.tiny_config(
      backbone=dataclasses.replace(base.backbone, depth=2),
      dims=dataclasses.replace(base.dims, decoder_depth=2),
      target_layers=(0, 1), train_fusion=((0,), (1,)),
      test_fusion=((0, 1),))
  s = config.image_size
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.standard_normal((2, s, s, 3)), jnp.float32)
  masks = np.zeros((2, 2, s, s), np.float32)
  masks[:, 0, : s // 2] = 1
  masks = jnp.asarray(masks)
  scan = model_lib.AnomalyMoE(config)
  vmap = model_lib.AnomalyMoE(dataclasses.replace(config, expert_loop="vmap"))
  params = jax.jit(scan.init)(jax.random.key(0), images, images, masks)
  vparams = jax.jit(vmap.init)(jax.random.key(0), images, images, masks)
  # Same parameter layout (and the same initial values) under both loops.
  assert (jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, vparams))
  keys = ("routing_weights", "de_maps", "ae_out", "student_out",
          "component_recon")
  a = jax.jit(lambda p: scan.apply(p, images, images, masks))(params)
  b = jax.jit(lambda p: vmap.apply(p, images, images, masks))(params)
  for key in keys:
    scale = max(float(np.abs(a[key]).max()), 1.0)
    np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6 * scale,
                               err_msg=key)
