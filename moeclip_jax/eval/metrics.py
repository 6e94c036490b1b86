"""Exact binary ranking metrics: AUROC, step AP, trapezoid AP, F1-max.

Definitions follow scikit-learn (spec: peers_and_metrics.md §4.1–4.3):

* AUROC: trapezoid area under the ROC curve whose points are the tie-collapsed
  thresholds; equals the Mann-Whitney statistic with tied pairs counted 1/2.
* AP ("step"): sum over thresholds of (recall_k - recall_{k-1}) * precision_k,
  as `sklearn.metrics.average_precision_score`.
* AP ("trapezoid"): trapezoid area under the PR curve that starts at
  (recall 0, precision 1), anomalib's AUPR; only an explicit option.
* F1-max: max over thresholds of 2 TP / (TP + FP + P), with its threshold.

Two interchangeable paths:

* host (NumPy): all scores and the positives are sorted (`np.sort` is far
  faster than an argsort on CPU), then every quantity is read with
  `searchsorted` at the distinct positive scores (negatives = all minus
  positives). Counts are int64, sums
  float64.
* device (JAX): one `lax.sort` carrying the labels as an extra operand,
  int64 cumsums under x64, tie runs collapsed with `lax.cummax` over masked
  positions (no boolean indexing), static padded shapes.

`binary_metrics(..., path="auto")` takes the device path on GPU/TPU and the
host path on CPU. A class with a single label (P == 0 or Q == 0) is undefined:
every value is None.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

METRIC_KEYS = ("auroc", "ap", "ap_trapezoid", "f1max", "f1_threshold")


def default_path() -> str:
  """'device' on GPU/TPU backends, 'host' on CPU (np.sort is ~50x faster)."""
  return "device" if jax.default_backend() in ("gpu", "tpu", "cuda") else "host"


def _undefined(num_pos: int, num_neg: int) -> dict[str, Any]:
  out = {k: None for k in METRIC_KEYS}
  out.update(num_pos=int(num_pos), num_neg=int(num_neg))
  return out


# ----------------------------------------------------------------------------
# Host path (NumPy).
# ----------------------------------------------------------------------------


def sort_all_and_positives(
    scores: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """Ascending-sorted scores of everything and of the positives.

  Sorting everything once and reading negatives as "all minus positives"
  avoids a boolean copy of the (usually dominant) negatives.

  Args:
    scores: float[N] finite scores (any float dtype; kept as is).
    labels: bool/int[N] binary labels.

  Returns:
    (everything float[N], positives float[P]), each sorted ascending.
  """
  labels = np.asarray(labels).astype(bool, copy=False).ravel()
  scores = np.asarray(scores).ravel()
  return np.sort(scores), np.sort(scores[labels])


def run_starts(sorted_values: np.ndarray) -> np.ndarray:
  """Start index of every run of equal values in an ascending array."""
  if sorted_values.size == 0:
    return np.zeros(0, np.int64)
  change = np.flatnonzero(sorted_values[1:] != sorted_values[:-1]) + 1
  return np.concatenate([[0], change]).astype(np.int64)


def metrics_from_sorted(everything: np.ndarray,
                        pos: np.ndarray) -> dict[str, Any]:
  """All metrics from ascending-sorted scores of everything and positives.

  Args:
    everything: float[N] all scores, ascending.
    pos: float[P] positive scores, ascending.

  Returns:
    dict with auroc, ap, ap_trapezoid, f1max, f1_threshold, num_pos, num_neg.
  """
  num_pos = int(pos.size)
  num_neg = int(everything.size) - num_pos
  if num_pos == 0 or num_neg == 0:
    return _undefined(num_pos, num_neg)
  starts = run_starts(pos)  # [U] first index of each distinct value
  values = pos[starts]  # [U] distinct positive scores, ascending
  run_len = np.diff(np.append(starts, num_pos)).astype(np.int64)  # [U]
  # Negatives below / at-or-below each value = everything minus positives.
  neg_lt = np.searchsorted(everything, values, "left") - starts  # [U]
  neg_le = np.searchsorted(everything, values, "right") - starts - run_len
  neg_lt, neg_le = neg_lt.astype(np.int64), neg_le.astype(np.int64)
  # Mann-Whitney in exact integers: 2U = sum c * (2 #neg< + #neg==).
  twice_u = int(np.sum(run_len * (neg_lt + neg_le)))
  auroc = twice_u / (2.0 * num_pos * num_neg)
  tp = (num_pos - starts).astype(np.float64)  # [U] positives >= value
  fp = (num_neg - neg_lt).astype(np.float64)  # [U] negatives >= value
  precision = tp / (tp + fp)
  ap = float(np.sum(run_len * precision) / num_pos)
  # Previous PR point: everything strictly above `value`.
  tp_prev = tp - run_len
  fp_prev = (num_neg - neg_le).astype(np.float64)
  denom = tp_prev + fp_prev
  prec_prev = np.where(denom > 0, tp_prev / np.maximum(denom, 1), 1.0)
  ap_trap = float(np.sum(run_len * (precision + prec_prev)) / (2.0 * num_pos))
  f1 = 2.0 * tp / (tp + fp + num_pos)
  best = int(np.argmax(f1[::-1]))  # highest threshold among ties of F1
  best = values.size - 1 - best
  return dict(
      auroc=float(auroc),
      ap=ap,
      ap_trapezoid=ap_trap,
      f1max=float(f1[best]),
      f1_threshold=float(values[best]),
      num_pos=num_pos,
      num_neg=num_neg,
  )


def host_binary_metrics(scores, labels) -> dict[str, Any]:
  """Exact metrics on the host (NumPy). See `metrics_from_sorted`."""
  return metrics_from_sorted(*sort_all_and_positives(scores, labels))


# ----------------------------------------------------------------------------
# Device path (JAX).
# ----------------------------------------------------------------------------


def padded_size(n: int) -> int:
  """Static bucket for n: 8 steps per power of two (<= 12.5% padding)."""
  if n <= 1024:
    return 1024
  step = 1 << max(int(n - 1).bit_length() - 4, 0)
  return -(-n // step) * step


def collapse_ties(keys: jax.Array) -> jax.Array:
  """bool[N]: True at the last position of each run of equal sorted keys."""
  return jnp.concatenate([keys[:-1] != keys[1:], jnp.ones((1,), bool)])


def previous_at_marks(values: jax.Array, marks: jax.Array) -> jax.Array:
  """For nondecreasing `values`, the value at the previous marked position.

  Args:
    values: int/float[N] nondecreasing (cumulative counts or sums >= 0).
    marks: bool[N] marked positions.

  Returns:
    [N] value at the last marked index < i (0 before the first mark).
  """
  masked = jnp.where(marks, values, jnp.zeros_like(values))
  running = jax.lax.cummax(masked)  # [N] value at last mark <= i
  return jnp.concatenate([jnp.zeros((1,), values.dtype), running[:-1]])


@jax.jit
def _device_kernel(scores: jax.Array, labels: jax.Array) -> dict[str, Any]:
  """Sort-based exact metrics; labels: int8[N] 1 pos, 0 neg, -1 padding."""
  keys, lab = jax.lax.sort((-scores, labels), num_keys=1)  # descending
  pos = (lab == 1).astype(jnp.int64)
  neg = (lab == 0).astype(jnp.int64)
  tp = jnp.cumsum(pos)  # [N]
  fp = jnp.cumsum(neg)  # [N]
  num_pos, num_neg = tp[-1], fp[-1]
  marks = collapse_ties(keys)  # [N]
  tp_prev = previous_at_marks(tp, marks)
  fp_prev = previous_at_marks(fp, marks)
  d_tp = jnp.where(marks, tp - tp_prev, 0)
  d_fp = jnp.where(marks, fp - fp_prev, 0)
  twice_u = jnp.sum(d_fp * (tp + tp_prev))  # int64, exact
  tp_f, fp_f = tp.astype(jnp.float64), fp.astype(jnp.float64)
  precision = tp_f / jnp.maximum(tp_f + fp_f, 1.0)
  ap = jnp.sum(d_tp * precision) / num_pos
  den_prev = (tp_prev + fp_prev).astype(jnp.float64)
  prec_prev = jnp.where(den_prev > 0, tp_prev / jnp.maximum(den_prev, 1), 1.0)
  ap_trap = jnp.sum(d_tp * (precision + prec_prev)) / (2.0 * num_pos)
  f1 = jnp.where(marks, 2.0 * tp_f / (tp_f + fp_f + num_pos), -1.0)
  best = jnp.argmax(f1)
  return dict(
      twice_u=twice_u,
      ap=ap,
      ap_trapezoid=ap_trap,
      f1max=f1[best],
      f1_threshold=-keys[best],
      num_pos=num_pos,
      num_neg=num_neg,
  )


def device_binary_metrics(scores, labels) -> dict[str, Any]:
  """Exact metrics with one jitted `lax.sort` (GPU/TPU path).

  Args:
    scores: float[N] finite scores (float64 kept, others cast to float32).
    labels: bool/int[N] binary labels.

  Returns:
    Same dict as `host_binary_metrics`.
  """
  scores = np.asarray(scores)
  # float64 stays float64 (x64 is on inside), anything else becomes float32.
  dtype = np.float64 if scores.dtype == np.float64 else np.float32
  scores = scores.astype(dtype, copy=False).ravel()
  labels = np.asarray(labels).astype(np.int8).ravel()
  n = scores.size
  size = padded_size(n)
  scores = np.pad(scores, (0, size - n), constant_values=-np.inf)
  labels = np.pad(labels, (0, size - n), constant_values=-1)
  with jax.enable_x64(True):
    out = _device_kernel(jnp.asarray(scores), jnp.asarray(labels))
    out = jax.device_get(out)
  num_pos, num_neg = int(out["num_pos"]), int(out["num_neg"])
  if num_pos == 0 or num_neg == 0:
    return _undefined(num_pos, num_neg)
  return dict(
      auroc=int(out["twice_u"]) / (2.0 * num_pos * num_neg),
      ap=float(out["ap"]),
      ap_trapezoid=float(out["ap_trapezoid"]),
      f1max=float(out["f1max"]),
      f1_threshold=float(out["f1_threshold"]),
      num_pos=num_pos,
      num_neg=num_neg,
  )


def binary_metrics(scores, labels, path: str = "auto") -> dict[str, Any]:
  """Exact AUROC / AP / trapezoid AP / F1-max (+ threshold) of one set.

  Args:
    scores: float[N] finite scores, higher = more anomalous.
    labels: bool/int[N] binary labels (1 = anomalous).
    path: "host", "device" or "auto" (device on GPU/TPU, host on CPU).

  Returns:
    dict: auroc, ap, ap_trapezoid, f1max, f1_threshold (None when P or Q is
    0), num_pos, num_neg.
  """
  if path == "auto":
    path = default_path()
  if path == "host":
    return host_binary_metrics(scores, labels)
  if path == "device":
    return device_binary_metrics(scores, labels)
  raise ValueError(f"path must be 'host', 'device' or 'auto', got {path!r}")
