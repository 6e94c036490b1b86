"""Logical axis names -> NamedShardings, and sharded initialisation.

Parameters are created already sharded: `jax.eval_shape(init)` gives boxed
abstract params carrying logical names, the rules table maps them to mesh
axes, and `jax.jit(init, out_shardings=...)` materialises each shard on its
device only.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from moeclip_jax.sharding import rules as rules_lib

log = logging.getLogger("moeclip_jax.sharding")


class _Active:
  rules: tuple | None = None


def set_rules(rules) -> None:
  """Makes `rules` the process-wide table (presets.configure calls this).

  Not flax's global rules: with those active under `jax.set_mesh`, flax's
  DenseGeneral parameter shape check applies 3-name constraints to its
  flattened 2-D kernel and fails, so moeclip_jax keeps its own table.
  """
  _Active.rules = None if rules is None else tuple(rules)


def active_rules(rules=None) -> tuple:
  """`rules`, else the table set by `set_rules`, else the default one."""
  if rules is not None:
    return tuple(rules)
  return _Active.rules or rules_lib.DEFAULT_RULES


def logical_spec(names: Sequence[str | None], rules=None) -> P:
  """Logical axis names -> PartitionSpec under the active rules."""
  table = dict(active_rules(rules))
  return P(*[table.get(n) if n is not None else None for n in names])


def constrain(x: jax.Array, names: Sequence[str | None], rules=None):
  """`with_sharding_constraint` by logical names; a no-op without a mesh.

  Used at block boundaries (models/clip.py towers): under `jax.set_mesh` it
  pins e.g. [B, T, W] activations to (act_batch, act_len, act_embed).
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  spec = logical_spec(names, rules)
  for dim, axes in zip(x.shape, spec):
    axes = (axes,) if isinstance(axes, str) else (axes or ())
    size = 1
    for axis in axes:
      if axis not in mesh.shape:  # a mesh without our axis names
        return x
      size *= mesh.shape[axis]
    if dim % size:  # e.g. a prompt batch smaller than the data axes
      return x
  return jax.lax.with_sharding_constraint(x, spec)


def logical_shardings(abstract_boxed, mesh, rules=None):
  """Tree of NamedShardings for a boxed (LogicallyPartitioned) tree."""
  specs = nn.get_partition_spec(abstract_boxed)
  return nn.logical_to_mesh_sharding(specs, mesh, list(active_rules(rules)))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh, rules=None) -> NamedSharding:
  """Leading (batch) axis over the data-parallel axes, rest replicated."""
  axes = dict(active_rules(rules))["act_batch"]
  return NamedSharding(mesh, P(axes))


def sharded_init(init_fn: Callable[[jax.Array], Any], rng: jax.Array, mesh,
                 rules=None):
  """Runs `init_fn(rng) -> boxed params` directly into sharded arrays.

  Returns:
    (unboxed params, their NamedSharding tree)
  """
  rules = active_rules(rules)
  abstract = jax.eval_shape(init_fn, rng)
  for name in unruled_names(abstract, rules):
    log.warning("logical axis %r has no sharding rule (replicated)", name)
  shardings = logical_shardings(abstract, mesh, rules)
  # No mesh context here: flax would then constrain DenseGeneral's flattened
  # kernels with 3-D specs; out_shardings alone places every shard.
  params = jax.jit(lambda r: nn.unbox(init_fn(r)),
                   out_shardings=shardings)(rng)
  return params, shardings


def unruled_names(abstract_boxed, rules=None) -> list[str]:
  """Logical names used by `abstract_boxed` that the rules table lacks."""
  known = {name for name, _ in active_rules(rules)}
  specs = jax.tree.leaves(nn.get_partition_spec(abstract_boxed),
                          is_leaf=lambda x: isinstance(x, P))
  used = {n for spec in specs for n in spec if isinstance(n, str)}
  return sorted(used - known)


def unboxed_abstract(abstract_boxed, shardings) -> Any:
  """ShapeDtypeStructs carrying shardings (an orbax restore target)."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      nn.unbox(abstract_boxed), shardings)


def check_divisible(abstract_boxed, mesh, rules=None) -> Sequence[str]:
  """Names of params whose sharded dims do not divide by the mesh axes."""
  bad = []
  shardings = logical_shardings(abstract_boxed, mesh, rules)
  leaves = jax.tree_util.tree_flatten_with_path(nn.unbox(abstract_boxed))[0]
  for (path, x), s in zip(leaves, jax.tree.leaves(shardings)):
    for dim, axes in zip(x.shape, s.spec):
      if axes is None:
        continue
      axes = (axes,) if isinstance(axes, str) else axes
      size = 1
      for a in axes:
        size *= mesh.shape[a]
      if dim % size:
        bad.append(f"{jax.tree_util.keystr(path)} dim {dim} % {size}")
  return bad


def restore_target(abstract, like: dict, mesh) -> Any:
  """An orbax restore target: `abstract`'s tree, each leaf a
  ShapeDtypeStruct carrying a NamedSharding.

  Top-level subtrees present in `like` (live sharded arrays, same structure)
  take their dtype and sharding from it, so a restored checkpoint lands
  directly in those shards; other leaves are replicated on `mesh`.
  """
  repl = replicated(mesh)

  def leaf(x, ref=None):
    ref = x if ref is None else ref
    sharding = getattr(ref, "sharding", None)
    if not isinstance(sharding, NamedSharding):
      sharding = repl
    return jax.ShapeDtypeStruct(x.shape, ref.dtype, sharding=sharding)

  out = {}
  for key, sub in nn.unbox(abstract).items():
    if key in like:
      out[key] = jax.tree.map(leaf, sub, like[key])
    else:
      out[key] = jax.tree.map(leaf, sub)
  return out


def to_host(tree) -> Any:
  """Whole values of (possibly multi-host sharded) arrays as numpy.

  A collective on multi-host runs: every process must call it.
  """
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  # tiled=True: a global jax.Array comes back whole (its global shape).
  return multihost_utils.process_allgather(tree, tiled=True)


def gather_rows(tree) -> Any:
  """Process-local numpy rows -> every process's rows, in process order
  (the row order of `jax.make_array_from_process_local_data`'s global
  arrays). Identity on one process; a collective otherwise."""
  if jax.process_count() == 1:
    return tree
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return multihost_utils.process_allgather(tree, tiled=True)


def data_parallel_per_process(mesh) -> int:
  """Devices the batch axis is split over, per process."""
  size = 1
  for axis in batch_sharding(mesh).spec[0]:
    size *= mesh.shape[axis]
  return max(1, size // jax.process_count())
