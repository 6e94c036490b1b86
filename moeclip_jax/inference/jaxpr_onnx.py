"""jaxpr -> ONNX for the primitives the detectors' export functions use.

  closed = jax.make_jaxpr(fn)(*specs)        # specs with a symbolic batch
  model = convert(closed, inputs, ["anomaly_map", "image_score"])

`inputs` has one entry per jaxpr input: a name (a graph input) or a
`(name, array)` pair (an initializer: the parameters, baked in). Calls
(jit, custom_jvp / custom_vjp, remat) are inlined and `scan` is unrolled;
every other equation goes through one rule of `RULES` (primitive name ->
`rule(graph, input names, eqn) -> output name(s)`).

Symbolic dimensions (`jax.export.symbolic_shape`) stay symbolic: graph
inputs and outputs name them (ONNX `dim_param`, a dynamic axis), and a
shape that needs one at run time reads it off the graph input that carries
it (`Shape`), as `a * dim + c` (linear expressions only). Reshapes with a
single symbolic size use -1 instead, so the graph stays free of shape
arithmetic in the common case (TensorRT and OpenVINO fold it either way).

Unsupported primitives and parameter combinations raise
NotImplementedError naming the primitive: add a rule to `RULES`.

Layout: this module is the entry point (`convert`); `onnx_graph.py` holds
the graph builder, the registry and the jaxpr walker (calls, scan);
`onnx_rules.py` the rules of every other primitive.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from moeclip_jax.inference import onnx_rules  # noqa: F401  (registers the rules)
from moeclip_jax.inference.onnx_graph import (
  OPSET,
  RULES,
  Graph,
  emit,
  onnx_dims,
)

__all__ = ["OPSET", "RULES", "convert", "onnx_dims"]


def convert(closed, inputs: Sequence, outputs: Sequence[str], *,
            name: str = "predict", doc: str = "") -> onnx.ModelProto:
  """The ONNX model of a closed jaxpr.

  Args:
    closed: `jax.make_jaxpr(fn)(*specs)`.
    inputs: per jaxpr input, a graph-input name or `(name, array)` (an
      initializer).
    outputs: names of the graph outputs, one per jaxpr output.
    name: the graph's name.
    doc: the model's doc string.
  """
  g = Graph()
  ins = []
  for var, spec in zip(closed.jaxpr.invars, inputs, strict=True):
    if isinstance(spec, str):
      ins.append(g.add_input(spec, var.aval))
    else:
      key, value = spec
      g.initializers[key] = np.asarray(value)
      ins.append(key)
  results = emit(g, closed.jaxpr, closed.consts, ins)
  out_info = []
  for out, var, result in zip(outputs, closed.jaxpr.outvars, results,
                              strict=True):
    g.nodes.append(helper.make_node("Identity", [result], [out]))
    out_info.append(helper.make_tensor_value_info(
        out, helper.np_dtype_to_tensor_dtype(np.dtype(var.aval.dtype)),
        onnx_dims(var.aval.shape)))
  used = {i for node in g.nodes for i in node.input}
  inits = [numpy_helper.from_array(v, k)
           for k, v in g.initializers.items() if k in used]
  graph = helper.make_graph(g.nodes, name, g.inputs, out_info, inits)
  opsets = [helper.make_opsetid("", OPSET)]
  model = helper.make_model(graph, opset_imports=opsets,
                            producer_name="moeclip_jax", doc_string=doc)
  model.ir_version = helper.find_min_ir_version_for(opsets)
  return model
