"""Per-class calibration statistics, thresholds and the single-image score.

`calibration.json` (in the checkpoint folder, written atomically):

  {"format": "moeclip_jax.calibration/1", "domain": "industrial",
   "rule": "quantile" | "fpr" | "f1", "fpr": 0.01, "source": {...},
   "classes": {NAME: {map_min, map_max, score_min, score_max,
                      normalise_map, normalise_score,
                      threshold, map_threshold, num_images, num_anomalous}}}

The statistics stand in for the whole-class min-max of MoECLIP's protocol
(methods/moeclip/maps.py `postprocess_class`): a class's maps (scores) are min-maxed with the
stored extremes exactly when the calibration set left [0, 1], then fused
(industrial 0.5 max(map) + 0.5 score, medical max(map)). The image threshold
applies to that fused score, the map threshold to the normalised map; a
prediction is anomalous when `score >= threshold`.

Other methods (top-level "method": "inctrl" | "anomalymoe", "score_rule":
"image_score"): the threshold applies to the detector's own image score
(no fusion); entries add "prompts" (InCTRL: the prompt set's paths and
fingerprint) or "class_min_max" (AnomalyMoE: [3, 2] per-level statistics
used by predict). A file without "method" is MoECLIP's.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Callable

import numpy as np

from moeclip_jax.eval import metrics as metrics_lib
from moeclip_jax.utils import io

FILE = "calibration.json"
FORMAT = "moeclip_jax.calibration/1"
ANY_CLASS = "*"  # entry used for classes that were not calibrated


def class_stats(raw_maps: np.ndarray, raw_scores: np.ndarray) -> dict:
  """Extremes of a class's raw maps [N, H, W] and scores [N]."""
  m_lo, m_hi = float(np.min(raw_maps)), float(np.max(raw_maps))
  s_lo, s_hi = float(np.min(raw_scores)), float(np.max(raw_scores))
  return dict(map_min=m_lo, map_max=m_hi, score_min=s_lo, score_max=s_hi,
              normalise_map=bool(m_lo < 0 or m_hi > 1) and m_hi > m_lo,
              normalise_score=bool(s_lo < 0 or s_hi > 1) and s_hi > s_lo)


def normalise_maps(raw_maps: np.ndarray, stats: dict) -> np.ndarray:
  if not stats["normalise_map"]:
    return np.asarray(raw_maps, np.float32)
  span = stats["map_max"] - stats["map_min"]
  return ((raw_maps - stats["map_min"]) / span).astype(np.float32)


def normalise_scores(raw_scores: np.ndarray, stats: dict) -> np.ndarray:
  if not stats["normalise_score"]:
    return np.asarray(raw_scores, np.float32)
  span = stats["score_max"] - stats["score_min"]
  return ((raw_scores - stats["score_min"]) / span).astype(np.float32)


Fusion = Callable[[np.ndarray, np.ndarray], np.ndarray]


def fused_score(raw_maps, raw_scores, stats: dict, fuse: Fusion | None):
  """Single-image score with stored statistics.

  Args:
    raw_maps: float[N, H, W] detector maps (before min-max).
    raw_scores: float[N] detector image scores.
    stats: a calibration class entry.
    fuse: the detector's `score_fusion` (normalised maps, normalised scores
      -> final scores; MoECLIP's domain rule), or None for methods whose
      image score is final (InCTRL, AnomalyMoE): the score is returned as
      given, only maps are normalised.

  Returns:
    (normalised maps float[N, H, W], fused scores float[N]).
  """
  maps_n = normalise_maps(np.asarray(raw_maps), stats)
  if fuse is None:
    return maps_n, np.asarray(raw_scores, np.float32)
  scores_n = normalise_scores(np.asarray(raw_scores), stats)
  return maps_n, fuse(maps_n, scores_n)


def upper_quantile(values: np.ndarray, fpr: float) -> float:
  """Smallest t with mean(values >= t) <= fpr (the next float above the
  (1 - fpr) quantile)."""
  q = float(np.quantile(np.asarray(values, np.float64).ravel(), 1.0 - fpr,
                        method="higher"))
  return float(np.nextafter(np.float32(q), np.float32(np.inf)))


def thresholds(fused: np.ndarray, labels: np.ndarray | None,
               maps_n: np.ndarray, masks: np.ndarray | None, rule: str,
               fpr: float) -> tuple[float, float]:
  """(image threshold, map threshold) of one class.

  rule "quantile"/"fpr": (1 - fpr) quantile of the normal images' fused
  scores (normal pixels for the map); "f1": F1-optimal on the labelled set
  (pixel F1 when masks exist, else the normal-pixel quantile).
  """
  normal = np.ones(fused.shape, bool) if labels is None else labels == 0
  if not normal.any():
    raise ValueError("calibration needs normal images (none in this class)")
  map_thr = upper_quantile(maps_n[normal], fpr)
  if rule != "f1":
    return upper_quantile(fused[normal], fpr), map_thr
  img = metrics_lib.binary_metrics(fused, labels, path="host")
  if img["f1_threshold"] is None:
    raise ValueError("--f1 needs normal and anomalous images in each class")
  if masks is not None and masks.any():
    pix = metrics_lib.binary_metrics(maps_n.ravel(), masks.ravel() > 0.5,
                                     path="host")
    map_thr = pix["f1_threshold"]
  return float(img["f1_threshold"]), float(map_thr)


def calibrate_class(raw_maps, raw_scores, fuse: Fusion | None, rule: str,
                    fpr: float, labels=None, masks=None) -> dict[str, Any]:
  """Statistics + thresholds of one class (see the module docstring)."""
  labels = None if labels is None else np.asarray(labels).astype(int)
  normal = slice(None) if labels is None else labels == 0
  stats = class_stats(raw_maps[normal], raw_scores[normal]) if rule != "f1" \
      else class_stats(raw_maps, raw_scores)
  maps_n, fused = fused_score(raw_maps, raw_scores, stats, fuse)
  thr, map_thr = thresholds(fused, labels, maps_n, masks, rule, fpr)
  return dict(stats, threshold=thr, map_threshold=map_thr,
              num_images=int(len(raw_scores)),
              num_anomalous=0 if labels is None else int(labels.sum()))


def path_in(checkpoint_dir) -> pathlib.Path:
  return pathlib.Path(checkpoint_dir) / FILE


def load(checkpoint_dir) -> dict | None:
  """The stored calibration, or None when the checkpoint has none."""
  path = path_in(checkpoint_dir)
  if not path.is_file():
    return None
  try:
    data = json.loads(path.read_text())
  except json.JSONDecodeError as err:
    raise ValueError(f"{path}: not valid JSON ({err})") from None
  if data.get("format") != FORMAT:
    raise ValueError(f"{path}: format {data.get('format')!r}, expected "
                     f"{FORMAT!r}")
  return data


def save(checkpoint_dir, calibration: dict, merge: bool = True
         ) -> pathlib.Path:
  """Writes calibration.json atomically; merges classes with an existing
  file when `merge` (same domain)."""
  old = load(checkpoint_dir) if merge else None
  if old is not None and old.get("domain") == calibration["domain"]:
    calibration = dict(calibration,
                       classes={**old["classes"], **calibration["classes"]})
  return io.write_json(path_in(checkpoint_dir), calibration)


def check_method(calibration: dict | None, method: str, checkpoint_dir):
  """Raises ValueError when calibration.json belongs to another method."""
  if calibration is None:
    return
  stored = calibration.get("method", "moeclip")
  if stored != method:
    raise ValueError(f"{path_in(checkpoint_dir)}: written for {stored!r}, "
                     f"the checkpoint is {method!r} (re-run calibrate with "
                     "--replace)")


def entry_for(calibration: dict | None, class_name: str) -> dict | None:
  """The class's entry, else the ANY_CLASS entry, else the only entry."""
  if not calibration:
    return None
  classes = calibration["classes"]
  if class_name in classes:
    return classes[class_name]
  if ANY_CLASS in classes:
    return classes[ANY_CLASS]
  if len(classes) == 1:
    return next(iter(classes.values()))
  return None
