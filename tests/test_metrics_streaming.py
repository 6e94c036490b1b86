"""Streaming histograms: within their reported bound, mergeable, jittable."""
import jax.numpy as jnp
import numpy as np
import pytest

from moeclip_jax.eval import aupro
from moeclip_jax.eval import metrics
from moeclip_jax.eval import streaming


def _data(quantise=None, seed=0, n=12, size=48):
  rng = np.random.default_rng(seed)
  masks = np.zeros((n, size, size), np.uint8)
  masks[n // 2:, 5:15, 8:20] = 1
  masks[::3, 30:33, 0:4] = 1  # touches the border
  masks[1, size - 1, size - 1] = 1  # single pixel
  maps = rng.normal(size=masks.shape) + 1.2 * masks
  if quantise:
    maps = np.round(maps * quantise) / quantise
  return maps.astype(np.float32), masks


def _batches(maps, masks, step=4):
  for i in range(0, maps.shape[0], step):
    regions = aupro.label_regions(masks[i:i + step])
    weights = regions.dense_weights()
    yield maps[i:i + step], masks[i:i + step], weights, regions.num_regions


def _exact(maps, masks):
  ex = metrics.host_binary_metrics(maps, masks)
  ex["aupro"] = aupro.mvtec_aupro_host(maps, aupro.label_regions(masks))
  return ex


def _histogram(maps, masks, bins=streaming.MIN_BINS):
  hist = streaming.Histogram.empty(maps.min(), maps.max(), bins)
  for m, g, w, r in _batches(maps, masks):
    hist.add(m, g, w, r)
  return hist


@pytest.mark.parametrize("quantise", [None, 3, 50])
def test_streaming_within_reported_bound(quantise):
  maps, masks = _data(quantise)
  exact = _exact(maps, masks)
  res = streaming.histogram_metrics(_histogram(maps, masks))
  for key in ("auroc", "ap", "f1max", "aupro"):
    err = abs(res[key] - exact[key])
    assert err <= res["bounds"][key], (key, err, res["bounds"][key])
  if quantise:  # every bin holds one value: exact ties, zero bound
    assert res["bounds"]["auroc"] < 1e-9
    assert abs(res["auroc"] - exact["auroc"]) < 1e-12


def test_coarse_range_bound_is_tight_and_refinement_shrinks_it():
  maps, masks = _data(None, seed=1)
  maps = maps.copy()
  maps[0, 0, 0] = 1e4  # an outlier squeezes everything else into few bins
  exact = _exact(maps, masks)
  hist = _histogram(maps, masks)
  first = streaming.histogram_metrics(hist)
  assert first["bounds"]["auroc"] > 1e-3
  cells = streaming.refine(
      hist, lambda: ((m, g, w) for m, g, w, _ in _batches(maps, masks)))
  again = streaming.cell_metrics(cells, hist.num_regions)
  assert again["bounds"]["auroc"] < first["bounds"]["auroc"] / 10
  for key in ("auroc", "ap", "f1max", "aupro"):
    assert abs(again[key] - exact[key]) <= again["bounds"][key], key


def test_histograms_merge_like_one_pass():
  maps, masks = _data(None, seed=2)
  one = _histogram(maps, masks)
  halves = []
  for part in (slice(0, 6), slice(6, 12)):
    h = streaming.Histogram.empty(maps.min(), maps.max(), streaming.MIN_BINS)
    for m, g, w, r in _batches(maps[part], masks[part]):
      h.add(m, g, w, r)
    halves.append(h)
  merged = halves[0].merge(halves[1])
  np.testing.assert_array_equal(merged.cells.pos, one.cells.pos)
  np.testing.assert_array_equal(merged.cells.neg, one.cells.neg)
  np.testing.assert_allclose(merged.cells.pro, one.cells.pro, rtol=1e-12)
  assert merged.num_regions == one.num_regions


def test_device_batch_histogram_equals_host():
  maps, masks = _data(None, seed=3, n=4, size=32)
  regions = aupro.label_regions(masks)
  weights = regions.dense_weights()
  host = streaming.Histogram.empty(maps.min(), maps.max(), streaming.MIN_BINS)
  host.add(maps, masks, weights, regions.num_regions)
  labels = np.pad(masks.astype(np.int32).ravel(), (0, 100),
                  constant_values=-1)  # padding is ignored
  scores = np.pad(maps.ravel(), (0, 100))
  w = np.pad(weights.ravel().astype(np.float32), (0, 100))
  out = streaming.device_batch_histogram(
      jnp.asarray(scores), jnp.asarray(labels), jnp.asarray(w),
      np.float32(host.lo), streaming.bin_scale(host.lo, host.hi,
                                               host.num_bins),
      num_bins=host.num_bins)
  dev = streaming.Histogram.empty(host.lo, host.hi, host.num_bins)
  dev.add_device(out, regions.num_regions)
  np.testing.assert_array_equal(dev.cells.pos, host.cells.pos)
  np.testing.assert_array_equal(dev.cells.neg, host.cells.neg)
  np.testing.assert_allclose(dev.cells.pro, host.cells.pro, atol=1e-6)


def test_too_few_bins_and_bad_range_are_refused():
  with pytest.raises(ValueError, match="num_bins"):
    streaming.Histogram.empty(0.0, 1.0, 1000)
  with pytest.raises(ValueError, match="range"):
    streaming.Histogram.empty(0.0, np.nan)
