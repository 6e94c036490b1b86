"""Reading an export folder: export.json, preprocessing, class tables and
prompts, with numpy + PIL only (no jax, no model code).

`ExportFolder` is what every export runner shares (`predict(images,
class_name)`, `set_prompts(images)`); a runner adds how the program runs
(`_call`): `export.ExportedDetector` (StableHLO, jax) and
`onnx_runner.OnnxDetector` (ONNX, onnxruntime).
"""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import Sequence

import numpy as np

from moeclip_jax.data import transforms

STABLEHLO_FORMAT = "moeclip_jax.export/1"
ONNX_FORMAT = "moeclip_jax.export.onnx/1"
# format -> the loader of that format (named in errors)
LOADERS = {STABLEHLO_FORMAT: "moeclip_jax.inference.export.load_exported",
           ONNX_FORMAT: "moeclip_jax.inference.onnx_runner.load_onnx"}
# every file an exporter may write (`--force` removes them first)
EXPORT_FILES = ("export.json", "predict.stablehlo", "params.npz",
                "predict.onnx", "predict.onnx.data", "text.npz", "stats.npz")


def read_meta(folder) -> dict:
  path = pathlib.Path(folder) / "export.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path}: missing (not an export folder?)")
  return json.loads(path.read_text())


def read_tables(path, inputs: Sequence[str]) -> dict[str, list]:
  """{class: [input arrays in `inputs` order]} from a table file."""
  tables: dict[str, dict] = {}
  with np.load(path) as z:
    for key in z.files:
      cls, _, name = key.rpartition("/") if len(inputs) > 1 else (key, "",
                                                                  inputs[0])
      tables.setdefault(cls, {})[name] = np.asarray(z[key])
  return {c: [t[n] for n in inputs] for c, t in tables.items()}


def prepare_out(out, force: bool = False) -> pathlib.Path:
  """`out` as an export folder: refuses one that already holds an export
  (unless `force`: its export files are removed) or a file."""
  out = pathlib.Path(out)
  if out.exists() and not out.is_dir():
    raise FileExistsError(f"{out}: exists and is not a folder")
  present = [n for n in EXPORT_FILES if (out / n).exists()]
  if present and not force:
    raise FileExistsError(
        f"{out}: already holds an export ({', '.join(present)}); choose "
        "another --out or pass --force to replace it")
  for name in present:
    path = out / name
    shutil.rmtree(path) if path.is_dir() else path.unlink()
  out.mkdir(parents=True, exist_ok=True)
  return out


class ExportFolder:
  """An export folder's metadata, preprocessing, tables and prompts."""

  format = ""  # the export.json "format" this runner reads

  def __init__(self, folder):
    self.folder = pathlib.Path(folder)
    self.meta = read_meta(self.folder)
    got = self.meta.get("format")
    if got != self.format:
      hint = f" (load it with {LOADERS[got]})" if got in LOADERS else ""
      raise ValueError(f"{self.folder / 'export.json'}: format {got!r}, "
                       f"expected {self.format!r}{hint}")
    self.method = self.meta["method"]
    self.image_size = int(self.meta["image_size"])
    pre = dict(self.meta["preprocess"])
    pre["mean"], pre["std"] = tuple(pre["mean"]), tuple(pre["std"])
    self.preprocess = transforms.Preprocess(**pre)
    self.tables = read_tables(self.folder / self.meta["table_file"],
                              self.meta["class_inputs"])
    self.runtime = {k: None for k in self.meta["runtime_inputs"]}
    self.default_class = self.meta.get("default_class")

  def pixels(self, images) -> np.ndarray:
    """uint8 [B, H, W, 3] (resized, normalised) or float (as given)."""
    x = np.asarray(images)
    x = x[None] if x.ndim == 3 else x
    if x.dtype != np.uint8:
      return x.astype(np.float32)
    return np.stack([transforms.normalize(
        transforms.resize_image(im, self.preprocess), self.preprocess)
                     for im in x]).astype(np.float32)

  def set_prompts(self, images) -> None:
    """The K normal prompt images (uint8 or normalised float)."""
    if "prompts" not in self.runtime:
      raise ValueError(f"this {self.method} export takes no prompts")
    x = self.pixels(images)
    want = self.meta["runtime_inputs"]["prompts"][0]
    if len(x) != want:
      raise ValueError(f"exported for K={want} prompts, got {len(x)}")
    self.runtime["prompts"] = x

  def predict(self, images, class_name: str | None = None) -> dict:
    """Like the live detector's predict (maps at the model size)."""
    class_name = class_name or self.default_class
    if class_name not in self.tables:
      raise KeyError(f"class {class_name!r} was not exported; exported: "
                     f"{sorted(self.tables)} (re-export with --class-names)")
    if any(v is None for v in self.runtime.values()):
      raise ValueError("no prompts: call set_prompts(images) first")
    amap, score = self._call(self.pixels(images), list(self.runtime.values()),
                             self.tables[class_name])
    return {"anomaly_map": np.asarray(amap), "image_score": np.asarray(score)}

  def _call(self, pixels, runtime: list, class_inputs: list):
    raise NotImplementedError
