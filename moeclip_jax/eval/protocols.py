"""The one list of evaluation protocols, used by every verb.

A protocol fixes every knob that changes the numbers (spec
peers_and_metrics.md §5): score post-processing (min-max, fusion), AP form,
AUPRO variant and limit, connectivity, which metrics are reported and how a
single-label class is reported. The engine never smooths or resizes: maps
are evaluated exactly as given; the producer's smoothing and resolution are
recorded as text.

Names: `raw` (default), `moeclip-released`, `moeclip-paper`, `anomalyclip`,
`adaclip`, `mvtec-reference`, `anomalymoe`. Options are appended as
`NAME:ap=trapezoid,aupro=legacy_cflow200,fpr_limit=0.3`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

ALL_METRICS = (
    "image_auroc", "image_ap", "image_f1max",
    "pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_aupro",
)
DOMAINS = ("industrial", "medical")


@dataclasses.dataclass(frozen=True)
class Protocol:
  """Every knob of one evaluation protocol (written to protocol.json)."""

  name: str
  description: str
  image_score_rule: str = "given"  # given | moeclip_fusion | topk_mean_1pct
  map_normalisation: str = "none"  # none | class_minmax_if_outside_unit
  image_normalisation: str = "none"  # none | class_minmax_if_outside_unit
  smoothing: str = "none here (maps used as given)"
  producer_smoothing: str = "unspecified"
  eval_resolution: str = "as given"
  ap_definition: str = "step"  # step | trapezoid
  aupro_variant: str | None = "mvtec"  # mvtec | legacy_cflow200 | None
  fpr_limit: float = 0.3
  connectivity: int = 8
  metrics: tuple[str, ...] = ALL_METRICS
  undefined_metric_policy: str = "null, excluded from means, counted"
  # Values written instead of null for a single-label class, to emulate an
  # official script; every such value is flagged in the report.
  one_class_values: Mapping[str, float] = dataclasses.field(
      default_factory=dict)

  def to_json(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out["metrics"] = list(self.metrics)
    out["one_class_values"] = dict(self.one_class_values)
    return out


_MOECLIP = dict(
    image_score_rule="moeclip_fusion",
    map_normalisation="class_minmax_if_outside_unit",
    image_normalisation="class_minmax_if_outside_unit",
    producer_smoothing=(
        "gaussian on the 37x37 patch grid before bilinear upsampling "
        "(sigma 1 / kernel 7 industrial, sigma 1.5 / kernel 9 medical)"),
    eval_resolution="518 (masks nearest)",
    aupro_variant=None,
    metrics=("image_auroc", "image_ap", "pixel_auroc", "pixel_ap"),
)

PROTOCOLS: dict[str, Protocol] = {
    p.name: p for p in (
        Protocol(
            name="raw",
            description=("Scores and maps exactly as given: no min-max, "
                         "fusion, smoothing or resize; step AP; MVTec "
                         "AUPRO@0.3.")),
        Protocol(
            name="mvtec-reference",
            description=("MVTec AD reference evaluation: AUPRO@0.3 exact "
                         "(8-connected regions, trapezoid, interpolated at "
                         "the limit); give maps at native resolution."),
            eval_resolution="native (maps must be at mask resolution)"),
        Protocol(
            name="moeclip-released",
            description=("CoCoRessa/MoECLIP test.py: per-class joint min-max "
                         "if outside [0,1], image = 0.5 max-map + 0.5 image "
                         "(industrial) or max-map (medical); single-label "
                         "classes written as 0.0 like the released code."),
            one_class_values={"image_auroc": 0.0, "image_ap": 0.0,
                              "pixel_ap": 0.0},
            **_MOECLIP),
        Protocol(
            name="moeclip-paper",
            description=("MoECLIP paper table: released post-processing, "
                         "single-label classes left out (null)."),
            **_MOECLIP),
        Protocol(
            name="anomalyclip",
            description=("zqhang/AnomalyCLIP test.py: scores as given, "
                         "legacy cflow-200 AUPRO (FPR < 0.3 min-max "
                         "rescaled)."),
            producer_smoothing="gaussian sigma 4 at 518 after summing layers",
            eval_resolution="518 (masks bilinear > 0.5)",
            aupro_variant="legacy_cflow200",
            metrics=("image_auroc", "image_ap", "pixel_auroc", "pixel_aupro")),
        Protocol(
            name="adaclip",
            description=("caoyunkang/AdaCLIP tools/metrics.py: AUROC, AP, "
                         "F1-max at image and pixel level, no AUPRO; "
                         "single-label classes written as 0 like the "
                         "official code (flagged)."),
            producer_smoothing="gaussian sigma 4",
            eval_resolution="518",
            aupro_variant=None,
            metrics=("image_auroc", "image_ap", "image_f1max",
                     "pixel_auroc", "pixel_ap", "pixel_f1max"),
            one_class_values={k: 0.0 for k in ALL_METRICS}),
        Protocol(
            name="anomalymoe",
            description=("AnomalyMoE test.py: image score = mean of the top "
                         "1% pixels of the given (already fused, min-maxed) "
                         "map; AUROCs."),
            image_score_rule="topk_mean_1pct",
            producer_smoothing="5x5 gaussian, zero padding, at 256",
            eval_resolution="256 (masks nearest)",
            aupro_variant=None,
            metrics=("image_auroc", "pixel_auroc")),
    )
}

_OPTION_KEYS = {"ap": "ap_definition", "aupro": "aupro_variant",
                "fpr_limit": "fpr_limit"}
_OPTION_VALUES = {"ap_definition": ("step", "trapezoid"),
                  "aupro_variant": ("mvtec", "legacy_cflow200", "none")}


def get_protocol(spec: "str | Protocol" = "raw", **options) -> Protocol:
  """Resolves a protocol name with options.

  Args:
    spec: a Protocol, or "NAME" / "NAME:key=value,..." with keys ap
      (step | trapezoid), aupro (mvtec | legacy_cflow200 | none), fpr_limit.
    **options: the same keys as keyword arguments (None values ignored).

  Returns:
    The resolved Protocol (name records the options).

  Raises:
    ValueError: unknown protocol name, option key or value.
  """
  if isinstance(spec, Protocol):
    base, text_opts = spec, {}
  else:
    name, _, rest = str(spec).partition(":")
    if name not in PROTOCOLS:
      raise ValueError(
          f"unknown protocol {name!r}; choose one of {sorted(PROTOCOLS)}")
    base = PROTOCOLS[name]
    text_opts = dict(kv.split("=", 1) for kv in rest.split(",") if kv)
  text_opts.update({k: v for k, v in options.items() if v is not None})
  changes = {}
  for key, value in text_opts.items():
    if key not in _OPTION_KEYS:
      raise ValueError(f"unknown protocol option {key!r}: use "
                       f"{sorted(_OPTION_KEYS)}")
    field = _OPTION_KEYS[key]
    changes[field] = _parse_option(field, value)
  if not changes:
    return base
  if changes.get("aupro_variant") and "pixel_aupro" not in base.metrics:
    changes["metrics"] = base.metrics + ("pixel_aupro",)
  suffix = ",".join(f"{k}={v}" for k, v in sorted(text_opts.items()))
  return dataclasses.replace(base, name=f"{base.name}:{suffix}", **changes)


def _parse_option(field: str, value: Any) -> Any:
  if field == "fpr_limit":
    limit = float(value)
    if not 0.0 < limit <= 1.0:
      raise ValueError(f"fpr_limit must be in (0, 1], got {value!r}")
    return limit
  value = str(value)
  if value not in _OPTION_VALUES[field]:
    raise ValueError(f"{field} must be one of {_OPTION_VALUES[field]}, "
                     f"got {value!r}")
  return None if value == "none" else value


# ----------------------------------------------------------------------------
# Score post-processing rules (per class).
# ----------------------------------------------------------------------------


def minmax_if_outside_unit(values: np.ndarray) -> np.ndarray:
  """Joint min-max over all values, only if any lies outside [0, 1]."""
  lo, hi = float(np.min(values)), float(np.max(values))
  if lo >= 0.0 and hi <= 1.0:
    return values
  if hi == lo:
    return np.zeros_like(values)
  return (values - lo) / (hi - lo)


def topk_mean(maps: np.ndarray, fraction: float = 0.01) -> np.ndarray:
  """float[N]: mean of the top int(fraction * H * W) pixels of each map."""
  flat = maps.reshape(maps.shape[0], -1)
  k = max(int(flat.shape[1] * fraction), 1)
  top = np.partition(flat, flat.shape[1] - k, axis=1)[:, -k:]
  return top.astype(np.float64).mean(axis=1)


def apply_protocol(protocol: Protocol, image_scores: np.ndarray,
                   maps: np.ndarray | None, domain: str):
  """Applies a protocol's post-processing to one class.

  Args:
    protocol: the protocol.
    image_scores: float[N] image scores of the class.
    maps: optional float[N, H, W] maps of the class.
    domain: "industrial" or "medical" (MoECLIP fusion).

  Returns:
    (image_scores float[N], maps float[N, H, W] or None) after the rules.

  Raises:
    ValueError: a rule needs maps that were not given.
  """
  if protocol.map_normalisation != "none" and maps is not None:
    maps = minmax_if_outside_unit(maps)
  if protocol.image_normalisation != "none":
    image_scores = minmax_if_outside_unit(image_scores)
  rule = protocol.image_score_rule
  if rule == "given":
    return image_scores, maps
  if maps is None:
    raise ValueError(f"protocol {protocol.name!r}: image_score_rule "
                     f"{rule!r} needs anomaly_maps")
  max_map = maps.reshape(maps.shape[0], -1).max(axis=1).astype(np.float64)
  if rule == "moeclip_fusion":
    if domain not in DOMAINS:
      raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    if domain == "medical":
      return max_map, maps
    return 0.5 * max_map + 0.5 * image_scores, maps
  if rule == "topk_mean_1pct":
    return topk_mean(maps), maps
  raise ValueError(f"unknown image_score_rule {rule!r}")
