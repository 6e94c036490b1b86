"""A method's train step from shapes alone: lower / compile / export it
without allocating the model.

`abstract_state` builds the TrainState of `jax.ShapeDtypeStruct`s (sharded
on a mesh when one is given) exactly as the loop builds the real one;
`abstract_batch` / `abstract_context` give the step's other inputs;
`jit_train_step` is the loop's own jitted step (donated state, batch over
the data axes). Used by the loop, benchmarks/remat_memory.py,
benchmarks/suite.py and the AOT tests (tests/test_mesh_vitl.py,
tests/test_lowering_platforms.py).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from moeclip_jax.optim import masks, optimizers
from moeclip_jax.sharding import partition
from moeclip_jax.train import state as state_lib
from moeclip_jax.train import step as step_lib

STEP_KEYS = ("image", "mask", "label", "class_id")

# Batch field -> (shape from (B, S, method), dtype): the step's inputs as
# the methods' train data yields them (normalised float images).
BATCH_FIELDS = {
    "image": (lambda b, s, m: (b, s, s, 3), jnp.float32),
    "query": (lambda b, s, m: (b, s, s, 3), jnp.float32),
    "prompts": (lambda b, s, m: (b, m.shots, s, s, 3), jnp.float32),
    "mask": (lambda b, s, m: (b, s, s), jnp.float32),
    "component_masks": (lambda b, s, m: (b, m.component_slots, s, s),
                        jnp.float32),
    "label": (lambda b, s, m: (b,), jnp.int32),
    "class_id": (lambda b, s, m: (b,), jnp.int32),
}


def batch_keys(method) -> tuple[str, ...]:
  return tuple(getattr(method, "batch_keys", STEP_KEYS))


def param_labels(method, params):
  """The trainable / frozen / state label of every leaf."""
  return masks.labels(params, method.trainable_patterns,
                      method.frozen_patterns,
                      tuple(getattr(method, "state_patterns", ())))


def make_tx(method, optim_config, labels):
  """The method's own optimizer if it has one, else `optimizers.make_tx`."""
  if hasattr(method, "make_tx"):
    return method.make_tx(labels)
  return optimizers.make_tx(optim_config, labels)


def _with_sharding(tree, sharding):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      tree)


def abstract_state(method, optim_config, mesh=None, boxed=None):
  """(TrainState of ShapeDtypeStructs, labels, tx); no array is allocated.

  Args:
    method: a trainer method (methods/base.py).
    optim_config: `config.optim` (used unless the method has `make_tx`).
    mesh: shard the state as the loop does (params by their logical axes,
      optimizer state as `tx.init` compiles it); None: no shardings.
    boxed: the boxed abstract params, if already built (else
      `jax.eval_shape(method.init_fn, key)`).
  """
  if boxed is None:
    boxed = jax.eval_shape(method.init_fn, jax.random.key(0))
  if mesh is None:
    params = nn.unbox(boxed)
  else:
    params = partition.unboxed_abstract(
        boxed, partition.logical_shardings(boxed, mesh))
  labels = param_labels(method, params)
  tx = make_tx(method, optim_config, labels)
  opt_state = jax.eval_shape(tx.init, params)
  step = jax.ShapeDtypeStruct((), jnp.int32)
  if mesh is not None:
    repl = partition.replicated(mesh)
    compiled = jax.jit(tx.init).lower(params).compile()
    opt_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(
            x.shape, x.dtype, sharding=s if isinstance(
                s, jax.sharding.NamedSharding) else repl),
        opt_state, compiled.output_shardings)
    step = jax.ShapeDtypeStruct((), jnp.int32, sharding=repl)
  return state_lib.TrainState(step=step, params=params,
                              opt_state=opt_state), labels, tx


def abstract_batch(method, batch_size: int, mesh=None) -> dict:
  """The step's batch as ShapeDtypeStructs (split over the data axes)."""
  size = method.image_size
  sharding = None if mesh is None else partition.batch_sharding(mesh)
  batch = {}
  for key in batch_keys(method):
    shape, dtype = BATCH_FIELDS[key]
    batch[key] = jax.ShapeDtypeStruct(shape(batch_size, size, method),
                                      dtype, sharding=sharding)
  return batch


def abstract_context(method, params, class_names: Sequence[str],
                     mesh=None) -> Any:
  """`method.make_context(params, class_names)` traced, not run
  (replicated on `mesh`)."""
  context = jax.eval_shape(
      lambda p: method.make_context(p, list(class_names)), params)
  if mesh is None:
    return context
  return _with_sharding(context, partition.replicated(mesh))


def abstract_rng(mesh=None) -> jax.ShapeDtypeStruct:
  rng = jax.eval_shape(lambda: jax.random.key(0))
  sharding = None if mesh is None else partition.replicated(mesh)
  return jax.ShapeDtypeStruct(rng.shape, rng.dtype, sharding=sharding)


def jit_train_step(method, tx, labels, state, mesh):
  """The loop's step: `step(state, batch, context, rng) -> (state,
  scalars)`, state donated and kept in its shardings, batch over the data
  axes, context and rng replicated."""
  fn = functools.partial(step_lib.train_step, loss_fn=method.loss_fn, tx=tx,
                         param_labels=labels)
  state_sh = jax.tree.map(lambda x: x.sharding, state)
  repl = partition.replicated(mesh)
  return jax.jit(fn, donate_argnums=(0,),
                 in_shardings=(state_sh, partition.batch_sharding(mesh), repl,
                               repl),
                 out_shardings=(state_sh, repl))


def compile_train_step(method, optim_config, mesh, batch_size: int,
                       class_names: Sequence[str] = ("candle",)):
  """The sharded train step compiled ahead of time from shapes:
  (compiled, abstract state)."""
  state, labels, tx = abstract_state(method, optim_config, mesh)
  batch = abstract_batch(method, batch_size, mesh)
  context = abstract_context(method, state.params, class_names, mesh)
  step = jit_train_step(method, tx, labels, state, mesh)
  with jax.set_mesh(mesh):
    compiled = step.lower(state, batch, context, abstract_rng(mesh)).compile()
  return compiled, state
