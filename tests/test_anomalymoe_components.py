"""AnomalyMoE component masks: coreset, k-means clusters, filter, storage."""

import numpy as np

from moeclip_jax.data import components


def _two_part_maps(n=4, g=8, dim=16, seed=0):
  """Feature maps whose left half is part A and right half part B."""
  rng = np.random.default_rng(seed)
  a, b = rng.standard_normal((2, dim)) * 3
  maps = []
  for _ in range(n):
    fmap = np.empty((g, g, dim), np.float32)
    fmap[:, : g // 2] = a + 0.1 * rng.standard_normal((g, g // 2, dim))
    fmap[:, g // 2:] = b + 0.1 * rng.standard_normal((g, g - g // 2, dim))
    maps.append(fmap)
  return maps


def test_greedy_coreset_picks_spread_points():
  pts = np.array([[0.0, 0], [0.1, 0], [10, 0], [0, 10], [0.05, 0.05]])
  picked = components.greedy_coreset(pts, ratio=0.6, proj_dim=2)
  assert len(picked) == 3
  assert {tuple(p) for p in picked[1:]} <= {(10.0, 0.0), (0.0, 10.0),
                                            (0.0, 0.0), (0.1, 0.0)}
  assert any(p[0] == 10 for p in picked) and any(p[1] == 10 for p in picked)


def test_clusters_recover_parts_and_roundtrip(tmp_path):
  maps = _two_part_maps()
  centres, keep = components.fit_class(maps, image_size=64, k=2, ratio=0.25)
  model = components.ComponentModel({"cls": centres}, {"cls": keep}, 64)
  masks = model.masks("cls", maps[0])
  assert masks.shape[1:] == (64, 64) and masks.dtype == np.uint8
  left = np.zeros((64, 64), bool)
  left[:, :32] = True
  # Each kept cluster covers (mostly) one half of the image.
  for m in masks:
    frac_left = (m.astype(bool) & left).sum() / max(m.sum(), 1)
    assert frac_left > 0.9 or frac_left < 0.1
  model.save(tmp_path)
  again = components.ComponentModel.load(tmp_path)
  np.testing.assert_array_equal(again.centres["cls"], centres)
  assert again.keep == {"cls": keep}


def test_background_filter_drops_corner_clusters():
  probs = np.zeros((2, 64, 64), np.float32)
  probs[0, 20:40, 20:40] = 1.0  # a centred part
  probs[1] = 1.0 - probs[0]  # the background touching all corners
  masks = components.otsu_masks(probs)
  assert components.background_filter(probs, masks) == [0]


def test_saved_masks_roundtrip(tmp_path):
  masks = (np.random.default_rng(0).random((3, 40, 40)) > 0.5).astype(
      np.uint8)
  np.savez_compressed(tmp_path / "m.npz", masks=np.packbits(masks),
                      shape=np.array(masks.shape))
  np.testing.assert_array_equal(components.load_masks(tmp_path / "m.npz"),
                                masks)
  assert components.image_id("/d", "/d/cls/train/good/1.png") == (
      "cls__train__good__1.png")
