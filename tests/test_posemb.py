"""Positional-table resampling: the official outputs and torch."""

import numpy as np
import pytest

from conftest import require_shared
from moeclip_jax.models import posemb


@pytest.mark.parametrize("grid", [37, 16, 12, 9])
def test_matches_official_resize(grid):
  data = np.load(require_shared("golden", "moeclip_resize_pos_embed.npz"))
  out = posemb.resample_pos_embed(data["pos_embed_in"], grid)
  ref = data[f"pos_embed_out_grid{grid}"]
  assert out.shape == ref.shape == (grid * grid + 1, 64)
  np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.needs_torch
@pytest.mark.parametrize("old,new", [(7, 11), (11, 5), (6, 6)])
def test_matches_torch_bicubic_antialias(old, new):
  import torch
  rng = np.random.default_rng(old * new)
  table = rng.standard_normal((1 + old * old, 8)).astype(np.float32)
  grid = torch.from_numpy(table[1:]).reshape(1, old, old, 8).permute(0, 3, 1, 2)
  ref = torch.nn.functional.interpolate(grid, size=(new, new), mode="bicubic",
                                        antialias=True, align_corners=False)
  ref = ref.permute(0, 2, 3, 1).reshape(new * new, 8).numpy()
  out = posemb.resample_pos_embed(table, new)
  np.testing.assert_allclose(out[1:], ref, atol=1e-5)
  np.testing.assert_array_equal(out[0], table[0])
