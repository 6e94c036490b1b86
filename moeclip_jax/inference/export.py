"""Serialized StableHLO (jax.export) of any detector's `export_fn()`.

A detector describes what to lower with an `ExportSpec`:

  fn(flat_params, pixels f32[b, S, S, 3], *runtime, *class_inputs)
    -> (anomaly_map f32[b, S, S], image_score f32[b])

with a symbolic batch `b`. Parameters are ARGUMENTS (a ViT-L baked in as
constants nears the 2 GiB limit). `runtime` inputs are given by the caller
at run time (InCTRL's K prompt images, via `set_prompts`); `class_inputs`
are per-class tables stored beside the program (MoECLIP / InCTRL text
matrices, AnomalyMoE map statistics).

OUT/
  predict.stablehlo  the serialized program
  params.npz         the flat parameter leaves p0..pN, in argument order
  <table_file>       class tables: key = class (one input) or class/input
  export.json        format, method, image size, preprocessing, classes,
                     input order, platforms, method facts

`load_exported(OUT)` runs it with jax + numpy + PIL and
`moeclip_jax.data.transforms` only (no model code). `export_onnx` writes
the same folder with `predict.onnx` instead (onnxruntime runs it).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from moeclip_jax.data import transforms
from moeclip_jax.inference import exported, onnx_runner
from moeclip_jax.utils import io

FORMAT = exported.STABLEHLO_FORMAT


@dataclasses.dataclass
class ExportSpec:
  """What a detector's `export_fn()` hands to the exporters."""

  method: str
  fn: Callable
  params: Sequence[Any]  # flat parameter leaves
  image_size: int
  preprocess: Any
  class_inputs: Mapping[str, Mapping[str, np.ndarray]]  # input -> class -> x
  table_file: str
  default_class: str | None = None
  runtime_inputs: Mapping[str, jax.ShapeDtypeStruct] = dataclasses.field(
      default_factory=dict)
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  checkpoint_dir: Any = None

  @property
  def classes(self) -> list[str]:
    first = next(iter(self.class_inputs.values()))
    return list(first)

  def arg_specs(self, batch) -> list:
    """Abstract arguments of `fn` (batch: an int or a symbolic dim)."""
    s = self.image_size
    specs = [[jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
              for x in self.params],
             jax.ShapeDtypeStruct((batch, s, s, 3), jnp.float32)]
    specs += list(self.runtime_inputs.values())
    for table in self.class_inputs.values():
      x = np.asarray(next(iter(table.values())))
      specs.append(jax.ShapeDtypeStruct(x.shape, x.dtype))
    return specs


def write_stablehlo(spec: ExportSpec, out,
                    platforms: Sequence[str] | None = None) -> pathlib.Path:
  """Lowers `spec.fn` with a symbolic batch and writes the export folder."""
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  (batch,) = jax.export.symbolic_shape("b")
  exported = jax.export.export(
      jax.jit(spec.fn),
      platforms=platforms or (jax.default_backend(),))(*spec.arg_specs(batch))
  (out / "predict.stablehlo").write_bytes(exported.serialize())
  io.write_npz(out / "params.npz",
               **{f"p{i}": np.asarray(x) for i, x in enumerate(spec.params)})
  write_tables_and_meta(spec, out, {"format": FORMAT, **export_meta(spec),
                                    "platforms": list(exported.platforms)})
  return out


def write_tables_and_meta(spec: ExportSpec, out, meta: dict) -> None:
  """The class tables, then export.json (last: it marks a whole folder)."""
  io.write_npz(pathlib.Path(out) / spec.table_file, **table_arrays(spec))
  io.write_json(pathlib.Path(out) / "export.json", meta)


def export_meta(spec: ExportSpec) -> dict:
  """export.json's fields (every exporter writes them)."""
  pre = dataclasses.asdict(transforms.get_preprocess(spec.preprocess))
  return {"method": spec.method, "image_size": spec.image_size,
          "classes": spec.classes, "num_params": len(spec.params),
          "class_inputs": list(spec.class_inputs),
          "runtime_inputs": {k: list(v.shape) for k, v in
                             spec.runtime_inputs.items()},
          "table_file": spec.table_file, "jax_version": jax.__version__,
          "preprocess": pre, "checkpoint": str(spec.checkpoint_dir),
          "default_class": spec.default_class,
          **spec.meta}


def table_arrays(spec: ExportSpec) -> dict[str, np.ndarray]:
  """The table file's arrays: key = class (one input) or class/input."""
  single = len(spec.class_inputs) == 1
  out = {}
  for name, table in spec.class_inputs.items():
    for cls, x in table.items():
      out[cls if single else f"{cls}/{name}"] = np.asarray(x)
  return out


read_tables = exported.read_tables


class ExportedDetector(exported.ExportFolder):
  """Runs a StableHLO export folder: `.predict(images, class_name)` (maps
  at the model size), `.set_prompts(images)` when the program takes
  prompts."""

  format = FORMAT

  def __init__(self, folder):
    super().__init__(folder)
    self.exported = jax.export.deserialize(
        (self.folder / "predict.stablehlo").read_bytes())
    with np.load(self.folder / "params.npz") as z:
      self.params = [jnp.asarray(z[f"p{i}"])
                     for i in range(self.meta["num_params"])]

  def _call(self, pixels, runtime, class_inputs):
    return self.exported.call(self.params, pixels, *runtime, *class_inputs)


def load_exported(folder) -> exported.ExportFolder:
  """The runner of an export folder, by its export.json format
  (StableHLO: `ExportedDetector`; ONNX: `onnx_runner.OnnxDetector`)."""
  if exported.read_meta(folder).get("format") == exported.ONNX_FORMAT:
    return onnx_runner.load_onnx(folder)
  return ExportedDetector(folder)
