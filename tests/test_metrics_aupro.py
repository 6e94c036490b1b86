"""AUPRO: MVTec reference and legacy cflow-200 against references in-test."""
import numpy as np
import pytest
from scipy import ndimage
from skimage import measure
from sklearn import metrics as skm

from moeclip_jax.eval import aupro


def _reference_mvtec_aupro(maps, masks, limit=0.3):
  """Independent re-statement of the MVTec AD reference (spec §4.4)."""
  fp_change = np.zeros(maps.shape, np.float64)
  pro_change = np.zeros(maps.shape, np.float64)
  num_ok, num_regions = 0, 0
  for i, gt in enumerate(masks):
    lab, n = ndimage.label(gt, structure=np.ones((3, 3), int))
    num_regions += n
    fp_change[i][lab == 0] = 1.0
    num_ok += int(np.sum(lab == 0))
    for k in range(1, n + 1):
      region = lab == k
      pro_change[i][region] = 1.0 / region.sum()
  flat = maps.ravel()
  order = np.argsort(flat)[::-1]
  s = flat[order]
  fpr = np.cumsum(fp_change.ravel()[order]) / num_ok
  pro = np.cumsum(pro_change.ravel()[order]) / num_regions
  keep = np.append(np.diff(s) != 0, True)
  x = np.concatenate([[0.0], fpr[keep], [1.0]])
  y = np.concatenate([[0.0], pro[keep], [1.0]])
  x = np.minimum(x, 1.0)
  y = np.minimum(y, 1.0)
  corr = 0.0
  if limit not in x:
    ins = int(np.searchsorted(x, limit, "right"))
    y_at = y[ins - 1] + (y[ins] - y[ins - 1]) * (limit - x[ins - 1]) / (
        x[ins] - x[ins - 1])
    corr = 0.5 * (y_at + y[ins - 1]) * (limit - x[ins - 1])
  m = x <= limit
  x, y = x[m], y[m]
  return (np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + corr) / limit


def _reference_cflow200(masks, amaps, steps=200, expect_fpr=0.3):
  """Loop form of AnomalyCLIP's cal_pro_score semantics (re-labels each th)."""
  lo, hi = amaps.min(), amaps.max()
  delta = (hi - lo) / steps
  pros, fprs = [], []
  for th in np.arange(lo, hi, delta):
    pred = amaps > th
    per_region = []
    for p, m in zip(pred, masks):
      for reg in measure.regionprops(measure.label(m)):
        hit = p[reg.coords[:, 0], reg.coords[:, 1]].sum()
        per_region.append(hit / reg.area)
    inv = 1 - masks
    fprs.append(np.logical_and(inv, pred).sum() / inv.sum())
    pros.append(np.mean(per_region))
  fprs, pros = np.array(fprs), np.array(pros)
  k = fprs < expect_fpr
  f = fprs[k]
  f = (f - f.min()) / (f.max() - f.min())
  return skm.auc(f, pros[k])


def _blobs(rng, n, h, w, quantise=None):
  masks = np.zeros((n, h, w), np.uint8)
  for i in range(n):
    for _ in range(rng.integers(0, 4)):
      y, x = rng.integers(0, h), rng.integers(0, w)
      masks[i, y:y + rng.integers(1, 6), x:x + rng.integers(1, 6)] = 1
  masks[0, 0, :3] = 1  # touches the border
  masks[0, h - 1, w - 1] = 1  # single pixel in a corner
  masks[-1, h // 2, w // 2] = 1  # isolated single pixel
  maps = rng.normal(size=(n, h, w)) + 1.5 * masks
  if quantise:
    maps = np.round(maps * quantise) / quantise
  return maps.astype(np.float32), masks


@pytest.mark.parametrize("quantise", [None, 2, 8])
@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
def test_mvtec_aupro_matches_reference(quantise, limit):
  rng = np.random.default_rng(3)
  maps, masks = _blobs(rng, 6, 24, 20, quantise)
  regions = aupro.label_regions(masks)
  ref = _reference_mvtec_aupro(maps, masks, limit)
  host = aupro.mvtec_aupro(maps, regions, limit, path="host")
  dev = aupro.mvtec_aupro(maps, regions, limit, path="device")
  assert abs(host - ref) < 1e-6
  assert abs(dev - ref) < 1e-6


def test_mvtec_aupro_exact_limit_point_and_perfect_maps():
  masks = np.zeros((2, 5, 5), np.uint8)
  masks[0, 0, 0] = 1
  masks[1, 2:4, 2:4] = 1
  maps = masks.astype(np.float32)  # perfect separation, heavy ties
  regions = aupro.label_regions(masks)
  assert abs(aupro.mvtec_aupro(maps, regions, path="host") - 1.0) < 1e-12
  assert abs(aupro.mvtec_aupro(maps, regions, path="device") - 1.0) < 1e-12
  const = np.zeros_like(maps)
  ref = _reference_mvtec_aupro(const, masks)
  assert abs(aupro.mvtec_aupro(const, regions, path="host") - ref) < 1e-12


def test_regions_are_labelled_once_per_stack_and_8_connected():
  masks = np.zeros((2, 4, 4), np.uint8)
  masks[0, 0, 0] = masks[0, 1, 1] = 1  # diagonal: one region (8-conn.)
  masks[1, 0, 0] = 1  # same place, other image: a separate region
  regions = aupro.label_regions(masks)
  assert regions.num_regions == 2
  assert list(regions.areas[1:]) == [2, 1]


def test_regions_cache_roundtrip(tmp_path):
  masks = np.zeros((1, 4, 4), np.uint8)
  masks[0, 1:3, 1:3] = 1
  regions = aupro.label_regions(masks)
  regions.save(str(tmp_path / "r.npz"))
  again = aupro.Regions.load(str(tmp_path / "r.npz"))
  np.testing.assert_array_equal(again.labels, regions.labels)


def test_undefined_aupro_without_regions():
  masks = np.zeros((2, 4, 4), np.uint8)
  regions = aupro.label_regions(masks)
  maps = np.random.default_rng(0).random((2, 4, 4))
  assert aupro.mvtec_aupro(maps, regions, path="host") is None
  assert aupro.legacy_cflow200_aupro(maps, regions) is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_legacy_cflow200_matches_loop(dtype):
  rng = np.random.default_rng(5)
  maps, masks = _blobs(rng, 4, 16, 16)
  maps = maps.astype(dtype)
  regions = aupro.label_regions(masks)
  ours = aupro.legacy_cflow200_aupro(maps, regions)
  ref = _reference_cflow200(masks, maps)
  assert abs(ours - ref) < 1e-9


def test_regions_do_not_cross_stacked_image_borders():
  masks = np.zeros((2, 3, 3), np.uint8)
  masks[0, 2, :] = 1  # bottom row of image 0
  masks[1, 0, :] = 1  # top row of image 1
  regions = aupro.label_regions(masks)
  assert regions.num_regions == 2
  assert regions.labels.shape == (2, 3, 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_count_below_is_exact(dtype):
  rng = np.random.default_rng(7)
  scores = rng.normal(size=20000).astype(dtype)
  ths = aupro.legacy_thresholds(scores.min(), scores.max())
  probe = np.concatenate([scores, ths, np.nextafter(ths, np.inf).astype(
      dtype), [scores.min() - 1, scores.max() + 1]]).astype(dtype)
  expected = np.searchsorted(ths, probe, "left")
  np.testing.assert_array_equal(aupro.count_below(ths, probe), expected)


def test_mvtec_aupro_fuzz_ties_and_limits():
  rng = np.random.default_rng(11)
  for trial in range(40):
    n, h, w = rng.integers(1, 4), rng.integers(2, 9), rng.integers(2, 9)
    masks = (rng.random((n, h, w)) < rng.uniform(0.02, 0.6)).astype(np.uint8)
    masks[0, 0, 0] = 1
    masks[-1, -1, -1] = 0
    levels = rng.integers(1, 6)
    maps = rng.integers(0, levels + 1, (n, h, w)) / levels + 0.3 * masks * (
        trial % 2)
    limit = float(rng.choice([0.01, 0.1, 0.3, 0.5, 1.0]))
    regions = aupro.label_regions(masks)
    ref = _reference_mvtec_aupro(maps, masks, limit)
    assert abs(aupro.mvtec_aupro_host(maps, regions, limit) - ref) < 1e-9, trial
    dev = aupro.mvtec_aupro_device(maps, regions, limit)
    assert abs(dev - ref) < 1e-9, trial


def test_sparse_regions_match_dense_labelling():
  rng = np.random.default_rng(12)
  masks = rng.random((5, 17, 13)) < 0.3
  regions = aupro.label_regions(masks)
  for i in range(5):
    lab, num = ndimage.label(masks[i], structure=np.ones((3, 3), int))
    ours = regions.labels[i]
    assert len(np.unique(ours[ours > 0])) == num
    # Same partition: a bijection between our ids and scipy's per image.
    pairs = set(zip(ours[masks[i]].tolist(), lab[masks[i]].tolist()))
    assert len(pairs) == num
  assert regions.num_ok == int((~masks).sum())
  np.testing.assert_array_equal(np.sort(regions.positions),
                                np.flatnonzero(masks))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_legacy_cflow200_matches_loop_on_quantised_maps(seed):
  rng = np.random.default_rng(20 + seed)
  maps, masks = _blobs(rng, 3, 12, 12, quantise=4)  # scores hit thresholds
  regions = aupro.label_regions(masks)
  ours = aupro.legacy_cflow200_aupro(maps, regions)
  assert abs(ours - _reference_cflow200(masks, maps)) < 1e-9
  counts = aupro.LegacyProCounts.empty(
      aupro.legacy_thresholds(maps.min(), maps.max()))
  for i in range(3):  # streaming form, batch-local labels
    counts.add(maps[i:i + 1], aupro.label_regions(masks[i:i + 1]))
  assert abs(counts.value() - ours) < 1e-12
