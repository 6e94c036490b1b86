"""AUPRO: MVTec reference (exact, O(N log N)) and legacy cflow-200, vectorised.

Ground-truth regions are labelled ONCE (8-connectivity, `scipy.ndimage.label`
on the images stacked vertically with an empty row between them, keeping
only the rows that hold defects; ids are unique across the set) and reused
by every variant. `Regions` is sparse (flat positions and ids of the defect
pixels, region areas) and can be saved to / loaded from `.npz`, so a dataset
is labelled once per evaluation resolution.

`mvtec_aupro` (spec §4.4): FPR over OK pixels, PRO = sum of 1/|region| over
covered defect pixels / R, ties collapsed, trapezoid up to `fpr_limit` with a
linear interpolation there, divided by `fpr_limit`. Host path: the scores are
partitioned so only the top `fpr_limit * Q + D` are sorted; the curve is then
built from O(D) segments (a constant-PRO rectangle between consecutive defect
scores, a trapezoid at each defect score), D = defect pixels. Device path: one
`lax.sort` carrying the FP increments and PRO weights.

`legacy_cflow200_aupro` (spec §4.5, AnomalyCLIP `cal_pro_score` semantics):
thresholds `np.arange(min, max, (max - min) / 200)`, "anomalous" iff
score > threshold, PRO = mean over regions of covered fraction, keep FPR < 0.3,
min-max rescale those FPRs, trapezoid. Here it is counting, not re-labelling:
FP counts come from the same sorted top scores, and each defect pixel is
mapped once to the number of thresholds below it.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from moeclip_jax.eval import metrics

_EIGHT = np.ones((3, 3), bool)


@dataclasses.dataclass(frozen=True)
class Regions:
  """Connected ground-truth regions of a stack of masks (sparse).

  Attributes:
    shape: (N, H, W) of the masks.
    positions: int64[D] flat indices of the defect pixels, ascending.
    ids: int32[D] region id of each defect pixel, 1..R unique across the set.
    areas: int64[R + 1] pixel count per id (areas[0] = OK pixel count).
  """

  shape: tuple[int, ...]
  positions: np.ndarray
  ids: np.ndarray
  areas: np.ndarray

  @property
  def num_regions(self) -> int:
    return int(self.areas.size - 1)

  @property
  def num_ok(self) -> int:
    return int(self.areas[0])

  @property
  def labels(self) -> np.ndarray:
    """int32[N, H, W] dense region ids (0 = OK pixel)."""
    dense = np.zeros(int(np.prod(self.shape)), np.int32)
    dense[self.positions] = self.ids
    return dense.reshape(self.shape)

  def weights(self) -> np.ndarray:
    """float64[D]: 1/|region| of each defect pixel."""
    return 1.0 / self.areas[self.ids].astype(np.float64)

  def dense_weights(self) -> np.ndarray:
    """float64[N * H * W]: 1/|region| on defect pixels, 0 elsewhere."""
    dense = np.zeros(int(np.prod(self.shape)))
    dense[self.positions] = self.weights()
    return dense

  def save(self, path: str) -> None:
    """Writes an .npz cache atomically."""
    tmp = f"{path}.tmp.{os.getpid()}.npz"
    np.savez_compressed(tmp, shape=np.asarray(self.shape),
                        positions=self.positions, ids=self.ids,
                        areas=self.areas)
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str) -> "Regions":
    with np.load(path) as data:
      return cls(tuple(int(v) for v in data["shape"]), data["positions"],
                 data["ids"], data["areas"])


def label_regions(masks: np.ndarray) -> Regions:
  """Labels 8-connected regions of binary masks once.

  The images are stacked vertically with an empty row after each (no region
  can cross it), and only the rows holding defects, each followed by the
  next (empty or defect) row, are labelled: one 2-D `ndimage.label` call.

  Args:
    masks: bool/int[N, H, W] (or [H, W]) binary ground truth.

  Returns:
    Sparse Regions with ids unique across the stack.
  """
  masks = np.asarray(masks).astype(bool, copy=False)
  if masks.ndim == 2:
    masks = masks[None]
  n, h, w = masks.shape
  rows = masks.reshape(n * h, w)
  row_any = np.zeros((n, h + 1), bool)  # [N, H + 1], last row: separator
  row_any[:, :h] = rows.any(axis=1).reshape(n, h)
  row_any = row_any.ravel()
  keep = row_any | np.concatenate([[False], row_any[:-1]])
  kept = np.flatnonzero(keep)  # padded row index
  image, row = np.divmod(kept, h + 1)
  source = np.where(row < h, image * h + row, -1)  # [K] mask row or -1
  band = np.zeros((kept.size, w), bool)  # [K, W]
  real = source >= 0
  band[real] = rows[source[real]]
  labels, num = ndimage.label(band, structure=_EIGHT)
  nz = np.flatnonzero(labels)
  positions = source[nz // w].astype(np.int64) * w + nz % w
  ids = labels.ravel()[nz].astype(np.int32)
  areas = np.bincount(ids, minlength=num + 1).astype(np.int64)
  areas[0] = n * h * w - nz.size
  return Regions((n, h, w), positions, ids, areas)


def segment_area(x0, x1, y0, y1, limit):
  """Trapezoid area of the PRO curve segments, clipped at x = limit."""
  full = x1 <= limit
  width = np.clip(np.minimum(x1, limit) - x0, 0.0, None)
  span = np.where(x1 > x0, x1 - x0, 1.0)
  y_cut = y0 + (limit - x0) / span * (y1 - y0)
  y_end = np.where(full, y1, y_cut)
  return width * (y0 + y_end) / 2.0


# ----------------------------------------------------------------------------
# MVTec reference AUPRO.
# ----------------------------------------------------------------------------


def _top_scores(flat: np.ndarray, keep: int) -> np.ndarray:
  """The `keep` largest scores, sorted ascending (partition, then sort)."""
  if keep < flat.size:
    top = np.partition(flat, flat.size - keep)[flat.size - keep:]
  else:
    top = flat.copy()
  top.sort()
  return top


def _count_above(top: np.ndarray, flat: np.ndarray, values: np.ndarray):
  """#flat > v and #flat >= v, exact for v >= top[0].

  Values below top[0] get len(top) (a lower bound; callers only need to know
  that those counts are past the FPR limit).
  """
  n_top = top.size
  gt = n_top - np.searchsorted(top, values, "right")
  ge = n_top - np.searchsorted(top, values, "left")
  at_min = values == top[0]  # ties of the lowest kept value may lie outside
  if at_min.any():
    ge[at_min] = flat.size - np.count_nonzero(flat < top[0])
  return gt.astype(np.int64), ge.astype(np.int64)


def _sorted_defects(flat: np.ndarray, regions: Regions):
  """Distinct defect scores (descending) with counts and PRO sums above."""
  d_scores = flat[regions.positions]
  order = np.argsort(d_scores, kind="stable")
  d_sorted = d_scores[order]  # [D] ascending
  cum_w = np.concatenate([[0.0], np.cumsum(regions.weights()[order])])
  starts = metrics.run_starts(d_sorted)
  ends = np.append(starts[1:], d_sorted.size)
  num_d = d_sorted.size
  rev = slice(None, None, -1)  # highest value first
  return dict(
      values=d_sorted[starts][rev],
      def_gt=(num_d - ends)[rev], def_ge=(num_d - starts)[rev],
      w_gt=(cum_w[-1] - cum_w[ends])[rev],
      w_ge=(cum_w[-1] - cum_w[starts])[rev])


def mvtec_aupro_host(
    scores: np.ndarray, regions: Regions, fpr_limit: float = 0.3
) -> float | None:
  """MVTec-reference AUPRO on the host.

  Between consecutive distinct defect scores the PRO is constant
  (rectangles); at a defect score tied OK pixels and PRO rise together
  (trapezoids). OK-pixel counts are "all minus defect" read from the top
  ceil(limit * Q) + 1 + D scores, the only ones that can matter below the
  limit.

  Args:
    scores: float[N, H, W] anomaly maps (finite).
    regions: `label_regions` of the matching masks.
    fpr_limit: integration limit on the FPR axis.

  Returns:
    AUPRO in [0, 1], or None when there is no region or no OK pixel.
  """
  flat = np.asarray(scores).ravel()
  num_neg, num_regions = regions.num_ok, regions.num_regions
  if num_neg == 0 or num_regions == 0:
    return None
  d = _sorted_defects(flat, regions)
  keep = int(np.ceil(fpr_limit * num_neg)) + 1 + regions.positions.size
  all_gt, all_ge = _count_above(_top_scores(flat, keep), flat, d["values"])
  neg_gt = (all_gt - d["def_gt"]) / num_neg  # [V] FPR just above value
  neg_ge = (all_ge - d["def_ge"]) / num_neg  # [V] FPR at value
  y_gt, y_ge = d["w_gt"] / num_regions, d["w_ge"] / num_regions
  prev_x = np.concatenate([[0.0], neg_ge[:-1]])
  x0 = np.concatenate([prev_x, neg_gt, neg_ge[-1:]])  # rects, traps, tail
  x1 = np.concatenate([neg_gt, neg_ge, [1.0]])
  y0 = np.concatenate([y_gt, y_gt, y_ge[-1:]])
  y1 = np.concatenate([y_gt, y_ge, y_ge[-1:]])
  area = segment_area(x0, x1, y0, y1, fpr_limit)
  return float(np.sum(area) / fpr_limit)


@jax.jit
def _device_aupro_kernel(scores, fp_inc, pro_inc, num_neg, num_regions, limit):
  """Sorted cumulative FPR/PRO and clipped trapezoid (x64 inside)."""
  keys, fp_s, pro_s = jax.lax.sort((-scores, fp_inc, pro_inc), num_keys=1)
  fpr = jnp.cumsum(fp_s.astype(jnp.int64)) / num_neg  # [N]
  pro = jnp.cumsum(pro_s) / num_regions  # [N]
  marks = metrics.collapse_ties(keys)
  fpr_prev = metrics.previous_at_marks(fpr, marks)
  pro_prev = metrics.previous_at_marks(pro, marks)
  full = fpr <= limit
  width = jnp.clip(jnp.minimum(fpr, limit) - fpr_prev, 0.0, None)
  span = jnp.where(fpr > fpr_prev, fpr - fpr_prev, 1.0)
  y_end = jnp.where(
      full, pro, pro_prev + (limit - fpr_prev) / span * (pro - pro_prev)
  )
  area = jnp.where(marks, width * (pro_prev + y_end) / 2.0, 0.0)
  return jnp.sum(area) / limit


def mvtec_aupro_device(
    scores: np.ndarray, regions: Regions, fpr_limit: float = 0.3
) -> float | None:
  """MVTec-reference AUPRO with one jitted `lax.sort` (GPU/TPU path)."""
  flat = np.asarray(scores)
  dtype = np.float64 if flat.dtype == np.float64 else np.float32
  flat = flat.astype(dtype, copy=False).ravel()
  num_neg, num_regions = regions.num_ok, regions.num_regions
  if num_neg == 0 or num_regions == 0:
    return None
  n = flat.size
  size = metrics.padded_size(n)
  fp_inc = np.zeros(size, np.int8)
  fp_inc[:n] = 1
  fp_inc[regions.positions] = 0
  pro_inc = np.zeros(size)
  pro_inc[regions.positions] = regions.weights()
  flat = np.pad(flat, (0, size - n), constant_values=-np.inf)
  with jax.enable_x64(True):
    out = _device_aupro_kernel(
        jnp.asarray(flat), jnp.asarray(fp_inc), jnp.asarray(pro_inc),
        float(num_neg), float(num_regions), float(fpr_limit),
    )
    return float(jax.device_get(out))


def mvtec_aupro(scores, regions: Regions, fpr_limit: float = 0.3,
                path: str = "auto") -> float | None:
  """MVTec-reference AUPRO; path "host" | "device" | "auto" (by backend)."""
  if path == "auto":
    path = metrics.default_path()
  if path == "device":
    return mvtec_aupro_device(scores, regions, fpr_limit)
  return mvtec_aupro_host(scores, regions, fpr_limit)


# ----------------------------------------------------------------------------
# Legacy cflow-200 AUPRO (AnomalyCLIP), vectorised.
# ----------------------------------------------------------------------------


def count_below(thresholds: np.ndarray, scores: np.ndarray,
                chunk: int = 1 << 18) -> np.ndarray:
  """int32[N]: number of thresholds strictly below each score, exactly.

  An arithmetic guess (thresholds are nearly evenly spaced) corrected by
  exact comparisons in the scores' dtype; O(N), no search, cache-sized
  chunks.

  Args:
    thresholds: float[T] ascending.
    scores: float[...] scores (same dtype as the thresholds for exactness).
    chunk: items per chunk.
  """
  flat = np.ravel(scores)
  num_t = thresholds.size
  span = float(thresholds[-1] - thresholds[0]) if num_t > 1 else 0.0
  inv_step = (num_t - 1) / span if span > 0 else 1.0
  below = np.concatenate([[-np.inf], thresholds]).astype(thresholds.dtype)
  at = np.concatenate([thresholds, [np.inf]]).astype(thresholds.dtype)
  out = np.empty(flat.size, np.int32)
  for i in range(0, flat.size, chunk):
    s = flat[i:i + chunk]
    guess = np.ceil((s - thresholds[0]) * inv_step)
    k = np.clip(guess, 0, num_t).astype(np.int32)  # [chunk]
    while True:
      down = below[k] >= s  # thresholds[k - 1] >= s: k is too large
      up = at[k] < s  # thresholds[k] < s: k is too small
      if not (down.any() or up.any()):
        break
      k += up.astype(np.int32) - down.astype(np.int32)
    out[i:i + chunk] = k
  return out


def legacy_thresholds(score_min, score_max, steps: int = 200) -> np.ndarray:
  """np.arange(min, max, (max - min) / steps) with the maps' own dtype."""
  delta = (score_max - score_min) / steps
  if not delta > 0:
    return np.zeros(0, np.asarray(score_min).dtype)
  return np.arange(score_min, score_max, delta)


@dataclasses.dataclass
class LegacyProCounts:
  """Mergeable counts for legacy AUPRO at fixed thresholds.

  Attributes:
    thresholds: float[T] thresholds, ascending.
    fp: int64[T] OK pixels with score > threshold.
    num_neg: total OK pixels.
    region_fraction_sum: float64[T] sum over regions of covered fraction.
    num_regions: total regions.
  """

  thresholds: np.ndarray
  fp: np.ndarray
  num_neg: int
  region_fraction_sum: np.ndarray
  num_regions: int

  @classmethod
  def empty(cls, thresholds: np.ndarray) -> "LegacyProCounts":
    t = thresholds.size
    return cls(thresholds, np.zeros(t, np.int64), 0, np.zeros(t), 0)

  def add(self, scores: np.ndarray, regions: Regions) -> None:
    """Adds a batch of maps with its own (batch-local) region labelling."""
    flat = np.asarray(scores).ravel()
    num_t = self.thresholds.size
    above = count_below(self.thresholds, flat)  # [N] in [0, T]
    hist = np.bincount(above, minlength=num_t + 1)  # [T + 1] all pixels
    self._add_counts(hist, above[regions.positions], regions, flat.size)

  def add_sorted(self, flat: np.ndarray, regions: Regions,
                 fpr_limit: float) -> None:
    """Exact-mode add: FP counts from the sorted top scores (one batch)."""
    keep = int(np.ceil(fpr_limit * regions.num_ok)) + 1
    keep += regions.positions.size
    top = _top_scores(flat, keep)
    all_gt, _ = _count_above(top, flat, self.thresholds)  # [T]
    d_above = count_below(self.thresholds, flat[regions.positions])
    self._add_counts(None, d_above, regions, flat.size, all_gt)

  def _add_counts(self, hist, d_above, regions, num_pixels, all_gt=None):
    num_t = self.thresholds.size
    d_hist = np.bincount(d_above, minlength=num_t + 1)
    if all_gt is None:
      hist = hist - d_hist  # [T + 1] OK pixels only
      self.fp += np.cumsum(hist[::-1])[::-1][1:]  # pixels with above > t
    else:
      self.fp += all_gt - np.cumsum(d_hist[::-1])[::-1][1:]
    self.num_neg += num_pixels - regions.positions.size
    num_r = regions.num_regions
    if num_r:
      key = (regions.ids.astype(np.int64) - 1) * (num_t + 1) + d_above
      per = np.bincount(key, minlength=num_r * (num_t + 1))
      per = per.reshape(num_r, num_t + 1)  # [R, T + 1]
      covered = np.cumsum(per[:, ::-1], axis=1)[:, ::-1][:, 1:]  # [R, T]
      frac = covered / regions.areas[1:, None].astype(np.float64)
      self.region_fraction_sum += frac.sum(axis=0)
      self.num_regions += num_r

  def value(self, fpr_limit: float = 0.3) -> float | None:
    """AUPRO as `cal_pro_score`: FPRs < limit min-max rescaled, trapezoid."""
    if self.num_regions == 0 or self.num_neg == 0 or self.fp.size == 0:
      return None
    fpr = self.fp / self.num_neg  # [T], nonincreasing
    pro = self.region_fraction_sum / self.num_regions
    keep = fpr < fpr_limit
    fpr, pro = fpr[keep], pro[keep]
    if fpr.size < 2 or fpr.max() == fpr.min():
      return None
    fpr = (fpr - fpr.min()) / (fpr.max() - fpr.min())
    return float(-np.trapezoid(pro, fpr))


def legacy_cflow200_aupro(
    scores: np.ndarray, regions: Regions, fpr_limit: float = 0.3,
    steps: int = 200,
) -> float | None:
  """AnomalyCLIP / cflow-ad AUPRO (200 thresholds), labels computed once.

  Args:
    scores: float[N, H, W] maps of one class (dtype kept: thresholds are built
      in the maps' dtype like the original).
    regions: `label_regions` of the matching masks.
    fpr_limit: keep thresholds whose FPR is below this.
    steps: number of threshold steps (200 in the original).

  Returns:
    The legacy AUPRO, or None when undefined (no region, constant maps, fewer
    than two kept thresholds).
  """
  scores = np.asarray(scores)
  ths = legacy_thresholds(scores.min(), scores.max(), steps)
  counts = LegacyProCounts.empty(ths)
  if ths.size == 0:
    return None
  counts.add_sorted(scores.ravel(), regions, fpr_limit)
  return counts.value(fpr_limit)


def aupro(scores, regions: Regions, variant: str = "mvtec",
          fpr_limit: float = 0.3, path: str = "auto") -> float | None:
  """Dispatches on the AUPRO variant ("mvtec" | "legacy_cflow200")."""
  if variant == "mvtec":
    return mvtec_aupro(scores, regions, fpr_limit, path)
  if variant == "legacy_cflow200":
    return legacy_cflow200_aupro(scores, regions, fpr_limit)
  raise ValueError(
      f"unknown aupro variant {variant!r}: use 'mvtec' or 'legacy_cflow200'"
  )


def describe() -> dict[str, Any]:
  """Static facts recorded in protocol.json."""
  return {"connectivity": 8, "labelling": "scipy.ndimage.label, once per set"}
