"""AnomalyMoE expert parallelism through the generic trainer's step.

Each expert group (6 experts) is split over a 2-way and a 6-way `expert`
mesh axis (the 6-way mesh uses 6 of the 8 fake CPU devices); one
`train.step.train_step` with `method.loss_fn` and `method.make_tx` must give
the loss and parameters of the single-device run, and the expert
parameters must really be sharded on the `expert` axis.
"""

import dataclasses
import functools
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moeclip_jax.methods.anomalymoe import method as method_lib
from moeclip_jax.methods.anomalymoe import model as model_lib
from moeclip_jax.optim import masks
from moeclip_jax.sharding import mesh as mesh_lib
from moeclip_jax.sharding import partition
from moeclip_jax.train import state as state_lib
from moeclip_jax.train import step as step_lib
from moeclip_jax.utils import tree as tree_utils

CONFIG = pathlib.Path(__file__).parent.parent / "configs" / (
    "anomalymoe_dinov2_b14.py")


def _method():
  """The tiny config's method with 2 backbone / decoder blocks (compiles)."""
  spec = importlib.util.spec_from_file_location("am_cfg", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("tiny")
  config.total_steps = 10
  config.optim.warmup_steps = 0
  method = method_lib.AnomalyMoEMethod(config)
  base = model_lib.tiny_config()
  micro = model_lib.tiny_config(
      backbone=dataclasses.replace(base.backbone, depth=2),
      dims=dataclasses.replace(base.dims, decoder_depth=2),
      target_layers=(0, 1), train_fusion=((0,), (1,)), test_fusion=((0, 1),),
      expert_loop="vmap")
  method.config = micro
  method.module = model_lib.AnomalyMoE(micro)
  return method


def _batch(size: int, batch: int = 2) -> dict:
  rng = np.random.default_rng(0)
  masks_ = np.zeros((batch, 2, size, size), np.uint8)
  masks_[:, 0, : size // 2] = 1
  masks_[0, 1, size // 2:, : size // 2] = 1
  return {"image": rng.standard_normal((batch, size, size, 3)).astype(
      np.float32), "component_masks": masks_,
          "class_id": np.zeros((batch,), np.int32)}


def _one_step(method, devices):
  """(loss, flat params after one step, the sharded params before it)."""
  mesh = mesh_lib.make_mesh({"expert": len(devices)}, devices)
  params, _ = partition.sharded_init(method.init_fn, jax.random.key(0), mesh)
  labels = masks.labels(params, method.trainable_patterns,
                        method.frozen_patterns, method.state_patterns)
  tx = method.make_tx(labels)
  repl = partition.replicated(mesh)
  opt_state = jax.jit(tx.init)(params)
  opt_state = jax.tree.map(
      lambda x: x if isinstance(x.sharding, jax.sharding.NamedSharding)
      and x.sharding.mesh == mesh else jax.device_put(x, repl),
      opt_state)
  state = state_lib.TrainState(step=jax.device_put(jnp.zeros((), jnp.int32),
                                                   repl),
                               params=params, opt_state=opt_state)
  fn = functools.partial(step_lib.train_step, loss_fn=method.loss_fn, tx=tx,
                         param_labels=labels)
  batch = jax.device_put(_batch(method.image_size),
                         partition.batch_sharding(mesh))
  with jax.set_mesh(mesh):
    new, scalars = jax.jit(fn)(state, batch, {}, jax.random.key(1))
  flat = dict(tree_utils.flatten_with_names(jax.device_get(new.params)))
  return float(scalars["loss"]), flat, params, scalars


@pytest.fixture(scope="module")
def reference():
  method = _method()
  return method, _one_step(method, jax.devices()[:1])


@pytest.mark.slow
@pytest.mark.parametrize("ways", [2, 6])
def test_expert_parallel_step_matches_single_device(ways, reference):
  method, (ref_loss, ref_params, _, ref_scalars) = reference
  loss, params, sharded, scalars = _one_step(method, jax.devices()[:ways])
  for group in ("patch_experts", "global_experts", "component_experts"):
    leaves = jax.tree.leaves(sharded["model"][group])
    assert leaves
    for leaf in leaves:
      assert leaf.sharding.spec[0] == "expert", (group, leaf.sharding.spec)
      assert len(leaf.sharding.device_set) == ways
      assert leaf.addressable_shards[0].data.shape[0] == 6 // ways
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  for key in ("loss_patch", "loss_global", "loss_component", "loss_esb"):
    np.testing.assert_allclose(scalars[key], ref_scalars[key], rtol=1e-5,
                               atol=1e-7, err_msg=key)
  for key, value in ref_params.items():
    scale = max(float(np.abs(value).max()), 1e-3)
    np.testing.assert_allclose(params[key], value, rtol=1e-5,
                               atol=1e-5 * scale, err_msg=key)
  # The step really changed the experts and the calibration state.
  assert np.any(ref_params["calib/seen"] > 0)
