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
`moeclip_jax.data.transforms` only (no model code).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from moeclip_jax.data import transforms
from moeclip_jax.utils import io

FORMAT = "moeclip_jax.export/1"


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
  io.write_npz(out / spec.table_file, **_tables(spec))
  io.write_json(out / "export.json", {
      "format": FORMAT, **export_meta(spec),
      "platforms": list(exported.platforms)})
  return out


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


def _tables(spec: ExportSpec) -> dict[str, np.ndarray]:
  single = len(spec.class_inputs) == 1
  out = {}
  for name, table in spec.class_inputs.items():
    for cls, x in table.items():
      out[cls if single else f"{cls}/{name}"] = np.asarray(x)
  return out


def read_tables(path, inputs: Sequence[str]) -> dict[str, list]:
  """{class: [input arrays in `inputs` order]} from a table file."""
  tables: dict[str, dict] = {}
  with np.load(path) as z:
    for key in z.files:
      cls, _, name = key.rpartition("/") if len(inputs) > 1 else (key, "",
                                                                  inputs[0])
      tables.setdefault(cls, {})[name] = jnp.asarray(z[key])
  return {c: [t[n] for n in inputs] for c, t in tables.items()}


class ExportedDetector:
  """Runs an export folder: `.predict(images, class_name)` (maps at the
  model size), `.set_prompts(images)` when the program takes prompts."""

  def __init__(self, folder):
    self.folder = pathlib.Path(folder)
    meta_path = self.folder / "export.json"
    if not meta_path.is_file():
      raise FileNotFoundError(f"{meta_path}: missing (not an export folder?)")
    self.meta = json.loads(meta_path.read_text())
    if self.meta.get("format") != FORMAT:
      raise ValueError(f"{meta_path}: format {self.meta.get('format')!r}")
    self.method = self.meta["method"]
    self.image_size = int(self.meta["image_size"])
    pre = dict(self.meta["preprocess"])
    pre["mean"], pre["std"] = tuple(pre["mean"]), tuple(pre["std"])
    self.preprocess = transforms.Preprocess(**pre)
    self.exported = jax.export.deserialize(
        (self.folder / "predict.stablehlo").read_bytes())
    with np.load(self.folder / "params.npz") as z:
      self.params = [jnp.asarray(z[f"p{i}"])
                     for i in range(self.meta["num_params"])]
    self.tables = read_tables(self.folder / self.meta["table_file"],
                              self.meta["class_inputs"])
    self.runtime = {k: None for k in self.meta["runtime_inputs"]}
    self.default_class = self.meta.get("default_class")

  def pixels(self, images) -> np.ndarray:
    x = np.asarray(images)
    x = x[None] if x.ndim == 3 else x
    if x.dtype != np.uint8:
      return x.astype(np.float32)
    return np.stack([transforms.normalize(
        transforms.resize_image(im, self.preprocess), self.preprocess)
                     for im in x])

  def set_prompts(self, images) -> None:
    """The K normal prompt images (uint8 or normalised float)."""
    if "prompts" not in self.runtime:
      raise ValueError(f"this {self.method} export takes no prompts")
    x = self.pixels(images)
    want = self.meta["runtime_inputs"]["prompts"][0]
    if len(x) != want:
      raise ValueError(f"exported for K={want} prompts, got {len(x)}")
    self.runtime["prompts"] = jnp.asarray(x)

  def predict(self, images, class_name: str | None = None) -> dict:
    """Like the live detector's predict (maps at the model size)."""
    class_name = class_name or self.default_class
    if class_name not in self.tables:
      raise KeyError(f"class {class_name!r} was not exported; exported: "
                     f"{sorted(self.tables)} (re-export with --class-names)")
    missing = [k for k, v in self.runtime.items() if v is None]
    if missing:
      raise ValueError("no prompts: call set_prompts(images) first")
    amap, score = self.exported.call(self.params, self.pixels(images),
                                     *self.runtime.values(),
                                     *self.tables[class_name])
    return {"anomaly_map": np.asarray(amap), "image_score": np.asarray(score)}


def load_exported(folder) -> ExportedDetector:
  return ExportedDetector(folder)
