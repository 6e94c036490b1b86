"""The ONNX graph builder and the jaxpr walker behind `jaxpr_onnx.convert`.

`Graph` collects nodes, graph inputs and initializers; `emit` walks a
jaxpr and applies the rule of each equation's primitive from `RULES`
(`@rule("name", ...)` registers one: `fn(graph, input names, eqn) ->
output name(s)`). Calls (jit, custom_jvp / custom_vjp, remat) are inlined
and `scan` is unrolled here; the rules of the other primitives are in
`onnx_rules.py`. Dimensions: symbolic sizes stay symbolic (see
`jaxpr_onnx`'s docstring).
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Sequence

import jax.extend.core as jcore
import numpy as np
from onnx import helper

OPSET = 18  # Reduce* take `axes` as an input; TensorRT 10 / OpenVINO read it
INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min

Rule = Callable[["Graph", list, Any], Any]
RULES: dict[str, Rule] = {}


def rule(*names: str):
  """Registers `fn` as the rule of the primitives `names`."""
  def register(fn):
    for name in names:
      RULES[name] = fn
    return fn
  return register


# ---- dimensions --------------------------------------------------------------
def is_static(d) -> bool:
  return isinstance(d, (int, np.integer))


def _linear(d) -> tuple[str, int, int]:
  """A symbolic dim as (var, a, c) with d = a * var + c."""
  names = d.get_vars()
  if len(names) != 1:
    raise NotImplementedError(f"ONNX export: dimension {d} has several "
                              "symbolic variables")
  (var,) = names
  at = lambda n: int(d._evaluate({var: n}))  # pylint: disable=protected-access
  a = at(2) - at(1)
  c = at(1) - a
  if at(7) != 7 * a + c:
    raise NotImplementedError(f"ONNX export: dimension {d} is not linear")
  return var, a, c


def same_dim(a, b) -> bool:
  try:
    return bool(a == b)
  except Exception:  # pylint: disable=broad-except
    return False


def onnx_dims(shape) -> list:
  """A jax shape as ONNX value-info dims (symbolic -> its name)."""
  return [int(d) if is_static(d) else str(d) for d in shape]


# ---- the graph being built ---------------------------------------------------
class Graph:
  """Nodes, initializers and graph inputs of the model being built."""

  def __init__(self):
    self.nodes: list = []
    self.initializers: dict[str, np.ndarray] = {}
    self.inputs: list = []
    self._count = itertools.count()
    self._consts: dict = {}
    self._dim_sources: dict[str, tuple[str, int]] = {}
    self._dims: dict = {}

  def fresh(self, hint: str) -> str:
    return f"{hint}_{next(self._count)}"

  def op(self, op_type: str, inputs: Sequence[str], outputs: int = 1,
         **attrs):
    """Appends a node; returns its output name (a list if `outputs` > 1)."""
    names = [self.fresh(op_type.lower()) for _ in range(outputs)]
    self.nodes.append(helper.make_node(op_type, list(inputs), names,
                                       **attrs))
    return names[0] if outputs == 1 else names

  def const(self, value, dtype=None) -> str:
    """An initializer holding `value` (small ones shared)."""
    arr = np.asarray(value, dtype)
    key = None
    if arr.size <= 64:
      key = (arr.dtype.str, arr.shape, arr.tobytes())
      if key in self._consts:
        return self._consts[key]
    name = self.fresh("const")
    self.initializers[name] = arr
    if key is not None:
      self._consts[key] = name
    return name

  def add_input(self, name: str, aval) -> str:
    """A graph input; its symbolic dims become readable at run time."""
    self.inputs.append(helper.make_tensor_value_info(
        name, helper.np_dtype_to_tensor_dtype(np.dtype(aval.dtype)),
        onnx_dims(aval.shape)))
    for axis, d in enumerate(aval.shape):
      if not is_static(d):
        self._dim_sources.setdefault(str(d), (name, axis))
    return name

  def dim(self, d) -> str:
    """int64[1] holding the dimension `d` (computed if symbolic)."""
    if is_static(d):
      return self.const([int(d)], np.int64)
    key = str(d)
    if key not in self._dims:
      var, a, c = _linear(d)
      if var not in self._dim_sources:
        raise NotImplementedError(
            f"ONNX export: no graph input carries the dimension {var}")
      src, axis = self._dim_sources[var]
      out = self.op("Shape", [src], start=axis, end=axis + 1)
      if a != 1:
        out = self.op("Mul", [out, self.const([a], np.int64)])
      if c:
        out = self.op("Add", [out, self.const([c], np.int64)])
      self._dims[key] = out
    return self._dims[key]

  def shape(self, dims) -> str:
    """int64[len(dims)]: constant when static, else concatenated dims."""
    if all(is_static(d) for d in dims):
      return self.const([int(d) for d in dims], np.int64)
    return self.op("Concat", [self.dim(d) for d in dims], axis=0)

  def cast(self, x: str, dtype) -> str:
    return self.op("Cast", [x], to=helper.np_dtype_to_tensor_dtype(
        np.dtype(dtype)))

  def transpose(self, x: str, perm: Sequence[int]) -> str:
    perm = [int(p) for p in perm]
    if perm == sorted(perm):
      return x
    return self.op("Transpose", [x], perm=perm)


# ---- walking jaxprs ----------------------------------------------------------
def emit(g: Graph, jaxpr, consts, ins: Sequence[str]) -> list[str]:
  """Emits `jaxpr` applied to the tensors `ins`; returns its outputs."""
  env = {}
  for var, value in zip(jaxpr.constvars, consts):
    env[var] = g.const(np.asarray(value))
  env.update(zip(jaxpr.invars, ins))

  def read(atom):
    if isinstance(atom, jcore.Literal):
      return g.const(np.asarray(atom.val, atom.aval.dtype))
    return env[atom]

  for eqn in jaxpr.eqns:
    fn = RULES.get(eqn.primitive.name)
    if fn is None:
      raise NotImplementedError(
          f"ONNX export: no rule for the JAX primitive "
          f"{eqn.primitive.name!r} (moeclip_jax.inference.onnx_graph.RULES)")
    outs = fn(g, [read(a) for a in eqn.invars], eqn)
    outs = [outs] if isinstance(outs, str) else list(outs)
    env.update(zip(eqn.outvars, outs))
  return [read(v) for v in jaxpr.outvars]


def emit_closed(g: Graph, sub, ins: Sequence[str]) -> list[str]:
  if isinstance(sub, jcore.ClosedJaxpr):
    return emit(g, sub.jaxpr, sub.consts, ins)
  return emit(g, sub, [], ins)


# ---- calls and loops ---------------------------------------------------------
@rule("jit", "pjit", "closed_call", "core_call", "custom_jvp_call",
      "custom_vjp_call", "custom_vjp_call_jaxpr", "remat", "checkpoint")
def _inline(g, ins, eqn):
  for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
    if key in eqn.params:
      return emit_closed(g, eqn.params[key], ins)
  raise NotImplementedError(f"ONNX export: {eqn.primitive.name} without a "
                            "jaxpr parameter")


@rule("scan")
def _scan(g, ins, eqn):
  """Unrolled: `length` copies of the body (xs sliced along axis 0)."""
  p = eqn.params
  nc, nk, length = p["num_consts"], p["num_carry"], p["length"]
  consts, carry, xs = ins[:nc], ins[nc:nc + nk], ins[nc + nk:]
  steps = {}
  for i in (reversed(range(length)) if p["reverse"] else range(length)):
    index = g.const(np.int64(i))
    x_i = [g.op("Gather", [x, index], axis=0) for x in xs]
    outs = emit_closed(g, p["jaxpr"], [*consts, *carry, *x_i])
    carry, steps[i] = outs[:nk], outs[nk:]
  zero = g.const([0], np.int64)
  ys = [g.op("Concat", [g.op("Unsqueeze", [steps[i][j], zero])
                        for i in range(length)], axis=0)
        for j in range(len(eqn.outvars) - nk)]
  return [*carry, *ys]
