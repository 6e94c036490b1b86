"""Streaming metrics: mergeable histograms with an exact error bound.

Per class, scores are binned over [lo, hi] into B >= 2^16 ordered bins
(`bin = floor((s - lo) * B / (hi - lo))`, clipped; monotone in s, so bins keep
the order). Each bin holds: negatives, positives, the sum of PRO weights
(1/|region| of defect pixels), and the min and max score it saw. Histograms
add (counts int64, sums float64 on the host; `device_batch_histogram` is the
jittable per-batch piece whose outputs can be `psum`-ed across devices).

Every metric treats a bin as one tied group. The only error is the unknown
order of positive/negative pairs inside a bin whose min < max (a bin holding
one distinct value is an exact tie, treated as sklearn does), so the bound
below is exact:

* AUROC: 1/2 * sum_b pos_b * neg_b / (P * Q) over non-degenerate bins.
* AP: the true AP lies between "negatives first" and "positives first"
  inside each bin (closed form with harmonic numbers); the bound is the
  larger distance from the estimate.
* F1-max: the estimate is attained (bin edges are real thresholds); the
  upper bound takes all of a bin's positives before its negatives.
* AUPRO: the true curve stays in each bin's box [dFPR x dPRO]: 1/2 of the
  box (full bins) or the whole clipped box (the bin crossing the limit).

`refine` re-reads the data for the bins that dominate the bound and splits
them into sub-bins (the two-pass radix scheme of spec §4.8).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from moeclip_jax.eval import aupro as aupro_lib

DEFAULT_BINS = 1 << 18
MIN_BINS = 1 << 16
# Added to every bound: float64 rounding of the estimate itself.
FLOAT_SLACK = 1e-12


class StreamingToleranceError(RuntimeError):
  """Raised when a streaming bound exceeds its tolerance after refinement."""


def bin_index(scores, lo: float, hi: float, num_bins: int) -> np.ndarray:
  """int32[N] bin ids in [0, num_bins), monotone in the score.

  float32 arithmetic: every step (cast, subtract, scale, clip, truncate) is
  monotone under rounding, which is all the bound needs.
  """
  scale = bin_scale(lo, hi, num_bins)
  t = np.asarray(scores, np.float32).ravel() - np.float32(lo)  # [N]
  t *= scale
  np.clip(t, 0, num_bins - 1, out=t)
  return t.astype(np.int32)


@dataclasses.dataclass
class Cells:
  """Ordered score cells (ascending) with counts, PRO sums and value range."""

  neg: np.ndarray  # int64[C]
  pos: np.ndarray  # int64[C]
  pro: np.ndarray  # float64[C]
  vmin: np.ndarray  # float64[C]
  vmax: np.ndarray  # float64[C]

  def nonempty(self) -> "Cells":
    keep = (self.neg + self.pos) > 0
    return Cells(*(a[keep] for a in dataclasses.astuple(self)))


@dataclasses.dataclass
class Histogram:
  """Mergeable per-class histogram of negatives, positives and PRO weights.

  Attributes:
    lo, hi: the binned score range (values outside go to the end bins; the
      bound stays exact because min/max are tracked per bin).
    cells: per-bin statistics.
    num_regions: ground-truth regions seen (for PRO normalisation).
  """

  lo: float
  hi: float
  cells: Cells
  num_regions: int = 0

  @classmethod
  def empty(cls, lo: float, hi: float, num_bins: int = DEFAULT_BINS):
    if num_bins < MIN_BINS:
      raise ValueError(f"num_bins must be >= {MIN_BINS}, got {num_bins}")
    if not (np.isfinite(lo) and np.isfinite(hi) and hi >= lo):
      raise ValueError(f"bad histogram range lo={lo}, hi={hi}")
    cells = Cells(
        np.zeros(num_bins, np.int64), np.zeros(num_bins, np.int64),
        np.zeros(num_bins), np.full(num_bins, np.inf),
        np.full(num_bins, -np.inf),
    )
    return cls(float(lo), float(hi), cells)

  @property
  def num_bins(self) -> int:
    return self.cells.neg.size

  def add(self, scores, labels, pro_weights=None, num_regions: int = 0):
    """Accumulates one batch on the host.

    Args:
      scores: float[...] finite scores.
      labels: bool/int[...] 1 = positive (defect pixel / anomalous image).
      pro_weights: optional float[...] 1/|region| on defect pixels, else 0.
      num_regions: regions contained in this batch.
    """
    flat = np.ravel(scores)
    idx = bin_index(flat, self.lo, self.hi, self.num_bins)  # [N]
    lab = np.ravel(labels).astype(bool)
    b, c = self.num_bins, self.cells
    pos_count = np.bincount(idx[lab], minlength=b)
    c.pos += pos_count
    c.neg += np.bincount(idx, minlength=b) - pos_count
    if pro_weights is not None:
      c.pro += np.bincount(idx, weights=np.ravel(pro_weights), minlength=b)
    flat64 = flat.astype(np.float64)
    np.minimum.at(c.vmin, idx, flat64)
    np.maximum.at(c.vmax, idx, flat64)
    self.num_regions += int(num_regions)

  def add_device(self, batch: dict[str, Any], num_regions: int = 0) -> None:
    """Adds a `device_batch_histogram` result (same lo/hi/bins)."""
    batch = jax.device_get(batch)
    c = self.cells
    c.neg += np.asarray(batch["neg"], np.int64)
    c.pos += np.asarray(batch["pos"], np.int64)
    c.pro += np.asarray(batch["pro"], np.float64)
    c.vmin = np.minimum(c.vmin, np.asarray(batch["vmin"], np.float64))
    c.vmax = np.maximum(c.vmax, np.asarray(batch["vmax"], np.float64))
    self.num_regions += int(num_regions)

  def merge(self, other: "Histogram") -> "Histogram":
    """Sum of two histograms over the same range and bins."""
    if (self.lo, self.hi, self.num_bins) != (other.lo, other.hi,
                                             other.num_bins):
      raise ValueError("cannot merge histograms with different ranges/bins")
    a, b = self.cells, other.cells
    cells = Cells(a.neg + b.neg, a.pos + b.pos, a.pro + b.pro,
                  np.minimum(a.vmin, b.vmin), np.maximum(a.vmax, b.vmax))
    return Histogram(self.lo, self.hi, cells,
                     self.num_regions + other.num_regions)


def bin_scale(lo: float, hi: float, num_bins: int) -> np.float32:
  """The float32 scale shared by the host and device binning."""
  return np.float32(num_bins / (hi - lo)) if hi > lo else np.float32(0)


@functools.partial(jax.jit, static_argnames=("num_bins",))
def device_batch_histogram(scores, labels, pro_weights, lo, scale, num_bins):
  """Jittable per-batch histogram; outputs can be `psum`-ed across devices.

  Args:
    scores: float[...] scores (cast to float32).
    labels: int[...] 1 positive, 0 negative, -1 ignored (padding).
    pro_weights: float[...] 1/|region| on defect pixels, else 0.
    lo: float32 scalar, the histogram's lower edge.
    scale: float32 scalar from `bin_scale` (same arithmetic as the host).
    num_bins: static number of bins.

  Returns:
    dict of neg, pos (int32[B]), pro (float32[B]), vmin, vmax (float32[B]);
    the metrics are those of the float32-rounded scores. Counts are exact
    while a batch has < 2^31 items per bin; the host adds them into int64 /
    float64 (`Histogram.add_device`).
  """
  s = jnp.ravel(scores).astype(jnp.float32)  # [N]
  lab = jnp.ravel(labels)
  t = jnp.clip((s - lo) * scale, 0, num_bins - 1)
  idx = jnp.where(lab >= 0, t.astype(jnp.int32), num_bins)  # [N], pad -> B
  seg = functools.partial(jax.ops.segment_sum, segment_ids=idx,
                          num_segments=num_bins + 1)
  out = dict(
      pos=seg((lab == 1).astype(jnp.int32)),
      neg=seg((lab == 0).astype(jnp.int32)),
      pro=seg(jnp.ravel(pro_weights).astype(jnp.float32)),
      vmin=jax.ops.segment_min(jnp.where(lab >= 0, s, jnp.inf), idx,
                               num_segments=num_bins + 1),
      vmax=jax.ops.segment_max(jnp.where(lab >= 0, s, -jnp.inf), idx,
                               num_segments=num_bins + 1),
  )
  return {k: v[:num_bins] for k, v in out.items()}


# ----------------------------------------------------------------------------
# Metrics and bounds from ordered cells.
# ----------------------------------------------------------------------------


def _harmonic_gap(a: np.ndarray, c: np.ndarray) -> np.ndarray:
  """H(a + c) - H(a) for nonnegative integer arrays (float64)."""
  a = a.astype(np.float64)
  return special.digamma(a + c + 1.0) - special.digamma(a + 1.0)


def _ap_terms(pos, neg, above_pos, above_neg):
  """Per-cell AP numerators: tied estimate, best and worst in-cell order."""
  tp, fp = above_pos + pos, above_neg + neg
  est = pos * tp / np.maximum(tp + fp, 1)
  n0 = above_pos + above_neg
  best = pos - above_neg * _harmonic_gap(n0, pos)
  worst = pos - (above_neg + neg) * _harmonic_gap(n0 + neg, pos)
  return est, best, worst


def _descending(cells: Cells):
  c = cells.nonempty()
  return Cells(*(a[::-1] for a in dataclasses.astuple(c)))


def cell_metrics(cells: Cells, num_regions: int = 0,
                 fpr_limit: float = 0.3) -> dict[str, Any]:
  """Metric estimates and exact error bounds from ordered cells.

  Args:
    cells: ascending cells (a `Histogram.cells` or a refined list).
    num_regions: number of GT regions (AUPRO normalisation; 0 -> no AUPRO).
    fpr_limit: AUPRO integration limit.

  Returns:
    dict: auroc, ap, f1max, f1_threshold, aupro (None when undefined) and
    `bounds` {auroc, ap, f1max, aupro}.
  """
  c = _descending(cells)
  pos, neg = c.pos.astype(np.int64), c.neg.astype(np.int64)
  num_pos, num_neg = int(pos.sum()), int(neg.sum())
  out = dict(auroc=None, ap=None, f1max=None, f1_threshold=None, aupro=None,
             num_pos=num_pos, num_neg=num_neg,
             bounds=dict(auroc=None, ap=None, f1max=None, aupro=None))
  if num_neg and num_regions:
    out["aupro"], out["bounds"]["aupro"] = _cell_aupro(c, num_regions,
                                                        fpr_limit)
  if num_pos == 0 or num_neg == 0:
    return out
  mixed = c.vmin < c.vmax  # [C] bins whose in-bin order is unknown
  above_pos = np.cumsum(pos) - pos
  above_neg = np.cumsum(neg) - neg
  below_neg = num_neg - above_neg - neg
  pq = float(num_pos) * num_neg
  out["auroc"] = int(np.sum(pos * (2 * below_neg + neg))) / (2.0 * pq)
  out["bounds"]["auroc"] = (
      float(np.sum(np.where(mixed, pos * neg, 0)) / (2 * pq)) + FLOAT_SLACK)
  est, best, worst = _ap_terms(pos, neg, above_pos, above_neg)
  out["ap"] = float(est.sum() / num_pos)
  gap_hi = np.sum(np.where(mixed, best - est, 0.0))
  gap_lo = np.sum(np.where(mixed, est - worst, 0.0))
  out["bounds"]["ap"] = float(max(gap_hi, gap_lo, 0.0) / num_pos + FLOAT_SLACK)
  tp, fp = above_pos + pos, above_neg + neg
  f1 = 2.0 * tp / (tp + fp + num_pos)
  k = int(np.argmax(f1))
  f1_best_case = 2.0 * tp / (tp + above_neg + num_pos)
  upper = max(float(f1[k]), float(np.max(np.where(mixed, f1_best_case, 0))))
  out.update(f1max=float(f1[k]), f1_threshold=float(c.vmin[k]))
  out["bounds"]["f1max"] = upper - float(f1[k]) + FLOAT_SLACK
  return out


def _cell_aupro(c: Cells, num_regions: int, limit: float):
  """MVTec AUPRO estimate and bound from descending cells."""
  num_neg = float(c.neg.sum())
  cum_neg = np.cumsum(c.neg)
  cum_pro = np.cumsum(c.pro)
  x0, x1 = (cum_neg - c.neg) / num_neg, cum_neg / num_neg
  y0, y1 = (cum_pro - c.pro) / num_regions, cum_pro / num_regions
  area = aupro_lib.segment_area(x0, x1, y0, y1, limit)
  width = np.clip(np.minimum(x1, limit) - x0, 0.0, None)
  share = np.where(x1 <= limit, 0.5, 1.0)
  box = np.where(c.vmin < c.vmax, share * width * (y1 - y0), 0.0)
  return float(area.sum() / limit), float(box.sum() / limit) + FLOAT_SLACK


def histogram_metrics(hist: Histogram, fpr_limit: float = 0.3):
  """`cell_metrics` of a histogram."""
  return cell_metrics(hist.cells, hist.num_regions, fpr_limit)


# ----------------------------------------------------------------------------
# Refinement (second pass over the data).
# ----------------------------------------------------------------------------

Batch = tuple[np.ndarray, np.ndarray, np.ndarray | None]


def _cell_error_share(hist: Histogram) -> np.ndarray:
  """float64[B] each bin's share of the AUROC + AUPRO-box bounds."""
  c = hist.cells
  mixed = c.vmin < c.vmax
  pq = max(float(c.pos.sum()) * float(c.neg.sum()), 1.0)
  share = c.pos * c.neg / pq
  if hist.num_regions:
    share = share + c.neg / max(c.neg.sum(), 1) * c.pro / hist.num_regions
  return np.where(mixed, share, 0.0)


def refine(hist: Histogram, batches: Callable[[], Iterable[Batch]],
           max_cells: int = 2048, sub_bins: int = 1024) -> Cells:
  """Splits the bins that dominate the bound with one more pass.

  Args:
    hist: the first-pass histogram.
    batches: returns a fresh iterator over the same (scores, labels,
      pro_weights) batches used for `hist`.
    max_cells: number of bins to split.
    sub_bins: sub-bins per split bin.

  Returns:
    Refined ascending Cells (feed to `cell_metrics`).
  """
  share = _cell_error_share(hist)
  chosen = np.argsort(share)[::-1][:max_cells]
  chosen = np.sort(chosen[share[chosen] > 0])
  if chosen.size == 0:
    return hist.cells
  slot = np.full(hist.num_bins, -1, np.int64)
  slot[chosen] = np.arange(chosen.size)
  lo_c, hi_c = hist.cells.vmin[chosen], hist.cells.vmax[chosen]
  size = chosen.size * sub_bins
  sub = Cells(np.zeros(size, np.int64), np.zeros(size, np.int64),
              np.zeros(size), np.full(size, np.inf), np.full(size, -np.inf))
  for scores, labels, weights in batches():
    flat = np.ravel(scores)
    s = slot[bin_index(flat, hist.lo, hist.hi, hist.num_bins)]
    sel = s >= 0
    s, x = s[sel], flat[sel].astype(np.float64)
    frac = (x - lo_c[s]) / (hi_c[s] - lo_c[s]) * sub_bins
    key = s * sub_bins + np.clip(np.floor(frac), 0, sub_bins - 1).astype(
        np.int64)
    lab = np.ravel(labels)[sel].astype(bool)
    sub.pos += np.bincount(key[lab], minlength=size)
    sub.neg += np.bincount(key[~lab], minlength=size)
    if weights is not None:
      sub.pro += np.bincount(key, np.ravel(weights)[sel], minlength=size)
    np.minimum.at(sub.vmin, key, x)
    np.maximum.at(sub.vmax, key, x)
  return _splice(hist.cells, chosen, sub, sub_bins)


def _splice(cells: Cells, chosen, sub: Cells, sub_bins: int) -> Cells:
  """Replaces the chosen bins by their sub-cells, keeping ascending order."""
  keep = np.ones(cells.neg.size, bool)
  keep[chosen] = False
  kept_bins = np.flatnonzero(keep)
  order_key = np.concatenate([
      kept_bins * (sub_bins + 1),
      (np.repeat(chosen, sub_bins) * (sub_bins + 1)
       + np.tile(np.arange(sub_bins), chosen.size)),
  ])
  order = np.argsort(order_key, kind="stable")
  parts = []
  for a, b in zip(dataclasses.astuple(cells), dataclasses.astuple(sub)):
    parts.append(np.concatenate([a[kept_bins], b])[order])
  return Cells(*parts).nonempty()
