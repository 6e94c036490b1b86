"""AnomalyMoE behind `load_detector` and every verb (the `Detector` protocol).

  det = moeclip_jax.load_detector("runs/anomalymoe/detector")
  out = det.predict(images_uint8, "bottle")
  out["anomaly_map"]  # [B, H, W] at the input size (blurred, fused)
  out["image_score"]  # [B]: mean of the top 1 % of the 256-px map

A checkpoint folder written by the trainer's export (or `convert
anomalymoe-official`) holds `config.json` (method "anomalymoe", the
`AnomalyMoEConfig` fields and, for trained runs, `class_names`) and
`params/`: {"model": ...} plus, for trained runs, "calib" (per-class
min-max of the three map levels) and "components" (per-class k-means
centres and kept clusters) — see maps.py. Official conversions may
instead carry `component_centres.npz` / `component_filter.json` (the
`data components` output), used the same way.

`predict(images, class_name)` follows test.py without its random test-time
jitter: component masks are built from the class centres (unless given),
maps are min-max normalised with the class statistics (or `class_min_max`
from `calibrate`, or the batch itself for unknown classes), fused,
resized to 256, blurred and scored.

Verbs: the fused map min-max normalises each expert level (patch, global,
component) with per-class statistics [3, 2]. Their source:
  * eval `--minmax auto` (default): the checkpoint's statistics for a class
    it was trained on, else that class's test images (official test.py);
    `--minmax test`: always the class's test images. Test-set statistics
    need a first pass over the records (per-image min / max only);
  * predict / calibrate --normal: `calibration.json`'s `class_min_max`
    (written by `calibrate`), else the checkpoint's class statistics, else
    the min-max over all images of the run (logged: scores then depend on
    the set of images).
Component masks come from the checkpoint's class centres (zeros for
unknown classes). Maps: the blurred fused map at the model size; image
score: mean of the top 1 % of the 256-px map.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import pathlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from moeclip_jax.checkpoint import params as ckpt_params
from moeclip_jax.data import components
from moeclip_jax.data import records as rec
from moeclip_jax.inference import export as export_lib
from moeclip_jax.inference import runner
from moeclip_jax.methods import base
from moeclip_jax.methods.anomalymoe import components_jax, maps
from moeclip_jax.methods.anomalymoe import model as model_lib
from moeclip_jax.utils import images as image_utils

log = logging.getLogger("moeclip_jax")
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
RESIZE = 448  # Resize(448) then CenterCrop(image_size), as trained


class AnomalyMoEDetector(base.DetectorBase):
  """Loaded AnomalyMoE: `predict(images, class_name)` -> maps and scores."""

  method = "anomalymoe"
  accepted_options = frozenset({"minmax"})

  def __init__(self, config, params, component_model=None,
               class_names=(), *, checkpoint_dir=None,
               minmax: str | None = None):
    """params: {"model": ..., optional "calib", "components"} (or the bare
    model tree, as older callers pass it)."""
    self.config = config
    if "model" not in params:
      params = {"model": params}
    self.params = {k: v for k, v in params.items() if k != "mi_estimator"}
    self.class_names = list(class_names)
    if component_model is not None and "components" not in self.params:
      if not self.class_names:
        self.class_names = sorted(component_model.centres)
      k = max(len(c) for c in component_model.centres.values())
      self.params["components"] = components_jax.model_arrays(
          component_model, self.class_names, k, config.dims.width)
    self.module = model_lib.AnomalyMoE(config)
    self.checkpoint_dir = pathlib.Path(checkpoint_dir or ".")
    self.image_size = s = config.image_size
    self.preprocess = {"preset": "anomalymoe", "crop": s,
                       "size": int(round(s * RESIZE / 392))}
    self.minmax = minmax or "auto"
    if self.minmax not in ("auto", "test"):
      raise ValueError(f"--minmax must be auto or test, got {minmax!r}")
    self._run_min_max = None
    self._stats_pass = _StatsPass(self)
    self._predict = jax.jit(functools.partial(maps.predict, self.module))
    self._raw = jax.jit(functools.partial(maps.eval_maps, self.module))

  @classmethod
  def cli_options(cls) -> Sequence[base.Option]:
    return (base.Option(
        "--minmax", "per-class map statistics: 'auto' (the checkpoint's, "
        "else the test set's) or 'test' (official test.py: the class's test "
        "images)", verbs=("eval", "benchmark"),
        kwargs={"choices": ("auto", "test")}),)

  @classmethod
  def load(cls, checkpoint_dir, *, dtype: str | None = None, **kwargs):
    """`dtype`: the DINOv2 encoder's compute dtype (default: config.json's;
    models/precision.py)."""
    cls.check_options(checkpoint_dir, kwargs)
    path = pathlib.Path(checkpoint_dir)
    cfg = dict(ckpt_params.read_config(path))
    if cfg.pop("method", None) != "anomalymoe":
      raise ValueError(f"{path}/config.json: not an AnomalyMoE checkpoint")
    names = cfg.pop("class_names", [])
    # Inference runs on one host: the lean sequential expert loop, whatever
    # loop the run was trained with (same parameter layout).
    config = dataclasses.replace(
        model_lib.AnomalyMoEConfig.from_dict(cfg), expert_loop="scan")
    if dtype is not None:
      config = dataclasses.replace(config, backbone=dataclasses.replace(
          config.backbone, dtype=dtype))
    params = ckpt_params.read_params_checkpoint(path)
    comp = None
    if (path / "component_centres.npz").is_file():
      comp = components.ComponentModel.load(path)
    return cls(config, params, comp, names, checkpoint_dir=path, **kwargs)

  # ---- inputs ----
  def prepare(self, images):
    """uint8 [B, H, W, 3] (any size: Resize 448, CenterCrop S) or float32
    normalised [B, S, S, 3] -> model input float32[B, S, S, 3]."""
    x = np.asarray(images)
    if x.ndim == 3:
      x = x[None]
    s = self.config.image_size
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"images must be [B, H, W, 3] (RGB), got {x.shape}")
    if x.dtype == np.uint8:
      if x.shape[1:3] != (s, s):
        x = np.stack([_resize_crop(im, RESIZE, s) for im in x])
      return (x.astype(np.float32) / 255.0 - MEAN) / STD
    if x.shape[1:3] != (s, s):
      raise ValueError(f"float images must be normalised [B, {s}, {s}, 3], "
                       f"got {x.shape} (pass uint8 to resize)")
    return x.astype(np.float32)

  def _params_for(self, class_name):
    """(params, class index): class statistics/centres only if known."""
    if class_name is not None and class_name in self.class_names:
      return self.params, self.class_names.index(class_name)
    if class_name is not None and self.class_names:
      log.warning("class %r not in the checkpoint's classes %s: batch "
                  "min-max, no component masks", class_name, self.class_names)
    return {"model": self.params["model"]}, 0

  # ---- API ----
  def raw_maps(self, images, component_masks=None, class_name=None):
    """(raw maps dict, fusion coefficients) of `images`."""
    x = jnp.asarray(self.prepare(images))
    params, idx = self._params_for(class_name)
    if component_masks is None:
      component_masks = maps.predicted_masks(
          self.module, params, x, jnp.full((x.shape[0],), idx, jnp.int32))
    return self._raw(params["model"], x,
                     jnp.asarray(component_masks, jnp.float32))

  def calibrate(self, images, component_masks=None, class_name=None):
    """Class min-max [3, 2] over the given images (one class)."""
    raw, _ = self.raw_maps(images, component_masks, class_name)
    return np.asarray(maps.class_min_max(
        (raw["map_patch"], raw["map_global"], raw["map_component"])))

  def predict_maps(self, images, class_names=None, component_masks=None,
                   class_min_max=None, test_time_jitter: int | None = None,
                   **unused) -> base.Predictions:
    """Returns {"anomaly_map" [B, H, W], "image_score" [B]} (+ extras).

    Args:
      images: uint8 RGB [B, H, W, 3] (any size) or float32 normalised
        [B, S, S, 3].
      class_names: a class of the checkpoint (its min-max statistics and
        component centres); None or unknown: batch min-max, no components.
      component_masks: optional {0,1}[B, K, S, S] instead of the centres'.
      class_min_max: optional [3, 2] statistics (from `calibrate`).
      test_time_jitter: a seed: colour-jitter the global experts' view as
        the official test.py does (None: deterministic, the default).
      **unused: other detectors' options (e.g. domain), ignored.
    """
    del unused
    class_name = class_names if class_names is None or isinstance(
        class_names, str) else _single(class_names)
    raw = np.asarray(images)
    x = jnp.asarray(self.prepare(raw))
    params, idx = self._params_for(class_name)
    cid = jnp.full((x.shape[0],), idx, jnp.int32)
    masks = (None if component_masks is None
             else jnp.asarray(component_masks, jnp.float32))
    mm = (None if class_min_max is None else jnp.broadcast_to(
        jnp.asarray(class_min_max, jnp.float32), (x.shape[0], 3, 2)))
    key = (None if test_time_jitter is None
           else jax.random.key(int(test_time_jitter)))
    out = jax.device_get(self._predict(params, x, cid, masks, mm, key))
    amap = np.asarray(out["anomaly_map"])
    if raw.dtype == np.uint8 and raw.shape[-3:-1] != amap.shape[1:]:
      amap = _uncrop(amap, raw.shape[-3:-1], RESIZE)
    return base.Predictions(np.asarray(out["image_score"]), amap,
                            component_masks=np.asarray(
                                out["component_masks"]))

  def run_facts(self) -> dict:
    return {"method": "anomalymoe", "minmax": self.minmax,
            "producer_smoothing": ("AnomalyMoE 5x5 gaussian (sigma 4) at 256,"
                                   " resized back to the model size")}

  # ---- the trainer seam ----
  def _masks(self, params, images, context, class_ids):
    """Component masks from the class centres; zeros for unknown classes."""
    ckpt = context["checkpoint_id"][class_ids]  # [B], -1 = unknown
    known = (ckpt >= 0).astype(jnp.float32)[:, None, None, None]
    masks = maps.predicted_masks(
        self.module, params, images, jnp.maximum(ckpt, 0))
    return masks * known

  def level_maps(self, params, batch, context):
    images = batch["image"]
    masks = self._masks(params, images, context, batch["class_id"])
    raw, _ = maps.eval_maps(self.module, params["model"],
                                      images, masks)
    return maps.level_maps(raw)

  def predict_fn(self, params, batch, context):
    ids = batch["class_id"]
    masks = self._masks(params, batch["image"], context, ids)
    out = maps.predict(
        self.module, params, batch["image"],
        jnp.maximum(context["checkpoint_id"][ids], 0), masks,
        context["min_max"][ids])
    return {"anomaly_map": out["anomaly_map"],
            "image_score": out["image_score"]}

  # ---- statistics ----
  def _checkpoint_ids(self, class_names) -> np.ndarray:
    known = list(self.class_names or [])
    return np.array([known.index(c) if c in known else -1
                     for c in class_names], np.int32)

  def stored_min_max(self, class_name: str):
    """The checkpoint's [3, 2] statistics of a trained class, or None."""
    calib = self.params.get("calib")
    known = list(self.class_names or [])
    if calib is None or class_name not in known:
      return None
    i = known.index(class_name)
    if float(np.asarray(calib["seen"])[i]) <= 0:
      return None
    return np.asarray(calib["min_max"])[i]

  def _test_min_max(self, records, context, batch_size):
    pred = runner.run_method(self._stats_pass, self.params,
                                context, records, self.preprocess,
                                batch_size, None, desc="eval statistics")
    out = np.zeros((len(pred["class_names"]), 3, 2), np.float32)
    for cid in range(len(out)):
      stats = pred["maps"][pred["class_ids"] == cid]  # [n, 3, 2]
      out[cid, :, 0] = stats[..., 0].min(0)
      out[cid, :, 1] = stats[..., 1].max(0)
    return out

  def eval_runs(self, records, all_records, batch_size=8, map_size=None):
    del all_records
    names = rec.class_names(records)
    context = {"checkpoint_id": jnp.asarray(self._checkpoint_ids(names)),
               "min_max": jnp.zeros((len(names), 3, 2), jnp.float32)}
    stored = [None if self.minmax == "test" else self.stored_min_max(c)
              for c in names]
    mm = np.zeros((len(names), 3, 2), np.float32)
    if any(s is None for s in stored):
      mm = self._test_min_max(records, context, batch_size)
    sources = {}
    for i, (name, s) in enumerate(zip(names, stored)):
      if s is not None:
        mm[i] = s
      sources[name] = "test set" if s is None else "checkpoint"
    context["min_max"] = jnp.asarray(mm)
    pred = runner.run_method(self, self.params, context, records,
                                self.preprocess, batch_size, map_size)
    pred["class_min_max"] = mm
    yield pred, {"minmax_source": sources}

  # ---- loose images ----
  def _entry_min_max(self, class_name, entry):
    if entry is not None and entry.get("class_min_max") is not None:
      return np.asarray(entry["class_min_max"], np.float32)
    return self.stored_min_max(class_name)

  def run_min_max(self, images, class_name, batch_size) -> np.ndarray:
    """[3, 2] min-max of the level maps over `images` (one class)."""
    lo = np.full(3, np.inf, np.float32)
    hi = np.full(3, -np.inf, np.float32)
    for start in runner.chunks(len(images), batch_size):
      x = runner.prepare_images(images[start:start + batch_size],
                                  self.preprocess)
      stats = np.asarray(self.calibrate(x, class_name=class_name))
      lo, hi = np.minimum(lo, stats[:, 0]), np.maximum(hi, stats[:, 1])
    return np.stack([lo, hi], -1)

  def begin_predict(self, paths, class_name, entry, out=None) -> dict:
    del out
    self._run_min_max = None
    if self._entry_min_max(class_name, entry) is not None:
      return {}
    images = []
    for path in paths or ():
      try:
        images.append(image_utils.load_rgb(path))
      except (ValueError, FileNotFoundError):
        continue  # listed as unreadable by the predict loop
    if images:
      log.warning("predict: no calibration / class statistics for %r: maps "
                  "min-maxed over the %d given images (run `calibrate`)",
                  class_name, len(images))
      self._run_min_max = self.run_min_max(images, class_name, 8)
    return {"class_min_max_source": "the given images"}

  def begin_images(self, images, class_name, entry, batch_size) -> None:
    mm = self._entry_min_max(class_name, entry)
    if mm is None and self._run_min_max is None and len(images):
      self._run_min_max = self.run_min_max(images, class_name, batch_size)

  def predict_pixels(self, pixels, class_name, entry=None):
    mm = self._entry_min_max(class_name, entry)
    if mm is None:
      mm = self._run_min_max
    out = self.predict_maps(pixels, class_name, class_min_max=mm)
    return {"anomaly_map": out.anomaly_map, "image_score": out.image_score}

  # ---- serving: a class needs its map statistics ----
  def not_ready(self, class_name, entry):
    if self._entry_min_max(class_name, entry) is not None:
      return None
    return ("class_statistics_missing", f"class {class_name!r}: no "
            "AnomalyMoE class statistics in calibration.json or the "
            "checkpoint (run `moeclip-jax calibrate --normal DIR "
            f"--class-name {class_name}` on normal images first)")

  def select_class(self, class_name, entry, warm_up=False):
    if warm_up and self._entry_min_max(class_name, entry) is None:
      return dict(entry or {}, class_min_max=[[0.0, 1.0]] * 3)  # stand-in
    return entry

  def calibration_entry(self, images, class_name, batch_size=8) -> dict:
    """calibrate --normal: statistics of the given normal images."""
    self._run_min_max = self.run_min_max(images, class_name, batch_size)
    return {"class_min_max": self._run_min_max.tolist()}

  def calibration_extras(self, pred, cid):
    if pred is not None and "class_min_max" in pred:
      return {"class_min_max": np.asarray(pred["class_min_max"][cid]
                                          ).tolist()}
    if self._run_min_max is not None:
      return {"class_min_max": np.asarray(self._run_min_max).tolist()}
    return {}

  def _export_stats(self, names, calibration: dict | None) -> dict:
    """{class: (checkpoint index, known, min_max [3, 2])} for the export."""
    known = list(self.class_names)
    entries = (calibration or {}).get("classes", {})
    out = {}
    for name in names:
      entry = entries.get(name) or {}
      mm = entry.get("class_min_max")
      mm = self.stored_min_max(name) if mm is None else np.asarray(mm)
      if mm is None:
        raise ValueError(
            f"AnomalyMoE class {name!r} has no map statistics: run `moeclip-jax "
            "calibrate --class-name ...` first (export needs per-class "
            "min-max; calibrated: "
            f"{sorted(c for c, e in entries.items() if 'class_min_max' in e)})")
      idx = known.index(name) if name in known else 0
      out[name] = (idx, float(name in known), np.asarray(mm, np.float32))
    return out

  def export_fn(self, class_names, calibration=None) -> export_lib.ExportSpec:
    """f(params, pixels f32[b, S, S, 3], class_id i32[], known f32[],
    min_max f32[3, 2]) -> (map, score); stats.npz holds per exported class
    its checkpoint index, `known` (component masks from the class centres)
    and the [3, 2] map statistics (calibration.json's `class_min_max`, else
    the checkpoint's); a class without statistics is an error (run
    `calibrate`)."""
    names = list(dict.fromkeys(class_names))
    if not names:
      raise ValueError("AnomalyMoE export needs classes with map statistics:"
                       " --class-names, or run `calibrate` first")
    stats = self._export_stats(names, calibration)
    flat, treedef = jax.tree.flatten(self.params)
    module = self.module

    def fn(flat_params, pixels, class_id, known, min_max):
      params = jax.tree.unflatten(treedef, flat_params)
      ids = jnp.full(pixels.shape[:1], class_id, jnp.int32)
      masks = maps.predicted_masks(module, params, pixels, ids) * known
      mm = jnp.broadcast_to(min_max, pixels.shape[:1] + (3, 2))
      out = maps.predict(module, params, pixels, ids, masks, mm)
      return out["anomaly_map"], out["image_score"]

    tables = {"class_id": {n: np.int32(stats[n][0]) for n in names},
              "known": {n: np.float32(stats[n][1]) for n in names},
              "min_max": {n: stats[n][2] for n in names}}
    return export_lib.ExportSpec(
        method=self.method, fn=fn, params=flat, image_size=self.image_size,
        preprocess=self.preprocess, class_inputs=tables,
        table_file="stats.npz", checkpoint_dir=self.checkpoint_dir)


class _StatsPass:
  """predict_fn seam of the statistics pass: per-image level min / max.

  The [B, 3, 2] statistics travel in the "anomaly_map" slot of
  `predict_dataset` (image_score is a dummy).
  """

  def __init__(self, detector):
    self.detector = detector

  def predict_fn(self, params, batch, context):
    levels = self.detector.level_maps(params, batch, context)  # [B, 3, S, S]
    stats = jnp.stack([jnp.min(levels, axis=(2, 3)),
                       jnp.max(levels, axis=(2, 3))], -1)  # [B, 3, 2]
    return {"anomaly_map": stats,
            "image_score": jnp.zeros(levels.shape[:1], levels.dtype)}


def _resize_crop(image, resize: int, crop: int) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  pil = Image.fromarray(image).resize((resize, resize), Image.BILINEAR)
  top = int(round((resize - crop) / 2.0))
  return np.asarray(pil)[top:top + crop, top:top + crop]


def _uncrop(amaps, out_hw, resize: int) -> np.ndarray:
  """[B, S, S] on the centre crop -> [B, H, W] (border: the crop's edge)."""
  s = amaps.shape[-1]
  top = int(round((resize - s) / 2.0))
  pad = ((0, 0), (top, resize - s - top), (top, resize - s - top))
  full = np.pad(amaps, pad, mode="edge")
  return np.asarray(jax.image.resize(
      full, (amaps.shape[0],) + tuple(out_hw), "bilinear"))


def _single(class_names) -> str:
  names = set(class_names)
  if len(names) != 1:
    raise ValueError(f"one class per predict call, got {sorted(names)}")
  return names.pop()
