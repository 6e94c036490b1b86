"""evaluate(): the one function the eval / metrics verbs call.

Inputs are any model's saved predictions; nothing here imports models or
methods. Per class: the protocol's post-processing, exact image metrics, and
pixel metrics in exact mode (host NumPy on CPU, jitted device sort on
GPU/TPU) or streaming mode (histograms with an exact error bound), chosen
per class by a memory budget when mode="auto".
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping, Sequence

import numpy as np

from moeclip_jax.eval import aupro as aupro_lib
from moeclip_jax.eval import metrics, protocols, reports, streaming

ENGINE_VERSION = "1"
MODES = ("auto", "exact", "streaming")
DEFAULT_BUDGET_BYTES = 4 << 30
STREAM_BATCH_IMAGES = 64


def evaluate(
    image_scores,
    image_labels,
    class_names=None,
    anomaly_maps=None,
    masks=None,
    protocol: "str | protocols.Protocol" = "raw",
    mode: str = "auto",
    domains: "str | Mapping[str, str] | None" = None,
    *,
    classes: Sequence[str] | None = None,
    memory_budget_bytes: int = DEFAULT_BUDGET_BYTES,
    num_bins: int = streaming.DEFAULT_BINS,
    tolerance: float = 1e-4,
    on_exceed: str = "raise",
    path: str = "auto",
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
  """Evaluates saved predictions under one protocol.

  Args:
    image_scores: float[N] image scores (higher = more anomalous).
    image_labels: int/bool[N] image labels, 1 = anomalous.
    class_names: str[N] class of each image, one str, or None ("all").
    anomaly_maps: optional float[N, H, W] pixel maps.
    masks: optional binary [N, H, W] ground truth (needs anomaly_maps).
    protocol: a name from `protocols.PROTOCOLS` (with ":ap=..." options) or a
      Protocol.
    mode: "exact", "streaming" or "auto" (exact while a class's maps fit in
      memory_budget_bytes / 4).
    domains: "industrial" | "medical" for every class, or {class: domain}
      (MoECLIP fusion; default industrial, recorded as assumed).
    classes: optional expected class list; a listed class without images is
      an error.
    memory_budget_bytes: budget for the exact mode's copies and sort.
    num_bins: streaming histogram bins (>= 2^16).
    tolerance: largest accepted streaming error bound per metric.
    on_exceed: "raise" or "report" when a bound stays above tolerance after
      one refinement pass.
    path: exact-mode path "auto" | "host" | "device".
    metadata: extra run facts for protocol.json (seed, checkpoint hash, ...).

  Returns:
    {"per_class", "mean", "counts", "protocol"} (metrics.json schema) plus
    "details" (bounds, thresholds, modes, flags, timings).

  Raises:
    ValueError: bad inputs (shapes, non-finite scores, non-binary labels or
      masks, empty classes) or options.
    streaming.StreamingToleranceError: see `on_exceed`.
  """
  proto = protocols.get_protocol(protocol)
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  if on_exceed not in ("raise", "report"):
    raise ValueError(
        f"on_exceed must be 'raise' or 'report', got {on_exceed!r}")
  data = validate(image_scores, image_labels, class_names,
                             anomaly_maps, masks, classes)
  domain_of, assumed = _domains(domains, data.class_order)
  per_class, counts_pc, details = {}, {}, _empty_details()
  start = time.perf_counter()
  for name in data.class_order:
    idx = data.indices[name]
    per_class[name], counts_pc[name] = _evaluate_class(
        proto, data, idx, name, domain_of[name], details,
        dict(mode=mode, budget=memory_budget_bytes, num_bins=num_bins,
             tolerance=tolerance, on_exceed=on_exceed, path=path))
  details["timing_s"]["total"] = time.perf_counter() - start
  details.pop("regions", None)
  counts = _counts(data, per_class, counts_pc, proto, details)
  proto_json = _protocol_json(proto, mode, path, num_bins, tolerance,
                              domain_of, assumed, metadata)
  return reports.build_report(per_class, counts, proto_json, details)


# ----------------------------------------------------------------------------
# Input validation: clear errors, never a silent number.
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class Inputs:
  """Validated inputs (float scores, bool labels/masks, class index lists)."""

  image_scores: np.ndarray
  image_labels: np.ndarray
  anomaly_maps: np.ndarray | None
  masks: np.ndarray | None
  class_order: list[str]
  indices: dict[str, np.ndarray]


def _check_finite(name: str, values: np.ndarray) -> None:
  if not np.issubdtype(values.dtype, np.number) or np.issubdtype(
      values.dtype, np.complexfloating):
    raise ValueError(f"{name} must be real numbers, got dtype {values.dtype}")
  bad = ~np.isfinite(values)
  if bad.any():
    first = np.unravel_index(int(np.argmax(bad)), values.shape)
    raise ValueError(
        f"{name} has {int(bad.sum())} non-finite values (NaN/inf), first at "
        f"index {tuple(int(i) for i in first)}: fix the producer or drop "
        "those items")


def _as_binary(name: str, values: np.ndarray) -> np.ndarray:
  if values.dtype == bool:
    return values
  _check_finite(name, values)
  bad = (values != 0) & (values != 1)
  if bad.any():
    sample = np.unique(values[bad])[:5].tolist()
    raise ValueError(
        f"{name} must be binary (0/1 or bool); found {int(bad.sum())} other "
        f"values, e.g. {sample}: threshold them first (e.g. {name} > 0.5)")
  return values.astype(bool)


def _maps_3d(name: str, values) -> np.ndarray:
  arr = np.asarray(values)
  if arr.ndim == 4 and arr.shape[1] == 1:
    arr = arr[:, 0]
  if arr.ndim != 3:
    raise ValueError(f"{name} must have shape [N, H, W], got {arr.shape}")
  return arr


def _class_index(class_names, n: int, classes):
  if class_names is None:
    names = np.full(n, "all", dtype=object)
  elif isinstance(class_names, str):
    names = np.full(n, class_names, dtype=object)
  else:
    names = np.asarray(class_names).astype(str).ravel()
    if names.size != n:
      raise ValueError(f"class_names has {names.size} entries for {n} images")
  if any(str(c).strip() == "" for c in np.unique(names)):
    raise ValueError("class_names contains an empty name")
  order = list(dict.fromkeys(str(c) for c in names))
  if classes is not None:
    empty = [c for c in classes if c not in order]
    if empty:
      raise ValueError(f"empty classes (no images): {empty}")
    extra = [c for c in order if c not in classes]
    if extra:
      raise ValueError(f"class_names has classes not in `classes`: {extra}")
    order = list(classes)
  names = names.astype(str)
  return order, {c: np.flatnonzero(names == c) for c in order}


def validate(image_scores, image_labels, class_names=None, anomaly_maps=None,
             masks=None, classes=None) -> Inputs:
  """Checks shapes, finiteness and binarity; see `evaluate` for Args.

  Raises:
    ValueError: with the offending input named and the problem stated.
  """
  scores = np.asarray(image_scores)
  labels = np.asarray(image_labels)
  if scores.ndim != 1 or labels.ndim != 1:
    raise ValueError(f"image_scores and image_labels must be 1-D [N], got "
                     f"{scores.shape} and {labels.shape}")
  if scores.size == 0:
    raise ValueError("no images: image_scores is empty")
  if scores.shape != labels.shape:
    raise ValueError(f"image_scores {scores.shape} and image_labels "
                     f"{labels.shape} differ in length")
  _check_finite("image_scores", scores)
  labels = _as_binary("image_labels", labels)
  maps = gts = None
  if masks is not None and anomaly_maps is None:
    raise ValueError("masks given without anomaly_maps")
  if anomaly_maps is not None:
    maps = _maps_3d("anomaly_maps", anomaly_maps)
    if maps.shape[0] != scores.size:
      raise ValueError(f"anomaly_maps has {maps.shape[0]} maps for "
                       f"{scores.size} images")
    _check_finite("anomaly_maps", maps)
  if masks is not None:
    gts = _maps_3d("masks", masks)
    if gts.shape != maps.shape:
      raise ValueError(f"masks {gts.shape} and anomaly_maps {maps.shape} "
                       "differ in shape (resize masks to the map resolution "
                       "first, nearest)")
    gts = _as_binary("masks", gts)
  order, index = _class_index(class_names, scores.size, classes)
  return Inputs(scores.astype(np.float64), labels, maps, gts, order, index)


def _empty_details() -> dict[str, Any]:
  return dict(bounds={}, thresholds={}, mode={}, flagged={},
              label_mask_disagreements={}, timing_s={})


def _domains(domains, class_order):
  if domains is None:
    return {c: "industrial" for c in class_order}, True
  if isinstance(domains, str):
    domains = {c: domains for c in class_order}
  missing = [c for c in class_order if c not in domains]
  if missing:
    raise ValueError(f"domains: no domain for classes {missing}")
  for c in class_order:
    if domains[c] not in protocols.DOMAINS:
      raise ValueError(f"domains[{c!r}] must be one of {protocols.DOMAINS}, "
                       f"got {domains[c]!r}")
  return {c: domains[c] for c in class_order}, False


def _evaluate_class(proto, data, idx, name, domain, details, opts):
  """Metrics of one class; fills `details` in place."""
  t0 = time.perf_counter()
  labels = data.image_labels[idx]
  maps = None if data.anomaly_maps is None else data.anomaly_maps[idx]
  masks = None if data.masks is None else data.masks[idx]
  scores, maps = protocols.apply_protocol(
      proto, data.image_scores[idx], maps, domain)
  values = {k: None for k in protocols.ALL_METRICS}
  img = metrics.binary_metrics(scores, labels, path=opts["path"])
  values.update(image_auroc=img["auroc"], image_f1max=img["f1max"],
                image_ap=_ap(img, proto))
  details["thresholds"][name] = {"image_f1": img["f1_threshold"]}
  counts = dict(images=int(idx.size), anomalous=int(labels.sum()),
                normal=int(idx.size - labels.sum()))
  if maps is not None and masks is not None:
    pix = _pixel_metrics(proto, maps, masks, name, details, opts)
    values.update(pix)
    counts.update(pixels=int(masks.size), defect_pixels=int(masks.sum()),
                  regions=details["regions"].pop(name))
    details["label_mask_disagreements"][name] = _disagreements(labels, masks)
  _apply_policy(proto, values, img, counts, name, details)
  details["timing_s"][name] = time.perf_counter() - t0
  return values, counts


def _ap(result, proto):
  key = "ap_trapezoid" if proto.ap_definition == "trapezoid" else "ap"
  return result[key]


def _choose_mode(opts, maps) -> str:
  if opts["mode"] != "auto":
    return opts["mode"]
  return "exact" if maps.nbytes * 4 <= opts["budget"] else "streaming"


def _pixel_metrics(proto, maps, masks, name, details, opts):
  """Pixel AUROC / AP / F1-max / AUPRO of one class."""
  mode = _choose_mode(opts, maps)
  details["mode"][name] = mode
  details.setdefault("regions", {})
  if mode == "exact":
    return _pixel_exact(proto, maps, masks, name, details, opts)
  return _pixel_streaming(proto, maps, masks, name, details, opts)


def _pixel_exact(proto, maps, masks, name, details, opts):
  pix = metrics.binary_metrics(maps, masks, path=opts["path"])
  details["thresholds"][name]["pixel_f1"] = pix["f1_threshold"]
  out = dict(pixel_auroc=pix["auroc"], pixel_ap=_ap(pix, proto),
             pixel_f1max=pix["f1max"])
  out["_pixel_counts"] = (pix["num_pos"], pix["num_neg"])
  regions = aupro_lib.label_regions(masks) if proto.aupro_variant else None
  details["regions"][name] = None if regions is None else regions.num_regions
  if regions is not None:
    out["pixel_aupro"] = aupro_lib.aupro(
        maps, regions, proto.aupro_variant, proto.fpr_limit, opts["path"])
  return out


def _batches(maps, masks, with_regions: bool):
  """Yields (scores, labels, pro_weights, num_regions, regions) per batch."""
  for i in range(0, maps.shape[0], STREAM_BATCH_IMAGES):
    m, g = maps[i:i + STREAM_BATCH_IMAGES], masks[i:i + STREAM_BATCH_IMAGES]
    if not with_regions:
      yield m, g, None, 0, None
      continue
    regions = aupro_lib.label_regions(g)
    weights = regions.dense_weights()
    yield m, g, weights, regions.num_regions, regions


def _pixel_streaming(proto, maps, masks, name, details, opts):
  if proto.ap_definition == "trapezoid" and "pixel_ap" in proto.metrics:
    raise ValueError("ap=trapezoid is available in exact mode only; use "
                     "mode='exact'")
  with_regions = proto.aupro_variant is not None
  lo, hi = float(maps.min()), float(maps.max())
  hist = streaming.Histogram.empty(lo, hi, opts["num_bins"])
  legacy = None
  if proto.aupro_variant == "legacy_cflow200":
    ths = aupro_lib.legacy_thresholds(maps.min(), maps.max())
    legacy = aupro_lib.LegacyProCounts.empty(ths)
  for m, g, w, num_r, regions in _batches(maps, masks, with_regions):
    hist.add(m, g, w if proto.aupro_variant == "mvtec" else None, num_r)
    if legacy is not None and legacy.thresholds.size:
      legacy.add(m, regions)
  details["regions"][name] = hist.num_regions if with_regions else None
  res = streaming.histogram_metrics(hist, proto.fpr_limit)
  if _worst_bound(res, proto) > opts["tolerance"]:
    again = lambda: ((m, g, w) for m, g, w, _, _ in
                     _batches(maps, masks, with_regions))
    cells = streaming.refine(hist, again)
    res = streaming.cell_metrics(cells, hist.num_regions, proto.fpr_limit)
    details.setdefault("refined", []).append(name)
  worst = _worst_bound(res, proto)
  if worst > opts["tolerance"]:
    msg = (f"class {name!r}: streaming error bound {worst:.3g} exceeds "
           f"tolerance {opts['tolerance']:.3g} after refinement; raise "
           "num_bins or use mode='exact'")
    if opts["on_exceed"] == "raise":
      raise streaming.StreamingToleranceError(msg)
    details.setdefault("bound_exceeded", []).append(name)
  details["bounds"][name] = {f"pixel_{k}": v for k, v in res["bounds"].items()}
  details["thresholds"][name]["pixel_f1"] = res["f1_threshold"]
  out = dict(pixel_auroc=res["auroc"], pixel_ap=res["ap"],
             pixel_f1max=res["f1max"])
  out["_pixel_counts"] = (res["num_pos"], res["num_neg"])
  if proto.aupro_variant == "mvtec":
    out["pixel_aupro"] = res["aupro"]
  elif legacy is not None:
    out["pixel_aupro"] = legacy.value(proto.fpr_limit)
    details["bounds"][name]["pixel_aupro"] = 0.0
  return out


def _worst_bound(res, proto) -> float:
  keys = {"pixel_auroc": "auroc", "pixel_ap": "ap", "pixel_f1max": "f1max"}
  if proto.aupro_variant == "mvtec":
    keys["pixel_aupro"] = "aupro"
  bounds = [res["bounds"][v] for k, v in keys.items()
            if k in proto.metrics and res["bounds"][v] is not None]
  return max(bounds, default=0.0)


def _disagreements(labels, masks) -> dict[str, int]:
  has_defect = masks.reshape(masks.shape[0], -1).any(axis=1)
  return dict(normal_with_defect_pixels=int(np.sum(has_defect & (labels == 0))),
              anomalous_without_defect_pixels=int(
                  np.sum(~has_defect & (labels == 1))))


def _apply_policy(proto, values, img, counts, name, details):
  """Drops metrics outside the protocol; official one-class substitutions."""
  pix_counts = values.pop("_pixel_counts", None)
  single = {"image": img["num_pos"] == 0 or img["num_neg"] == 0,
            "pixel": pix_counts is not None and 0 in pix_counts}
  for key in protocols.ALL_METRICS:
    if key not in proto.metrics:
      values[key] = None
      continue
    level = key.split("_", 1)[0]
    if (values[key] is None and single[level]
        and key in proto.one_class_values):
      values[key] = float(proto.one_class_values[key])
      details["flagged"].setdefault(key, []).append(name)


def _counts(data, per_class, counts_pc, proto, details) -> dict[str, Any]:
  out = dict(
      num_classes=len(per_class),
      num_images=int(data.image_scores.size),
      num_anomalous_images=int(data.image_labels.sum()),
      num_normal_images=int(data.image_scores.size - data.image_labels.sum()),
      num_pixels=0 if data.masks is None else int(data.masks.size),
      per_class=counts_pc,
      flagged={k: len(v) for k, v in details["flagged"].items()},
  )
  out.update(reports.metric_counts(per_class, proto))
  return out


def _protocol_json(proto, mode, path, num_bins, tolerance, domain_of, assumed,
                   metadata) -> dict[str, Any]:
  out = proto.to_json()
  out.update(
      mode=mode,
      exact_path=metrics.default_path() if path == "auto" else path,
      streaming=dict(num_bins=num_bins, tolerance=tolerance),
      domains=domain_of,
      domain_assumed=assumed,
      engine_version=ENGINE_VERSION,
      seed=None,
      checkpoint_hash=None,
  )
  out.update(dict(metadata or {}))
  return out
