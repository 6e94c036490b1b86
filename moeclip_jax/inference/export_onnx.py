"""ONNX export of a detector's `export_fn()`: the StableHLO export's sibling.

The same `ExportSpec` function, traced with a symbolic batch and turned
into an ONNX graph by `jaxpr_onnx` (opset 18):

  pixels f32[batch, S, S, 3], *runtime, *class inputs
    -> anomaly_map f32[batch, S, S], image_score f32[batch]

`batch` is a dynamic axis. Parameters are baked in as initializers (ONNX
runtimes want weights inside the model); past `EXTERNAL_DATA_BYTES` they go
to `predict.onnx.data` (ONNX external data: protobuf stops at 2 GiB).
Class inputs stay graph inputs fed from the tables: one graph serves every
class, and their shapes do not depend on the batch.

OUT/
  predict.onnx       the graph; its metadata_props["moeclip_jax.export"]
                     holds export.json's text (normalisation included)
  predict.onnx.data  the initializers (large models only)
  <table_file>       class tables, as the StableHLO export
  export.json        the StableHLO export's keys (`export_meta`) plus
                     program, opset, inputs / outputs ([{name, dtype,
                     shape}] in feed order), external_data, and `class_tables` (the
                     class inputs as JSON lists, for runtimes without numpy)

`onnx_runner.load_onnx(OUT)` runs it with onnxruntime + numpy + PIL.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile

import jax
import numpy as np

from moeclip_jax.inference import export as export_lib
from moeclip_jax.inference import exported, onnx_runner
from moeclip_jax.utils import io

PROGRAM = "predict.onnx"
DATA = "predict.onnx.data"
BATCH = "batch"
EXTERNAL_DATA_BYTES = 1 << 30


def _converter():
  try:
    from moeclip_jax.inference import jaxpr_onnx  # pylint: disable=g-import-not-at-top
  except ImportError as err:
    raise ValueError("--format onnx needs the onnx package: pip install "
                     "'moeclip_jax[onnx]'") from err
  return jaxpr_onnx


def input_names(spec: export_lib.ExportSpec) -> list[str]:
  """Graph inputs after the parameters, in `spec.fn`'s argument order."""
  return ["pixels", *spec.runtime_inputs, *spec.class_inputs]


def json_tables(spec: export_lib.ExportSpec) -> dict:
  """{class: {input: {dtype, shape, data (flat list)}}}."""
  out = {}
  for cls in spec.classes:
    out[cls] = {}
    for name, table in spec.class_inputs.items():
      x = np.asarray(table[cls])
      out[cls][name] = {"dtype": str(x.dtype), "shape": list(x.shape),
                        "data": x.ravel().tolist()}
  return out


def _io_specs(names, jaxpr_vars) -> list[dict]:
  """[{name, dtype, shape}] in feed order (symbolic dims by name)."""
  from moeclip_jax.inference import jaxpr_onnx  # pylint: disable=g-import-not-at-top
  return [{"name": n, "dtype": str(np.dtype(v.aval.dtype)),
           "shape": jaxpr_onnx.onnx_dims(v.aval.shape)}
          for n, v in zip(names, jaxpr_vars, strict=True)]


def write_onnx(spec: export_lib.ExportSpec, out) -> pathlib.Path:
  """Traces `spec.fn` with a symbolic batch and writes the ONNX folder."""
  jaxpr_onnx = _converter()
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  (batch,) = jax.export.symbolic_shape(BATCH)
  closed = jax.make_jaxpr(spec.fn)(*spec.arg_specs(batch))
  names = input_names(spec)
  params = [(f"p{i}", np.asarray(x)) for i, x in enumerate(spec.params)]
  model = jaxpr_onnx.convert(
      closed, [*params, *names], onnx_runner.OUTPUTS,
      doc=f"moeclip_jax {spec.method}: image -> anomaly map, image score")
  avals = closed.jaxpr.invars[len(params):]
  size = sum(len(t.raw_data) for t in model.graph.initializer)
  meta = {"format": exported.ONNX_FORMAT, **export_lib.export_meta(spec),
          "program": PROGRAM, "opset": jaxpr_onnx.OPSET,
          "inputs": _io_specs(names, avals),
          "outputs": _io_specs(onnx_runner.OUTPUTS, closed.jaxpr.outvars),
          "external_data": size > EXTERNAL_DATA_BYTES,
          "class_tables": json_tables(spec)}
  entry = model.metadata_props.add()
  entry.key, entry.value = "moeclip_jax.export", json.dumps(meta)
  _save(model, out, meta["external_data"])
  export_lib.write_tables_and_meta(spec, out, meta)
  return out


def _save(model, out: pathlib.Path, external: bool) -> None:
  """predict.onnx (and predict.onnx.data), each written atomically."""
  if external:
    from onnx import external_data_helper  # pylint: disable=g-import-not-at-top
    external_data_helper.convert_model_to_external_data(
        model, all_tensors_to_one_file=True, location=DATA,
        size_threshold=1024)
    with tempfile.TemporaryDirectory(dir=out, prefix=".onnx-") as tmp:
      external_data_helper.write_external_data_tensors(model, tmp)
      os.replace(pathlib.Path(tmp) / DATA, out / DATA)
  io.write_bytes(out / PROGRAM, model.SerializeToString())
