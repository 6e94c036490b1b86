"""Device mesh from config: axes data, fsdp, tensor, expert (-1 = the rest).

Axes are built as `AxisType.Auto`: jax's `make_mesh` defaults to Explicit
axes in recent versions, which breaks logical-rule (GSPMD-style) sharding.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import numpy as np

from moeclip_jax.sharding import rules


def mesh_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Resolves one -1 entry so the product equals `num_devices`."""
  shape = [int(sizes.get(axis, 1)) for axis in rules.MESH_AXES]
  free = [i for i, s in enumerate(shape) if s == -1]
  if len(free) > 1:
    raise ValueError(f"mesh {dict(sizes)}: at most one axis may be -1")
  known = math.prod(s for s in shape if s != -1)
  if free:
    if num_devices % known:
      raise ValueError(f"mesh {dict(sizes)}: {num_devices} devices not "
                       f"divisible by {known}")
    shape[free[0]] = num_devices // known
  if math.prod(shape) != num_devices:
    raise ValueError(f"mesh {dict(sizes)} needs {math.prod(shape)} devices, "
                     f"have {num_devices}")
  return tuple(shape)


def make_mesh(sizes: Mapping[str, int] | Any | None = None,
              devices=None) -> jax.sharding.Mesh:
  """A mesh over `devices` (default: all) with the four named axes."""
  devices = list(devices if devices is not None else jax.devices())
  sizes = dict(sizes or {"data": -1})
  shape = mesh_shape(sizes, len(devices))
  auto = (jax.sharding.AxisType.Auto,) * len(shape)
  try:
    return jax.make_mesh(shape, rules.MESH_AXES, axis_types=auto,
                         devices=devices)
  except (TypeError, ValueError):
    arr = np.asarray(devices).reshape(shape)
    return jax.sharding.Mesh(arr, rules.MESH_AXES, axis_types=auto)
