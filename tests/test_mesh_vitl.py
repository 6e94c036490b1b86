"""ViT-L/14@518 MoECLIP under every mesh preset, from abstract shapes only.

* every parameter's partition spec divides its shape on 8 devices;
* a training checkpoint item holds adapters + optimizer state only (no
  backbone weights): a size check on the abstract state;
* (slow) the full train step lowers and compiles ahead of time on a
  (data 2 x fsdp 4) CPU mesh without allocating the model.
"""

import math

import jax
import jax.numpy as jnp
import pytest

import train_fixtures as tf
from moeclip_jax.methods import registry
from moeclip_jax.methods.moeclip import model as model_lib
from moeclip_jax.sharding import partition
from moeclip_jax.sharding import presets
from moeclip_jax.train import aot
from moeclip_jax.train import state as state_lib
from moeclip_jax.utils import tree as tree_utils

PRESETS = ("pure_dp", "fsdp", "tensor_parallel", "expert_parallel")


@pytest.fixture(autouse=True)
def _reset_rules():
  yield
  partition.set_rules(None)


@pytest.fixture(scope="module")
def vitl():
  """(config, method, boxed abstract params) of the ViT-L/14@518 MoECLIP."""
  config = tf.load_config("moeclip_vitl14_336.py")
  method = registry.make_method(config)
  assert method.image_size == 518
  abstract = model_lib.abstract_params(method.clip_config, method.config)
  return config, method, abstract


def _nbytes(tree) -> int:
  return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", PRESETS)
def test_every_spec_divides_vitl(name, vitl):
  config, _, abstract = vitl
  mesh = presets.configure(presets.apply(config.copy_and_resolve_references(),
                                         name))
  assert mesh.devices.size == 8
  assert partition.check_divisible(abstract, mesh) == []
  assert partition.unruled_names(abstract) == []
  specs = dict(tree_utils.flatten_with_names(
      jax.tree.map(lambda s: s.spec, partition.logical_shardings(
          abstract, mesh), is_leaf=lambda x: isinstance(
              x, jax.sharding.NamedSharding))))
  used = {a for spec in specs.values() for axes in spec if axes
          for a in ((axes,) if isinstance(axes, str) else axes)
          if mesh.shape[a] > 1}
  expect = {"pure_dp": set(), "fsdp": {"fsdp"}, "tensor_parallel": {"tensor"},
            "expert_parallel": {"expert"}}[name]
  assert used == expect, (name, used)


def _abstract_state(config, method, abstract, mesh=None):
  return aot.abstract_state(method, config.optim, mesh, boxed=abstract)


def test_vitl_checkpoint_holds_no_backbone(vitl):
  config, method, abstract = vitl
  state, labels, _ = _abstract_state(config, method, abstract)
  item = state_lib.checkpoint_item(state, labels)
  backbone = {k: state.params[k] for k in ("img", "txt")}
  assert not set(item["trainable"]) & {"img", "txt"}
  names = [n for n, _ in tree_utils.flatten_with_names(item["trainable"])]
  assert any("lora_b" in n for n in names) and any("router" in n for n in names)
  ckpt_bytes, backbone_bytes = _nbytes(item), _nbytes(backbone)
  print(f"checkpoint item {ckpt_bytes / 2**20:.1f} MiB vs backbone "
        f"{backbone_bytes / 2**20:.1f} MiB")
  assert backbone_bytes > 1.5e9  # ViT-L/14 + text tower in float32
  assert ckpt_bytes < 0.05 * backbone_bytes


@pytest.mark.slow
def test_vitl_train_step_compiles_aot_data2_fsdp4(vitl):
  config, method, _ = vitl
  config = config.copy_and_resolve_references()
  config.mesh = {"data": 2, "fsdp": 4, "tensor": 1, "expert": 1}
  mesh = presets.configure(config)
  compiled, state = aot.compile_train_step(method, config.optim, mesh,
                                           batch_size=8)
  memory = compiled.memory_analysis()
  print("ViT-L/14@518 MoECLIP train step, mesh data 2 x fsdp 4, batch 8:")
  print(memory)
  params_bytes = _nbytes(state.params)
  per_device = memory.argument_size_in_bytes
  # FSDP: each device holds about 1/4 of the (mostly frozen) parameters.
  assert per_device < 0.5 * params_bytes, (per_device, params_bytes)
