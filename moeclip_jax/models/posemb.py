"""Positional-table resampling to a new patch grid.

The official MoECLIP resizes OpenAI's 24x24 table to 37x37 with torch
`F.interpolate(mode="bicubic", antialias=True, align_corners=False)`. With
`antialias=True` torch uses the PIL-style separable kernel (Keys cubic with
a = -0.5, support widened by 1/scale when downsampling, weights renormalised
over in-range taps), which is what `jax.image.resize(method="cubic",
antialias=True)` computes -- not torch's plain A = -0.75 bicubic.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def grid_size(num_rows: int, num_prefix: int = 1) -> int:
  """Side G of a table with `num_prefix` + G*G rows; raises if not square."""
  side = math.isqrt(num_rows - num_prefix)
  if side * side != num_rows - num_prefix:
    raise ValueError(
        f"positional table has {num_rows} rows: not {num_prefix} + G*G"
    )
  return side


def resample_pos_embed(
    table: np.ndarray, new_grid: int, num_prefix: int = 1
) -> np.ndarray:
  """Resamples [num_prefix + G*G, W] to [num_prefix + g*g, W] (prefix kept)."""
  old_grid = grid_size(table.shape[0], num_prefix)
  if old_grid == new_grid:
    return np.asarray(table)
  prefix, grid = table[:num_prefix], table[num_prefix:]
  width = table.shape[1]
  grid = jnp.asarray(grid, jnp.float32).reshape(old_grid, old_grid, width)
  out = jax.image.resize(
      grid, (new_grid, new_grid, width), method="cubic", antialias=True
  )  # [g, g, W]
  out = np.asarray(out).reshape(new_grid * new_grid, width)
  return np.concatenate([np.asarray(prefix, np.float32), out], 0).astype(
      table.dtype
  )
