"""Exact AUROC / AP / F1-max equal scikit-learn on host and device paths."""
import numpy as np
import pytest
from sklearn import metrics as skm

from moeclip_jax.eval import metrics

PATHS = ("host", "device")


def _sklearn(labels, scores):
  precision, recall, _ = skm.precision_recall_curve(labels, scores)
  denom = precision + recall
  f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom,
                                                                1), 0)
  return dict(auroc=skm.roc_auc_score(labels, scores),
              ap=skm.average_precision_score(labels, scores),
              ap_trapezoid=skm.auc(recall, precision),
              f1max=f1.max())


def _cases():
  rng = np.random.default_rng(0)
  n = 5000
  labels = rng.random(n) < 0.2
  yield "random", rng.normal(size=n) + labels, labels
  yield "quantised", np.round(rng.normal(size=n) * 2 + labels) / 2, labels
  yield "few_levels", rng.integers(0, 3, n).astype(np.float32), labels
  yield "all_equal", np.full(n, 0.5), labels
  yield "tiny", np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])
  yield "tiny_tie", np.array([0.5, 0.5]), np.array([0, 1])
  yield "perfect", np.arange(10.0), np.arange(10) >= 5
  yield "inverted", -np.arange(10.0), np.arange(10) >= 5
  yield "float64_close", 1.0 + rng.integers(0, 4, 300) * 1e-12, (
      rng.random(300) < 0.5)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", list(_cases()), ids=lambda c: c[0])
def test_matches_sklearn(case, path):
  _, scores, labels = case
  ours = metrics.binary_metrics(scores, labels, path=path)
  ref = _sklearn(labels, scores)
  for key, value in ref.items():
    assert abs(ours[key] - value) < 1e-6, (key, ours[key], value)
  assert ours["num_pos"] == int(np.sum(labels))


@pytest.mark.parametrize("path", PATHS)
def test_f1_threshold_reproduces_f1max(path):
  rng = np.random.default_rng(1)
  labels = rng.random(800) < 0.3
  scores = np.round(rng.normal(size=800) + labels, 1)
  ours = metrics.binary_metrics(scores, labels, path=path)
  pred = scores >= ours["f1_threshold"]
  tp = np.sum(pred & labels)
  f1 = 2 * tp / (pred.sum() + labels.sum())
  assert abs(f1 - ours["f1max"]) < 1e-12


@pytest.mark.parametrize("path", PATHS)
def test_single_label_is_undefined_not_zero(path):
  ours = metrics.binary_metrics(np.arange(5.0), np.ones(5), path=path)
  assert all(ours[k] is None for k in metrics.METRIC_KEYS)
  assert ours["num_neg"] == 0


def test_host_and_device_agree_beyond_float32_cumsum_range():
  # 2^24 + extra items: a float32 cumsum would lose counts here.
  rng = np.random.default_rng(2)
  n = (1 << 24) + 4097
  scores = rng.integers(0, 1000, n).astype(np.float32)
  labels = rng.random(n) < 0.01
  host = metrics.binary_metrics(scores, labels, path="host")
  dev = metrics.binary_metrics(scores, labels, path="device")
  for key in ("auroc", "ap", "ap_trapezoid", "f1max"):
    assert abs(host[key] - dev[key]) < 1e-9, key


def test_padded_size_is_static_bucketed():
  assert metrics.padded_size(10) == 1024
  for n in (1025, 5000, 123457, 1 << 24):
    size = metrics.padded_size(n)
    assert n <= size <= n * 1.125 + 1


def test_unknown_path():
  with pytest.raises(ValueError, match="path"):
    metrics.binary_metrics([0.0, 1.0], [0, 1], path="gpu")
