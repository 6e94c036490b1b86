"""`load_detector` support for AnomalyMoE checkpoints.

  det = moeclip_jax.load_detector("runs/anomalymoe/detector")
  out = det.predict(images_uint8, "bottle")
  out["anomaly_map"]  # [B, H, W] at the input size (blurred, fused)
  out["image_score"]  # [B]: mean of the top 1 % of the 256-px map

A checkpoint folder written by the trainer's export (or `convert
anomalymoe-official`) holds `config.json` (method "anomalymoe", the
`AnomalyMoEConfig` fields and, for trained runs, `class_names`) and
`params/`: {"model": ...} plus, for trained runs, "calib" (per-class
min-max of the three map levels) and "components" (per-class k-means
centres and kept clusters) — see predictor.py. Official conversions may
instead carry `component_centres.npz` / `component_filter.json` (the
`data components` output), used the same way.

`predict(images, class_name)` follows test.py without its random test-time
jitter: component masks are built from the class centres (unless given),
maps are min-max normalised with the class statistics (or `class_min_max`
from `calibrate`, or the batch itself for unknown classes), fused,
resized to 256, blurred and scored.
"""

from __future__ import annotations

import functools
import json
import logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from moeclip_jax.methods.anomalymoe import components
from moeclip_jax.methods.anomalymoe import components_jax
from moeclip_jax.methods.anomalymoe import inference
from moeclip_jax.methods.anomalymoe import model as model_lib
from moeclip_jax.methods.anomalymoe import predictor

log = logging.getLogger("moeclip_jax")
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
RESIZE = 448  # Resize(448) then CenterCrop(image_size), as trained


class AnomalyMoEDetector:
  """Loaded AnomalyMoE: `predict(images, class_name)` -> maps and scores."""

  method = "anomalymoe"

  def __init__(self, config, params, component_model=None,
               class_names=()):
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
    self._predict = jax.jit(functools.partial(predictor.predict, self.module))
    self._raw = jax.jit(functools.partial(predictor.eval_maps, self.module))

  @classmethod
  def load(cls, checkpoint_dir, **kwargs):
    from moeclip_jax.convert import common  # pylint: disable=g-import-not-at-top

    path = pathlib.Path(checkpoint_dir)
    cfg = json.loads((path / "config.json").read_text())
    if cfg.pop("method", None) != "anomalymoe":
      raise ValueError(f"{path}/config.json: not an AnomalyMoE checkpoint")
    names = cfg.pop("class_names", [])
    config = model_lib.AnomalyMoEConfig.from_dict(cfg)
    params = common.read_params_checkpoint(path)
    comp = None
    if (path / "component_centres.npz").is_file():
      comp = components.ComponentModel.load(path)
    return cls(config, params, comp, names, **kwargs)

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
      component_masks = predictor.predicted_masks(
          self.module, params, x, jnp.full((x.shape[0],), idx, jnp.int32))
    return self._raw(params["model"], x,
                     jnp.asarray(component_masks, jnp.float32))

  def calibrate(self, images, component_masks=None, class_name=None):
    """Class min-max [3, 2] over the given images (one class)."""
    raw, _ = self.raw_maps(images, component_masks, class_name)
    return np.asarray(inference.class_min_max(
        (raw["map_patch"], raw["map_global"], raw["map_component"])))

  def predict(self, images, class_name=None, component_masks=None,
              class_min_max=None, test_time_jitter: int | None = None,
              **unused):
    """Returns {"anomaly_map" [B, H, W], "image_score" [B]} (+ extras).

    Args:
      images: uint8 RGB [B, H, W, 3] (any size) or float32 normalised
        [B, S, S, 3].
      class_name: a class of the checkpoint (its min-max statistics and
        component centres); None or unknown: batch min-max, no components.
      component_masks: optional {0,1}[B, K, S, S] instead of the centres'.
      class_min_max: optional [3, 2] statistics (from `calibrate`).
      test_time_jitter: a seed: colour-jitter the global experts' view as
        the official test.py does (None: deterministic, the default).
      **unused: other detectors' options (e.g. domain), ignored.
    """
    del unused
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
    return {"anomaly_map": amap, "image_score": np.asarray(
        out["image_score"]), "component_masks": np.asarray(
            out["component_masks"])}


def _resize_crop(image, resize: int, crop: int) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  pil = Image.fromarray(image).resize((resize, resize), Image.BILINEAR)
  top = int(round((resize - crop) / 2.0))
  return np.asarray(pil)[top:top + crop, top:top + crop]


def _uncrop(maps, out_hw, resize: int) -> np.ndarray:
  """[B, S, S] on the centre crop -> [B, H, W] (border: the crop's edge)."""
  s = maps.shape[-1]
  top = int(round((resize - s) / 2.0))
  pad = ((0, 0), (top, resize - s - top), (top, resize - s - top))
  full = np.pad(maps, pad, mode="edge")
  return np.asarray(jax.image.resize(
      full, (maps.shape[0],) + tuple(out_hw), "bilinear"))
