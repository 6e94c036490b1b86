"""The eval step (`predict_fn`) and the train step of every method's tiny
config lower for GPU and TPU (`jax.export`, platforms=("cuda", "tpu")) on
this CPU-only machine: a CPU-only code path (a host callback, a CPU custom
call, a platform check that breaks tracing) fails here before a user finds
it on an accelerator. Lowered only, never compiled; the exported output
shapes equal the CPU trace's."""

import functools
import importlib.util

import flax.linen as nn
import jax
from jax import export
import numpy as np
import pytest

import train_fixtures as tf
from moeclip_jax.methods import registry
from moeclip_jax.train import aot
from moeclip_jax.train import step as step_lib

PLATFORMS = ("cuda", "tpu")
CLASSES = ["bottle", "candle"]
BATCH = 2
# method -> (config file, get_config arg)
CONFIGS = {
    "moeclip": ("moeclip_tiny.py", None),
    "inctrl": ("inctrl_vitb16p_240.py", "tiny"),
    "anomalymoe": ("anomalymoe_dinov2_b14.py", "tiny"),
}


def _config(name, arg):
  path = tf.REPO / "configs" / name
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def _context(method, state):
  """The step's context; InCTRL's needs real tiny weights (its text cache
  reads features back to numpy) and K prompt features per class, which
  predict_fn scores against (make_context encodes them only for data with
  held-out classes)."""
  if method.name != "inctrl":
    return aot.abstract_context(method, state.params, CLASSES)
  params = nn.unbox(jax.jit(method.init_fn)(jax.random.key(0)))
  s, k = method.image_size, method.shots
  pixels = np.zeros((len(CLASSES), k, s, s, 3), np.uint8)
  return method.with_prompt_features(
      params, method.make_context(params, CLASSES), pixels)


@pytest.fixture(scope="module", params=list(CONFIGS.values()),
                ids=list(CONFIGS))
def tiny(request):
  config = _config(*request.param)
  method = registry.make_method(config)
  state, labels, tx = aot.abstract_state(method, config.optim)
  context = _context(method, state)
  batch = aot.abstract_batch(method, BATCH)
  return method, state, labels, tx, batch, context


def _export(fn, *args):
  exported = export.export(jax.jit(fn), platforms=PLATFORMS)(*args)
  assert tuple(exported.platforms) == PLATFORMS
  assert exported.mlir_module()  # the StableHLO text exists
  return exported


def _shapes(tree):
  return [(tuple(x.shape), x.dtype) for x in jax.tree.leaves(tree)]


def test_train_step_lowers_for_gpu_and_tpu(tiny):
  method, state, labels, tx, batch, context = tiny
  fn = functools.partial(step_lib.train_step, loss_fn=method.loss_fn, tx=tx,
                         param_labels=labels)
  rng = aot.abstract_rng()
  exported = _export(fn, state, batch, context, rng)
  want = jax.eval_shape(fn, state, batch, context, rng)
  assert _shapes(exported.out_avals) == _shapes(want)


def test_eval_step_lowers_for_gpu_and_tpu(tiny):
  method, state, _, _, batch, context = tiny
  images = batch["query"] if "query" in batch else batch["image"]
  eval_batch = {"image": images, "class_id": batch["class_id"]}
  exported = _export(method.predict_fn, state.params, eval_batch, context)
  want = jax.eval_shape(method.predict_fn, state.params, eval_batch, context)
  assert _shapes(exported.out_avals) == _shapes(want)
  assert _shapes(want["anomaly_map"])[0][0][0] == BATCH
