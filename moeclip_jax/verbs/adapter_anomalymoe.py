"""AnomalyMoE behind the verbs: no text, no prompts, per-class min-max.

AnomalyMoE's fused map min-max normalises each expert level (patch,
global, component) with per-class statistics [3, 2]. Their source:
  * eval `--minmax auto` (default): the checkpoint's statistics for a class
    it was trained on, else that class's test images (official test.py);
    `--minmax test`: always the class's test images. Test-set statistics
    need a first pass over the records (per-image min / max only);
  * predict / calibrate --normal: `calibration.json`'s `class_min_max`
    (written by `calibrate`), else the checkpoint's class statistics, else
    the min-max over all images of the run (logged: scores then depend on
    the set of images).
Component masks come from the checkpoint's class centres (zeros for
unknown classes). Maps: the detector's blurred fused map at the model
size; image score: mean of the top 1 % of the 256-px map.
"""

from __future__ import annotations

import logging

import jax.numpy as jnp
import numpy as np

from moeclip_jax.data import records as rec
from moeclip_jax.utils import images as image_utils
from moeclip_jax.verbs import adapters
from moeclip_jax.verbs import common

log = logging.getLogger("moeclip_jax.verbs")
RESIZE = 448  # Resize(448) then CenterCrop(S) at S = 392, as trained


class _StatsPass:
  """predict_fn seam of the statistics pass: per-image level min / max.

  The [B, 3, 2] statistics travel in the "anomaly_map" slot of
  `predict_dataset` (image_score is a dummy).
  """

  def __init__(self, adapter):
    self.adapter = adapter
    self.jit_key = ("anomalymoe-stats", adapter.detector)

  def predict_fn(self, params, batch, context):
    maps = self.adapter.level_maps(params, batch, context)  # [B, 3, S, S]
    stats = jnp.stack([jnp.min(maps, axis=(2, 3)), jnp.max(maps, axis=(2, 3))],
                      -1)  # [B, 3, 2]
    return {"anomaly_map": stats,
            "image_score": jnp.zeros(maps.shape[:1], maps.dtype)}


class AnomalyMoEAdapter(adapters.Adapter):
  """AnomalyMoE detector (see the module docstring)."""

  name = "anomalymoe"
  accepted = frozenset({"minmax"})

  def __init__(self, detector, checkpoint_dir, options=None):
    super().__init__(detector, checkpoint_dir, options)
    from moeclip_jax.methods.anomalymoe import predictor  # pylint: disable=g-import-not-at-top
    self.predictor = predictor
    self.image_size = detector.config.image_size
    s = self.image_size
    self.preprocess = {"preset": "anomalymoe", "crop": s,
                       "size": int(round(s * RESIZE / 392))}
    self.minmax = self.options.minmax or "auto"
    self.jit_key = ("anomalymoe", detector)  # one jit per detector
    self._stats_pass = _StatsPass(self)
    self._run_min_max = None

  def run_facts(self) -> dict:
    return {"method": "anomalymoe", "minmax": self.minmax,
            "producer_smoothing": ("AnomalyMoE 5x5 gaussian (sigma 4) at 256,"
                                   " resized back to the model size")}

  # ---- the trainer seam ----
  def _masks(self, params, images, context, class_ids):
    """Component masks from the class centres; zeros for unknown classes."""
    ckpt = context["checkpoint_id"][class_ids]  # [B], -1 = unknown
    known = (ckpt >= 0).astype(jnp.float32)[:, None, None, None]
    masks = self.predictor.predicted_masks(
        self.detector.module, params, images, jnp.maximum(ckpt, 0))
    return masks * known

  def level_maps(self, params, batch, context):
    images = batch["image"]
    masks = self._masks(params, images, context, batch["class_id"])
    raw, _ = self.predictor.eval_maps(self.detector.module, params["model"],
                                      images, masks)
    return self.predictor.level_maps(raw)

  def predict_fn(self, params, batch, context):
    ids = batch["class_id"]
    masks = self._masks(params, batch["image"], context, ids)
    out = self.predictor.predict(
        self.detector.module, params, batch["image"],
        jnp.maximum(context["checkpoint_id"][ids], 0), masks,
        context["min_max"][ids])
    return {"anomaly_map": out["anomaly_map"],
            "image_score": out["image_score"]}

  # ---- statistics ----
  def _checkpoint_ids(self, class_names) -> np.ndarray:
    known = list(getattr(self.detector, "class_names", []) or [])
    return np.array([known.index(c) if c in known else -1
                     for c in class_names], np.int32)

  def stored_min_max(self, class_name: str):
    """The checkpoint's [3, 2] statistics of a trained class, or None."""
    calib = self.detector.params.get("calib")
    known = list(getattr(self.detector, "class_names", []) or [])
    if calib is None or class_name not in known:
      return None
    i = known.index(class_name)
    if float(np.asarray(calib["seen"])[i]) <= 0:
      return None
    return np.asarray(calib["min_max"])[i]

  def _test_min_max(self, records, context, batch_size):
    from moeclip_jax.verbs import inference  # pylint: disable=g-import-not-at-top
    pred = inference.run_method(self._stats_pass, self.detector.params,
                                context, records, self.preprocess,
                                batch_size, None, desc="eval statistics")
    out = np.zeros((len(pred["class_names"]), 3, 2), np.float32)
    for cid in range(len(out)):
      stats = pred["maps"][pred["class_ids"] == cid]  # [n, 3, 2]
      out[cid, :, 0] = stats[..., 0].min(0)
      out[cid, :, 1] = stats[..., 1].max(0)
    return out

  def eval_runs(self, records, all_records, batch_size=8, map_size=None):
    from moeclip_jax.verbs import inference  # pylint: disable=g-import-not-at-top
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
    pred = inference.run_method(self, self.detector.params, context, records,
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
    for start in adapters.chunks(len(images), batch_size):
      x = adapters.prepare_images(images[start:start + batch_size],
                                  self.preprocess)
      stats = np.asarray(self.detector.calibrate(x, class_name=class_name))
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

  def predict_images(self, images, class_name, batch_size=8, entry=None,
                     desc="predict"):
    mm = self._entry_min_max(class_name, entry)
    if mm is None:
      mm = self._run_min_max
    if mm is None and len(images):
      mm = self._run_min_max = self.run_min_max(images, class_name,
                                                batch_size)
    s = self.image_size
    maps_, scores = [], []
    starts = adapters.chunks(len(images), batch_size)
    for start in common.progress(starts, desc, total=len(starts)):
      x = adapters.prepare_images(images[start:start + batch_size],
                                  self.preprocess)
      out = self.detector.predict(adapters.pad_batch(x, batch_size),
                                  class_name, class_min_max=mm)
      maps_.append(np.asarray(out["anomaly_map"])[:len(x)])
      scores.append(np.asarray(out["image_score"])[:len(x)])
    if not maps_:
      return np.zeros((0, s, s), np.float32), np.zeros((0,), np.float32)
    return np.concatenate(maps_), np.concatenate(scores)

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
