"""One image's reported score, display map and decision threshold.

`predict` and `serve` both turn a detector's raw outputs (maps at the model
size, image scores) into what they report with these functions, so the two
give the same score for the same image.
"""

from __future__ import annotations

import numpy as np

# TODO(merge #18): moeclip_jax.inference.calibration / .overlay after the
# "Detector protocol" commit.
from moeclip_jax.verbs import calibration
from moeclip_jax.verbs import overlay

DEFAULT_MAP_THRESHOLD = 0.5  # on per-image min-max maps, uncalibrated
UNCALIBRATED = "none (uncalibrated: run `moeclip-jax calibrate`)"


def resolve_threshold(spec, entry: dict | None) -> tuple[float | None, str]:
  """(threshold or None, source) from 'auto' / a number and an entry."""
  if spec != "auto":
    try:
      return float(spec), "user"
    except (TypeError, ValueError):
      raise ValueError(f"--threshold must be 'auto' or a number, got {spec!r}"
                       ) from None
  if entry is None:
    return None, UNCALIBRATED
  return float(entry["threshold"]), "calibration"


def score_images(raw_maps, raw_scores, entry, domain, fuse: bool = True):
  """(maps in [0, 1] for display [N, S, S], scores [N], map thresholds [N]).

  `entry`: the class's calibration entry (None: raw image scores and
  per-image min-max maps). `fuse`: MoECLIP's fused score with
  calibration; False keeps the detector's image score (InCTRL, AnomalyMoE).
  """
  if entry is not None:
    maps_n, fused = calibration.fused_score(raw_maps, raw_scores, entry,
                                            domain, fuse)
    shown = np.clip(maps_n, 0.0, 1.0)
    return shown, fused, np.full(len(fused), entry["map_threshold"])
  shown = np.stack([overlay.normalise_for_display(m) for m in raw_maps]) \
      if len(raw_maps) else raw_maps
  return shown, np.asarray(raw_scores), np.full(len(raw_scores),
                                                DEFAULT_MAP_THRESHOLD)


def decision(score: float, threshold: float | None) -> bool | None:
  """Anomalous when score >= threshold (None without a threshold)."""
  return None if threshold is None else bool(score >= threshold)
