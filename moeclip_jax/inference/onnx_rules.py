"""ONNX rules of the JAX primitives the detectors' export functions use:
elementwise, reductions, shapes, indexing, linear algebra, convolutions
and windows. Each registers itself in `onnx_graph.RULES` with `@rule`.
"""

from __future__ import annotations

import numpy as np

from moeclip_jax.inference.onnx_graph import (
  INT64_MAX,
  INT64_MIN,
  RULES,
  is_static,
  rule,
  same_dim,
)

# ---- elementwise ---------------------------------------------------------------
_UNARY = {"exp": "Exp", "log": "Log", "tanh": "Tanh", "logistic": "Sigmoid",
          "sqrt": "Sqrt", "abs": "Abs", "neg": "Neg", "erf": "Erf",
          "sign": "Sign", "floor": "Floor", "ceil": "Ceil", "sin": "Sin",
          "cos": "Cos"}
_BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div",
           "max": "Max", "min": "Min", "pow": "Pow", "eq": "Equal",
           "gt": "Greater", "ge": "GreaterOrEqual", "lt": "Less",
           "le": "LessOrEqual"}
# bool -> logical op, integers -> bitwise op
_LOGICAL = {"and": ("And", "BitwiseAnd"), "or": ("Or", "BitwiseOr"),
            "xor": ("Xor", "BitwiseXor"), "not": ("Not", "BitwiseNot")}


def _one_to_one(op_type):
  return lambda g, ins, eqn: g.op(op_type, ins)


for _name, _op in {**_UNARY, **_BINARY}.items():
  RULES[_name] = _one_to_one(_op)


@rule(*_LOGICAL)
def _logical(g, ins, eqn):
  boolean, bitwise = _LOGICAL[eqn.primitive.name]
  is_bool = np.dtype(eqn.invars[0].aval.dtype) == np.bool_
  return g.op(boolean if is_bool else bitwise, ins)


def _scalar(g, value, eqn) -> str:
  return g.const(np.asarray(value, eqn.outvars[0].aval.dtype))


@rule("rsqrt")
def _rsqrt(g, ins, eqn):
  return g.op("Reciprocal", [g.op("Sqrt", ins)])


@rule("square")
def _square(g, ins, eqn):
  return g.op("Mul", [ins[0], ins[0]])


@rule("erfc")
def _erfc(g, ins, eqn):
  return g.op("Sub", [_scalar(g, 1, eqn), g.op("Erf", ins)])


@rule("expm1")
def _expm1(g, ins, eqn):
  return g.op("Sub", [g.op("Exp", ins), _scalar(g, 1, eqn)])


@rule("log1p")
def _log1p(g, ins, eqn):
  return g.op("Log", [g.op("Add", [ins[0], _scalar(g, 1, eqn)])])


@rule("exp2")
def _exp2(g, ins, eqn):
  return g.op("Pow", [_scalar(g, 2, eqn), ins[0]])


@rule("ne")
def _ne(g, ins, eqn):
  return g.op("Not", [g.op("Equal", ins)])


@rule("is_finite")
def _is_finite(g, ins, eqn):
  return g.op("Not", [g.op("Or", [g.op("IsNaN", ins), g.op("IsInf", ins)])])


@rule("integer_pow")
def _integer_pow(g, ins, eqn):
  y = eqn.params["y"]
  if y == 2:
    return g.op("Mul", [ins[0], ins[0]])
  return g.op("Pow", [ins[0], _scalar(g, y, eqn)])


@rule("rem")
def _rem(g, ins, eqn):
  return g.op("Mod", ins, fmod=1)  # C-style: the sign of the dividend


@rule("clamp")
def _clamp(g, ins, eqn):
  lo, x, hi = ins
  return g.op("Min", [g.op("Max", [x, lo]), hi])


@rule("select_n")
def _select_n(g, ins, eqn):
  which, *cases = ins
  if np.dtype(eqn.invars[0].aval.dtype) == np.bool_:
    return g.op("Where", [which, cases[1], cases[0]])
  out = cases[0]
  for i, case in enumerate(cases[1:], 1):
    is_i = g.op("Equal", [which, g.const(np.asarray(
        i, eqn.invars[0].aval.dtype))])
    out = g.op("Where", [is_i, case, out])
  return out


@rule("convert_element_type")
def _convert(g, ins, eqn):
  if np.dtype(eqn.invars[0].aval.dtype) == np.dtype(eqn.params["new_dtype"]):
    return ins[0]
  return g.cast(ins[0], eqn.params["new_dtype"])


@rule("stop_gradient", "copy", "copy_p", "optimization_barrier",
      "reduce_precision")
def _identity(g, ins, eqn):
  if eqn.primitive.name == "reduce_precision":
    bits = (eqn.params["exponent_bits"], eqn.params["mantissa_bits"])
    if np.dtype(eqn.invars[0].aval.dtype) != np.float32 or bits != (8, 23):
      raise NotImplementedError(f"ONNX export: reduce_precision to {bits}")
  return ins


# ---- reductions ------------------------------------------------------------------
_REDUCE = {"reduce_sum": "ReduceSum", "reduce_max": "ReduceMax",
           "reduce_min": "ReduceMin", "reduce_prod": "ReduceProd"}
_REDUCE_BOOL = {"reduce_or": "ReduceMax", "reduce_and": "ReduceMin"}


def _reduce_axes(g, x, axes, op_type) -> str:
  if not axes:
    return x
  return g.op(op_type, [x, g.const([int(a) for a in axes], np.int64)],
              keepdims=0)


@rule(*_REDUCE)
def _reduce(g, ins, eqn):
  return _reduce_axes(g, ins[0], eqn.params["axes"],
                      _REDUCE[eqn.primitive.name])


@rule(*_REDUCE_BOOL)
def _reduce_bool(g, ins, eqn):
  x = g.cast(ins[0], np.int32)
  x = _reduce_axes(g, x, eqn.params["axes"], _REDUCE_BOOL[eqn.primitive.name])
  return g.cast(x, np.bool_)


@rule("argmax", "argmin")
def _argmax(g, ins, eqn):
  (axis,) = eqn.params["axes"]
  op_type = "ArgMax" if eqn.primitive.name == "argmax" else "ArgMin"
  out = g.op(op_type, ins, axis=int(axis), keepdims=0)
  return g.cast(out, eqn.params["index_dtype"])


@rule("top_k")
def _top_k(g, ins, eqn):
  axis = eqn.params.get("axis", -1)
  k = g.const([eqn.params["k"]], np.int64)
  values, indices = g.op("TopK", [ins[0], k], outputs=2, axis=int(axis),
                         largest=1, sorted=1)
  return values, g.cast(indices, eqn.outvars[1].aval.dtype)


# ---- shapes ------------------------------------------------------------------------
@rule("reshape")
def _reshape(g, ins, eqn):
  if eqn.params.get("dimensions") is not None:
    raise NotImplementedError("ONNX export: reshape with dimensions")
  dims = list(eqn.params["new_sizes"])
  symbolic = [i for i, d in enumerate(dims) if not is_static(d)]
  if len(symbolic) == 1:
    dims[symbolic[0]] = -1
  attrs = {"allowzero": 1} if any(same_dim(d, 0) for d in dims) else {}
  return g.op("Reshape", [ins[0], g.shape(dims)], **attrs)


@rule("squeeze")
def _squeeze(g, ins, eqn):
  axes = [int(a) for a in eqn.params["dimensions"]]
  return g.op("Squeeze", [ins[0], g.const(axes, np.int64)]) if axes else ins[0]


@rule("expand_dims")
def _expand_dims(g, ins, eqn):
  axes = [int(a) for a in eqn.params["dimensions"]]
  return g.op("Unsqueeze", [ins[0], g.const(axes, np.int64)])


@rule("broadcast_in_dim")
def _broadcast_in_dim(g, ins, eqn):
  """Unsqueeze the new axes, then Expand where a size changes."""
  x, shape = ins[0], eqn.params["shape"]
  dims = eqn.params["broadcast_dimensions"]
  src = eqn.invars[0].aval.shape
  new_axes = [i for i in range(len(shape)) if i not in dims]
  if new_axes:
    x = g.op("Unsqueeze", [x, g.const(new_axes, np.int64)])
  kept = dict(zip(dims, src))
  target = [1 if i in kept and same_dim(kept[i], shape[i]) else shape[i]
            for i in range(len(shape))]
  if all(same_dim(t, 1) for t in target):
    return x
  return g.op("Expand", [x, g.shape(target)])


@rule("transpose")
def _transpose(g, ins, eqn):
  return g.transpose(ins[0], eqn.params["permutation"])


@rule("concatenate")
def _concatenate(g, ins, eqn):
  return g.op("Concat", ins, axis=int(eqn.params["dimension"]))


@rule("stack")
def _stack(g, ins, eqn):
  axis = g.const([int(eqn.params["axis"])], np.int64)
  return g.op("Concat", [g.op("Unsqueeze", [x, axis]) for x in ins],
              axis=int(eqn.params["axis"]))


@rule("split")
def _split(g, ins, eqn):
  sizes = g.const([int(s) for s in eqn.params["sizes"]], np.int64)
  return g.op("Split", [ins[0], sizes], outputs=len(eqn.outvars),
              axis=int(eqn.params["axis"]))


def _slice(g, x, axes, starts, ends, steps) -> str:
  if not axes:
    return x
  i64 = lambda v: g.const(list(v), np.int64)
  return g.op("Slice", [x, i64(starts), i64(ends), i64(axes), i64(steps)])


@rule("slice")
def _slice_rule(g, ins, eqn):
  p, shape = eqn.params, eqn.invars[0].aval.shape
  strides = p["strides"] or (1,) * len(shape)
  axes, starts, ends, steps = [], [], [], []
  for axis, (lo, hi, st, n) in enumerate(zip(p["start_indices"],
                                             p["limit_indices"], strides,
                                             shape)):
    full = same_dim(hi, n)
    if same_dim(lo, 0) and full and st == 1:
      continue
    if not is_static(lo) or not (full or is_static(hi)):
      raise NotImplementedError(f"ONNX export: slice [{lo}:{hi}] of a "
                                "symbolic dimension")
    axes.append(axis)
    starts.append(int(lo))
    ends.append(INT64_MAX if full else int(hi))
    steps.append(int(st))
  return _slice(g, ins[0], axes, starts, ends, steps)


@rule("dynamic_slice")
def _dynamic_slice(g, ins, eqn):
  """Starts clamped into range (as XLA does), on the axes it narrows."""
  x, *starts = ins
  shape, sizes = eqn.invars[0].aval.shape, eqn.params["slice_sizes"]
  axes = [i for i in range(len(shape)) if not same_dim(sizes[i], shape[i])]
  if not all(is_static(shape[i]) and is_static(sizes[i]) for i in axes):
    raise NotImplementedError("ONNX export: dynamic_slice of a symbolic axis")
  if not axes:
    return x
  zero, one = g.const(np.int64(0)), g.const([1], np.int64)
  begin = g.op("Concat", [g.op("Reshape", [g.op("Clip", [
      g.cast(starts[i], np.int64), zero,
      g.const(np.int64(int(shape[i]) - int(sizes[i])))]), one])
                          for i in axes], axis=0)
  end = g.op("Add", [begin, g.const([int(sizes[i]) for i in axes], np.int64)])
  return g.op("Slice", [x, begin, end, g.const(axes, np.int64)])


@rule("dim_as_value")
def _dim_as_value(g, ins, eqn):
  value = g.op("Squeeze", [g.dim(eqn.params["dim"]), g.const([0], np.int64)])
  return g.cast(value, eqn.outvars[0].aval.dtype)


@rule("rev")
def _rev(g, ins, eqn):
  axes = [int(a) for a in eqn.params["dimensions"]]
  n = len(axes)
  return _slice(g, ins[0], axes, [-1] * n, [INT64_MIN] * n, [-1] * n)


@rule("pad")
def _pad(g, ins, eqn):
  config = eqn.params["padding_config"]
  if any(int(i) != 0 or int(lo) < 0 or int(hi) < 0 for lo, hi, i in config):
    raise NotImplementedError("ONNX export: interior or negative padding")
  pads = [int(lo) for lo, _, _ in config] + [int(hi) for _, hi, _ in config]
  return g.op("Pad", [ins[0], g.const(pads, np.int64), ins[1]],
              mode="constant")


@rule("iota")
def _iota(g, ins, eqn):
  p = eqn.params
  if not all(is_static(d) for d in p["shape"]):
    raise NotImplementedError("ONNX export: iota of a symbolic shape")
  shape, axis = tuple(int(d) for d in p["shape"]), int(p["dimension"])
  line = np.arange(shape[axis], dtype=p["dtype"])
  view = [1] * len(shape)
  view[axis] = shape[axis]
  return g.const(np.broadcast_to(line.reshape(view), shape))


# ---- indexing ----------------------------------------------------------------------
@rule("gather")
def _gather(g, ins, eqn):
  """Gathers along ONE operand axis: `x[..., idx, ...]` (collapsed) or a
  dynamic slice of `slice_sizes[a]` from a scalar start (not collapsed)."""
  x, idx = ins
  dn, sizes = eqn.params["dimension_numbers"], eqn.params["slice_sizes"]
  shape, ishape = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
  mode = str(eqn.params["mode"])
  if (dn.operand_batching_dims or len(dn.start_index_map) != 1
      or "FILL" in mode):
    raise NotImplementedError(f"ONNX export: gather {dn} ({mode})")
  (a,) = dn.start_index_map
  if not all(same_dim(sizes[i], shape[i]) for i in range(len(shape)) if i != a):
    raise NotImplementedError(f"ONNX export: gather with slice {sizes}")
  if not is_static(shape[a]) or not is_static(sizes[a]):
    raise NotImplementedError("ONNX export: gather along a symbolic axis")
  batch = list(ishape[:-1])
  start = g.op("Squeeze", [g.cast(idx, np.int64), g.const([-1], np.int64)])
  limit = int(shape[a]) - int(sizes[a])
  start = g.op("Clip", [start, g.const(np.int64(0)),
                        g.const(np.int64(limit))])
  labels = [("x", i) for i in range(len(shape))]
  if tuple(dn.collapsed_slice_dims) == (a,) and int(sizes[a]) == 1:
    labels[a:a + 1] = [("i", j) for j in range(len(batch))]
  elif not dn.collapsed_slice_dims and not batch:
    start = g.op("Add", [start, g.const(np.arange(int(sizes[a]),
                                                  dtype=np.int64))])
  else:
    raise NotImplementedError(f"ONNX export: gather {dn}")
  out = g.op("Gather", [x, start], axis=a)
  kept = iter(i for i in range(len(shape)) if i not in dn.collapsed_slice_dims)
  batch_ids = iter(range(len(batch)))
  rank = len(eqn.outvars[0].aval.shape)
  want = [("x", next(kept)) if pos in dn.offset_dims else ("i", next(batch_ids))
          for pos in range(rank)]
  return g.transpose(out, [labels.index(w) for w in want])


# ---- linear algebra, convolutions, windows -----------------------------------------
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


@rule("dot_general")
def _dot_general(g, ins, eqn):
  """MatMul when it fits (one contraction, <= 1 free rhs axis), else
  Einsum. Output order as JAX: batch, lhs free, rhs free."""
  (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
  lrank, rrank = (len(v.aval.shape) for v in eqn.invars)
  lf = [i for i in range(lrank) if i not in lc and i not in lb]
  rf = [i for i in range(rrank) if i not in rc and i not in rb]
  if len(lc) == 1 and len(rf) <= 1 and (not lb or (len(lf) == 1
                                                   and len(rf) == 1)):
    lhs = g.transpose(ins[0], [*lb, *lf, *lc])
    rhs = g.transpose(ins[1], [*rb, *rc, *rf])
    return g.op("MatMul", [lhs, rhs])
  letters = iter(_LETTERS)
  lhs = [next(letters) for _ in range(lrank)]
  rhs = [""] * rrank
  for li, ri in [*zip(lc, rc), *zip(lb, rb)]:
    rhs[ri] = lhs[li]
  rhs = [c or next(letters) for c in rhs]
  out = [lhs[i] for i in lb] + [lhs[i] for i in lf] + [rhs[i] for i in rf]
  eq = f"{''.join(lhs)},{''.join(rhs)}->{''.join(out)}"
  return g.op("Einsum", ins, equation=eq)


def _conv_attrs(strides, padding, dilation) -> dict:
  if any(int(lo) < 0 or int(hi) < 0 for lo, hi in padding):
    raise NotImplementedError("ONNX export: negative padding")
  pads = [int(lo) for lo, _ in padding] + [int(hi) for _, hi in padding]
  return {"strides": [int(s) for s in strides], "pads": pads,
          "dilations": [int(d) for d in dilation]}


@rule("conv_general_dilated")
def _conv(g, ins, eqn):
  """NCHW Conv between transposes given by the dimension numbers."""
  p = eqn.params
  if (any(int(d) != 1 for d in p["lhs_dilation"])
      or p["batch_group_count"] != 1):
    raise NotImplementedError("ONNX export: transposed / batch-grouped conv")
  dn = p["dimension_numbers"]
  x = g.transpose(ins[0], dn.lhs_spec)
  w = g.transpose(ins[1], dn.rhs_spec)
  y = g.op("Conv", [x, w], group=int(p["feature_group_count"]),
           **_conv_attrs(p["window_strides"], p["padding"],
                         p["rhs_dilation"]))
  return g.transpose(y, np.argsort(dn.out_spec))


@rule("reduce_window_sum", "reduce_window_max")
def _reduce_window(g, ins, eqn):
  """Pools over the windowed axes moved last: MaxPool, or a depthwise
  Conv of ones for the sum (exact zero padding)."""
  p = eqn.params
  shape = eqn.invars[0].aval.shape
  if any(int(d) != 1 for d in p["base_dilation"]):
    raise NotImplementedError("ONNX export: reduce_window base dilation")
  spatial = [i for i in range(len(shape))
             if (p["window_dimensions"][i], p["window_strides"][i],
                 tuple(p["padding"][i]), p["window_dilation"][i])
             != (1, 1, (0, 0), 1)]
  other = [i for i in range(len(shape)) if i not in spatial]
  if len(other) != 2 or not is_static(shape[other[1]]):
    raise NotImplementedError(f"ONNX export: reduce_window over {shape}")
  perm = [*other, *spatial]
  x = g.transpose(ins[0], perm)
  kernel = [int(p["window_dimensions"][i]) for i in spatial]
  attrs = _conv_attrs([p["window_strides"][i] for i in spatial],
                      [p["padding"][i] for i in spatial],
                      [p["window_dilation"][i] for i in spatial])
  if eqn.primitive.name == "reduce_window_max":
    y = g.op("MaxPool", [x], kernel_shape=kernel, **attrs)
  else:
    channels = int(shape[other[1]])
    ones = g.const(np.ones((channels, 1, *kernel), eqn.invars[0].aval.dtype))
    y = g.op("Conv", [x, ones], group=channels, **attrs)
  return g.transpose(y, np.argsort(perm))
