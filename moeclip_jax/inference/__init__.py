"""Method-agnostic inference runtime (scores, thresholds, overlays)."""
