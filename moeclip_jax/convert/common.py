"""Shared conversion machinery: mapping tables and coverage checks.

A mapping table is data: `{target_path: (source_key, hook)}` where
`target_path` is a '/'-joined Flax params path and `hook` a small transform
from the source array (torch layout) to the Flax layout. `apply_mapping`
uses every source key exactly once and produces every target exactly once,
or fails with one sorted report of what is missing, unused or mis-shaped.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from moeclip_jax.checkpoint import params as ckpt_params

Hook = Callable[[np.ndarray], np.ndarray]
Table = Mapping[str, tuple[str, Hook]]


class ConversionError(ckpt_params.CheckpointError):
  """A checkpoint does not fit the target model; the message lists why."""


# ---- hooks: torch layout -> Flax layout -------------------------------------
def identity(x: np.ndarray) -> np.ndarray:
  return x


def scalar(x: np.ndarray) -> np.ndarray:
  """A 1-element tensor of any rank (some writers store scalars as [1])."""
  return x.reshape(()) if x.size == 1 else x


def linear(x: np.ndarray) -> np.ndarray:
  """torch Linear weight (out, in) -> Flax kernel (in, out)."""
  return x.T


def conv2d(x: np.ndarray) -> np.ndarray:
  """torch Conv2d weight (O, I, H, W) -> Flax kernel (H, W, I, O)."""
  return x.transpose(2, 3, 1, 0)


def heads_in(heads: int) -> Hook:
  """torch (H*Dh, W) projection -> Flax DenseGeneral kernel (W, H, Dh)."""
  return lambda x: x.T.reshape(x.shape[1], heads, -1)


def heads_bias(heads: int) -> Hook:
  return lambda x: x.reshape(heads, -1)


def heads_out(heads: int) -> Hook:
  """torch out-proj (W, H*Dh) -> Flax kernel (H, Dh, W)."""
  return lambda x: x.T.reshape(heads, -1, x.shape[0])


def packed_slice(index: int, hook: Hook) -> Hook:
  """Takes q (0), k (1) or v (2) from a packed in_proj tensor, then `hook`."""
  def fn(x):
    n = x.shape[0] // 3
    return hook(x[index * n:(index + 1) * n])
  return fn


# ---- trees -----------------------------------------------------------------
def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(flatten(value, path + "/"))
    else:
      out[path] = value
  return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def apply_mapping(
    table: Table,
    source: Mapping[str, np.ndarray],
    target_shapes: Mapping[str, tuple[int, ...]],
    *,
    ignore: Callable[[str], bool] = lambda k: False,
    source_name: str = "checkpoint",
    dtype=np.float32,
) -> dict[str, Any]:
  """Builds a nested params dict, checking coverage both ways.

  Raises:
    ConversionError: listing (sorted) unmapped targets, source keys that are
      missing, unused source keys and shape mismatches.
  """
  problems = []
  missing_targets = sorted(set(target_shapes) - set(table))
  problems += [f"no mapping for parameter {p}" for p in missing_targets]
  extra_targets = sorted(set(table) - set(target_shapes))
  problems += [f"mapping names unknown parameter {p}" for p in extra_targets]
  flat, used = {}, set()
  for path in sorted(set(table) & set(target_shapes)):
    key, hook = table[path]
    if key not in source:
      problems.append(f"missing key {key} (for {path})")
      continue
    used.add(key)
    value = np.asarray(hook(np.asarray(source[key])))
    if tuple(value.shape) != tuple(target_shapes[path]):
      problems.append(
          f"shape mismatch {key}: {tuple(np.shape(source[key]))} -> "
          f"{tuple(value.shape)}, model expects {tuple(target_shapes[path])}"
      )
      continue
    flat[path] = value.astype(dtype)
  unused = sorted(k for k in source if k not in used and not ignore(k))
  problems += [f"unused key {k}" for k in unused]
  if problems:
    raise ConversionError(
        f"{source_name}: {len(problems)} problem(s):\n  " + "\n  ".join(problems)
    )
  return unflatten(flat)


sha256_file = ckpt_params.sha256_file  # recorded in meta.json
