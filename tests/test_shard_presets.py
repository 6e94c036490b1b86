"""Mesh presets on 8 fake devices: 3 MoECLIP train steps match one device.

Each preset (configs/mesh/*.py) shards the tiny MoECLIP differently (data,
fsdp, tensor, expert); the loss and every parameter after 3 steps must equal
the single-device run's, and the block-boundary activation constraint must
really be applied under the preset's mesh.
"""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train_fixtures as tf
from moeclip_jax.methods import registry
from moeclip_jax.sharding import partition
from moeclip_jax.sharding import presets
from moeclip_jax.train import data as data_lib
from moeclip_jax.train import loop
from moeclip_jax.utils import tree as tree_utils

PRESETS = ("pure_dp", "fsdp", "tensor_parallel", "expert_parallel")
MESHES = {"pure_dp": {"data": 8}, "fsdp": {"fsdp": 8},
          "tensor_parallel": {"data": 2, "tensor": 4},
          "expert_parallel": {"data": 2, "expert": 4}}
STEPS = 3


@pytest.fixture(autouse=True)
def _reset_rules():
  yield
  partition.set_rules(None)


def _overlay(name):
  path = tf.REPO / "configs" / "mesh" / f"{name}.py"
  spec = importlib.util.spec_from_file_location(f"mesh_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """(config, 3 numpy batches) shared by every run."""
  root = tf.synthetic_mvtec(tmp_path_factory.mktemp("syn") / "mvtec")
  config = tf.tiny_config(root, log_every=1)
  method = registry.make_method(config)
  data = data_lib.TrainData(config, method, 1)
  batches = []
  for _ in range(STEPS):
    batches.append({k: v for k, v in data.next().items()
                    if k in loop.STEP_KEYS})
  return config, batches


def _train(config, batches, workdir, devices=None):
  """Losses and final params of STEPS steps on `config`'s mesh."""
  run = loop.Run(config=config, workdir=workdir)
  run.mesh = presets.configure(config, devices=devices)
  loop.build_state(run)
  run.context = jax.device_put(
      run.method.make_context(run.state.params, ["a", "b"]),
      partition.replicated(run.mesh))
  step_fn = loop._jit_step(run)  # pylint: disable=protected-access
  rng = jax.random.key(config.seed + 1)
  batch_sh = partition.batch_sharding(run.mesh)
  losses = []
  with jax.set_mesh(run.mesh):
    for batch in batches:
      batch = data_lib.to_global(batch, batch_sh)
      run.state, scalars = step_fn(run.state, batch, run.context, rng)
      losses.append(float(scalars["loss"]))
  params = dict(tree_utils.flatten_with_names(jax.device_get(run.state.params)))
  return losses, params, run


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
  config, batches = setup
  one = jax.devices()[:1]
  losses, params, _ = _train(config, batches, tmp_path_factory.mktemp("ref"),
                             devices=one)
  partition.set_rules(None)
  return losses, params


@pytest.mark.parametrize("name", PRESETS)
def test_preset_matches_single_device(name, setup, reference, tmp_path):
  config, batches = setup
  config = _overlay(name).apply(config.copy_and_resolve_references())
  losses, params, run = _train(config, batches, tmp_path)
  want = {k: v for k, v in MESHES[name].items()}
  assert {k: v for k, v in run.mesh.shape.items() if v > 1} == want
  ref_losses, ref_params = reference
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)
  for key, value in ref_params.items():
    np.testing.assert_allclose(params[key], value, atol=1e-5, err_msg=key)


def _constraint_specs(name, setup):
  """Sharding specs of with_sharding_constraint ops in the lowered step."""
  config, batches = setup
  config = _overlay(name).apply(config.copy_and_resolve_references())
  mesh = presets.configure(config)
  method = registry.make_method(config)
  params, _ = partition.sharded_init(method.init_fn, jax.random.key(0), mesh)
  image = data_lib.to_global({"image": batches[0]["image"]},
                             partition.batch_sharding(mesh))["image"]

  def forward(p, x):
    return method.module.apply({"params": p}, x)[0]["det_feature"]

  with jax.set_mesh(mesh):
    text = jax.jit(forward).lower(params, image).as_text()
  return text


@pytest.mark.parametrize("name", ["fsdp", "tensor_parallel"])
def test_block_boundary_constraint_applied(name, setup):
  text = _constraint_specs(name, setup)
  # One constraint per block: tiny vision tower has 4 blocks; batch split
  # over the data-parallel axes (fsdp 8, or data 2).
  want = "fsdp" if name == "fsdp" else "data"
  lines = [l for l in text.splitlines() if "sharding_constraint" in l
           or "mhlo.sharding" in l and "custom_call" in l]
  assert len(lines) >= 4, text[:2000]
  assert any(want in l for l in lines)


def test_presets_overlay_as_config_file():
  config = presets.overlay_config(
      "tensor_parallel", str(tf.REPO / "configs" / "mesh" / "x.py"),
      "moeclip_tiny")
  assert config.mesh_preset == "tensor_parallel"
  assert dict(config.mesh)["tensor"] == 4
  rules = dict(presets.rules_from_config(config))
  assert rules["heads"] == "tensor" and rules["embed"] == "fsdp"
  dp = presets.rules_from_config(_overlay("pure_dp").apply(tf.load_config()))
  assert dict(dp)["embed"] is None and dict(dp)["act_batch"] == ("data", "fsdp")
  with pytest.raises(ValueError, match="unknown mesh preset"):
    presets.apply(tf.load_config(), "pipeline")
  with pytest.raises(ValueError, match="unknown logical names"):
    presets.merge_rules({"embd": "fsdp"})
  assert jnp.asarray(0).ndim == 0
