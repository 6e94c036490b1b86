"""`load_detector` support for AnomalyMoE checkpoints.

A checkpoint folder written by `convert anomalymoe-official` (or an
exported training run) holds `config.json` (method "anomalymoe" + the
`AnomalyMoEConfig` fields), `params/` ({"model": ..., optional
"mi_estimator"}) and optionally the component model
(`component_centres.npz`, `component_filter.json`).

`predict` follows test.py without its random test-time jitter. Class-level
min-max statistics are passed in (`calibrate` computes them over a set of
images of one class); without them the batch itself is the class.
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from moeclip_jax.methods.anomalymoe import components
from moeclip_jax.methods.anomalymoe import inference
from moeclip_jax.methods.anomalymoe import model as model_lib

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


class AnomalyMoEDetector:
  """Loaded AnomalyMoE: `predict(images)` -> maps and image scores."""

  def __init__(self, config, params, component_model=None):
    self.config = config
    self.params = params
    self.component_model = component_model
    self.module = model_lib.AnomalyMoE(config)
    self._forward = jax.jit(self._raw)

  @classmethod
  def load(cls, checkpoint_dir, **kwargs):
    from moeclip_jax.convert import common  # pylint: disable=g-import-not-at-top

    path = pathlib.Path(checkpoint_dir)
    cfg = json.loads((path / "config.json").read_text())
    if cfg.pop("method", None) != "anomalymoe":
      raise ValueError(f"{path}/config.json: not an AnomalyMoE checkpoint")
    config = model_lib.AnomalyMoEConfig.from_dict(cfg)
    params = common.read_params_checkpoint(path)["model"]
    comp = None
    if (path / "component_centres.npz").is_file():
      comp = components.ComponentModel.load(path)
    return cls(config, params, comp, **kwargs)

  def _raw(self, params, images, masks):
    out = self.module.apply({"params": params}, images, images, masks)
    weights = model_lib.split_groups(self.config, out["routing_weights"])
    raw = inference.raw_maps(out, weights, self.config.image_size)
    return raw, inference.fusion_coefficients(weights)

  def raw_maps(self, images, component_masks=None):
    """images: float[B, S, S, 3] normalised (or uint8 RGB at S px)."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
      images = (images.astype(np.float32) / 255.0 - MEAN) / STD
    s = self.config.image_size
    if component_masks is None:
      component_masks = np.zeros((images.shape[0], 1, s, s), np.float32)
    return self._forward(self.params, jnp.asarray(images),
                         jnp.asarray(component_masks, jnp.float32))

  def calibrate(self, images, component_masks=None):
    """Class min-max [3, 2] over the given images (one class)."""
    raw, _ = self.raw_maps(images, component_masks)
    return np.asarray(inference.class_min_max(
        (raw["map_patch"], raw["map_global"], raw["map_component"])))

  def predict(self, images, component_masks=None, class_min_max=None):
    """Returns {"anomaly_map" [B, S, S], "image_score" [B]}."""
    raw, coef = self.raw_maps(images, component_masks)
    maps = (raw["map_patch"], raw["map_global"], raw["map_component"])
    mm = (inference.class_min_max(maps) if class_min_max is None
          else jnp.asarray(class_min_max))
    final = inference.fuse(maps, coef, mm)
    _, smoothed, scores = inference.score_maps(final)
    return {"anomaly_map": np.asarray(final),
            "anomaly_map_256": np.asarray(smoothed),
            "image_score": np.asarray(scores)}
