"""Method-agnostic inference runtime shared by the detectors and the verbs.

  runner       jitted, sharded prediction over dataset records; image
               batches; the map back onto the original image
  calibration  thresholds and per-class statistics (calibration.json);
               the score / decision each image reports (predict, serve)
  overlay      heatmap colouring and overlay panels
  export       StableHLO export (ExportSpec, load_exported); export_onnx +
               jaxpr_onnx (onnx_graph, onnx_rules): the ONNX export;
               exported + onnx_runner: the
               export folder and its onnxruntime runner (no jax)

Never imports methods/, train/ or verbs/: methods build on it.
"""
