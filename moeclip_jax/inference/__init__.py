"""Method-agnostic inference runtime shared by the detectors and the verbs.

  runner       jitted, sharded prediction over dataset records; image
               batches; the map back onto the original image
  calibration  thresholds and per-class statistics (calibration.json)
  overlay      heatmap colouring and overlay panels

Never imports methods/, train/ or verbs/: methods build on it.
"""
