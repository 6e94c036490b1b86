"""`export` of InCTRL and AnomalyMoE detectors (MoECLIP: export.py).

Same folder layout and rules as MoECLIP's export (predict.stablehlo with a
symbolic batch `b`, parameters as arguments in params.npz, export.json),
with the per-method inputs:

  InCTRL      f(params, pixels f32[b, S, S, 3], prompts f32[K, S, S, 3],
                text f32[2, D]) -> (M_p f32[b, S, S], score f32[b]);
              K is fixed at export (--shots / the checkpoint's `shots`);
              text.npz holds [t_n, t_a] per exported class.
  AnomalyMoE  f(params, pixels f32[b, S, S, 3], class_id i32[],
                known f32[], min_max f32[3, 2]) -> (map, score);
              stats.npz holds per exported class its checkpoint index,
              `known` (component masks from the class centres) and the
              [3, 2] map statistics (calibration.json's `class_min_max`,
              else the checkpoint's); a class without statistics is an
              error (run `calibrate`).

`export.json` carries the preprocessing (resize, crop, mean / std), so the
loaders below run with jax + numpy + PIL and `moeclip_jax.data.transforms`
only (no model code).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from moeclip_jax.data import transforms
from moeclip_jax.utils import io


def _serialize(fn, args, platforms, out: pathlib.Path) -> list[str]:
  exported = jax.export.export(
      jax.jit(fn), platforms=platforms or (jax.default_backend(),))(*args)
  (out / "predict.stablehlo").write_bytes(exported.serialize())
  return list(exported.platforms)


def _specs(flat) -> list[jax.ShapeDtypeStruct]:
  return [jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
          for x in flat]


def _meta(adapter, names, flat, platforms, **extra) -> dict:
  pre = dataclasses.asdict(transforms.get_preprocess(adapter.preprocess))
  return {"method": adapter.name, "image_size": adapter.image_size,
          "classes": list(names), "num_params": len(flat),
          "platforms": platforms, "jax_version": jax.__version__,
          "preprocess": pre, "checkpoint": str(adapter.checkpoint_dir),
          **extra}


def export_inctrl(adapter, out, class_names: Sequence[str] = (),
                  platforms=None, generic: str = "object") -> dict:
  """Writes an InCTRL export; returns export.json's method fields."""
  from moeclip_jax.methods.inctrl import model as inctrl_model  # pylint: disable=g-import-not-at-top
  det = adapter.detector
  flat, treedef = jax.tree.flatten(det.variables)
  names = list(dict.fromkeys([generic, *class_names]))
  texts = {n: np.asarray(det.text_cache(n), np.float32) for n in names}
  s, k = adapter.image_size, adapter.shots

  def fn(flat_params, pixels, prompts, text):
    variables = jax.tree.unflatten(treedef, flat_params)
    encode = lambda x: det.model.apply(
        variables, x, method=inctrl_model.InCTRL.encode_images)
    score, aux = det.model.apply(
        variables, encode(pixels), encode(prompts), text,
        method=inctrl_model.InCTRL.score_features)
    amap = inctrl_model.patch_map_to_image(aux["patch_map"], s)
    return amap, score

  (b,) = jax.export.symbolic_shape("b")
  args = (_specs(flat), jax.ShapeDtypeStruct((b, s, s, 3), jnp.float32),
          jax.ShapeDtypeStruct((k, s, s, 3), jnp.float32),
          jax.ShapeDtypeStruct(texts[generic].shape, jnp.float32))
  plats = _serialize(fn, args, platforms, out)
  io.write_npz(out / "params.npz",
               **{f"p{i}": np.asarray(x) for i, x in enumerate(flat)})
  io.write_npz(out / "text.npz", **texts)
  return _meta(adapter, names, flat, plats, shots=k)


def anomalymoe_stats(adapter, names, calibration: dict | None) -> dict:
  """{class: (checkpoint index, known, min_max [3, 2])} for the export."""
  known = list(getattr(adapter.detector, "class_names", []) or [])
  entries = (calibration or {}).get("classes", {})
  out = {}
  for name in names:
    entry = entries.get(name) or {}
    mm = entry.get("class_min_max")
    mm = adapter.stored_min_max(name) if mm is None else np.asarray(mm)
    if mm is None:
      raise ValueError(
          f"AnomalyMoE class {name!r} has no map statistics: run `moeclip-jax "
          "calibrate --class-name ...` first (export needs per-class "
          "min-max; calibrated: "
          f"{sorted(c for c, e in entries.items() if 'class_min_max' in e)})")
    idx = known.index(name) if name in known else 0
    out[name] = (idx, float(name in known), np.asarray(mm, np.float32))
  return out


def export_anomalymoe(adapter, out, class_names: Sequence[str],
                      calibration: dict | None, platforms=None) -> dict:
  """Writes an AnomalyMoE export; returns export.json's method fields."""
  det = adapter.detector
  names = list(dict.fromkeys(class_names))
  if not names:
    raise ValueError("AnomalyMoE export needs classes with map statistics: "
                     "--class-names, or run `calibrate` first")
  stats = anomalymoe_stats(adapter, names, calibration)
  flat, treedef = jax.tree.flatten(det.params)
  pred, s = adapter.predictor, adapter.image_size

  def fn(flat_params, pixels, class_id, known, min_max):
    params = jax.tree.unflatten(treedef, flat_params)
    ids = jnp.full(pixels.shape[:1], class_id, jnp.int32)
    masks = pred.predicted_masks(det.module, params, pixels, ids) * known
    mm = jnp.broadcast_to(min_max, pixels.shape[:1] + (3, 2))
    out_ = pred.predict(det.module, params, pixels, ids, masks, mm)
    return out_["anomaly_map"], out_["image_score"]

  (b,) = jax.export.symbolic_shape("b")
  args = (_specs(flat), jax.ShapeDtypeStruct((b, s, s, 3), jnp.float32),
          jax.ShapeDtypeStruct((), jnp.int32),
          jax.ShapeDtypeStruct((), jnp.float32),
          jax.ShapeDtypeStruct((3, 2), jnp.float32))
  plats = _serialize(fn, args, platforms, out)
  io.write_npz(out / "params.npz",
               **{f"p{i}": np.asarray(x) for i, x in enumerate(flat)})
  arrays = {}
  for name, (idx, known, mm) in stats.items():
    arrays[f"{name}/class_id"] = np.int32(idx)
    arrays[f"{name}/known"] = np.float32(known)
    arrays[f"{name}/min_max"] = mm
  io.write_npz(out / "stats.npz", **arrays)
  return _meta(adapter, names, flat, plats)


class ExportedMethod:
  """Loader of an InCTRL / AnomalyMoE export: `.predict(images, class)`."""

  def __init__(self, folder, meta: dict, exported, params):
    self.folder = pathlib.Path(folder)
    self.meta, self.exported, self.params = meta, exported, params
    self.method = meta["method"]
    self.image_size = int(meta["image_size"])
    pre = dict(meta["preprocess"])
    pre["mean"], pre["std"] = tuple(pre["mean"]), tuple(pre["std"])
    self.preprocess = transforms.Preprocess(**pre)
    self.prompts = None
    if self.method == "inctrl":
      with np.load(self.folder / "text.npz") as z:
        self.tables = {k: jnp.asarray(z[k]) for k in z.files}
    else:
      with np.load(self.folder / "stats.npz") as z:
        self.tables = {}
        for key in z.files:
          name, field = key.rsplit("/", 1)
          self.tables.setdefault(name, {})[field] = jnp.asarray(z[key])

  def _pixels(self, images) -> np.ndarray:
    x = np.asarray(images)
    x = x[None] if x.ndim == 3 else x
    if x.dtype != np.uint8:
      return x.astype(np.float32)
    return np.stack([transforms.normalize(
        transforms.resize_image(im, self.preprocess), self.preprocess)
                     for im in x])

  def set_prompts(self, images) -> None:
    """InCTRL: the K normal prompt images (uint8 or normalised float)."""
    x = self._pixels(images)
    if len(x) != self.meta["shots"]:
      raise ValueError(f"exported for K={self.meta['shots']} prompts, got "
                       f"{len(x)}")
    self.prompts = jnp.asarray(x)

  def _table(self, class_name):
    if class_name not in self.tables:
      raise KeyError(f"class {class_name!r} was not exported; exported: "
                     f"{sorted(self.tables)} (re-export with --class-names)")
    return self.tables[class_name]

  def predict(self, images, class_name: str = "object") -> dict:
    """Like the live detector's predict (maps at the model size)."""
    table = self._table(class_name)
    x = jnp.asarray(self._pixels(images))
    if self.method == "inctrl":
      if self.prompts is None:
        raise ValueError("no prompts: call set_prompts(images) first")
      amap, score = self.exported.call(self.params, x, self.prompts, table)
    else:
      amap, score = self.exported.call(self.params, x, table["class_id"],
                                       table["known"], table["min_max"])
    return {"anomaly_map": np.asarray(amap), "image_score": np.asarray(score)}
