"""AnomalyMoE as a trainer method (see methods/base.py for the interface).

Parameter tree: {"model": AnomalyMoE params (frozen "encoder" inside),
"mi_estimator": CLUB estimator params, "calib": per-class min-max state,
"components": the frozen per-class k-means centres} (see maps.py).
Training data: normal images only, with their component masks
(data.py). The official alternating estimator
step is folded into one loss: the main objective sees the estimator through
`stop_gradient`, and the estimator's own CLUB log-likelihood loss sees the
expert features through `stop_gradient`, so each parameter set receives
exactly its own gradient. Differences from the official two-step loop: the
estimator learns from this step's features (official: a second forward after
the update), and both sets share one optimiser call (`make_tx` gives each
its own chain: StableAdamW for the model, Adam + L2 for the estimator).

The colour-jittered view (`image_ae`) is made in-graph from the normalised
batch (brightness / contrast / saturation, factor U[0.8, 1.2], one picked per
image), as `train.py`'s `transform_ae` does on PIL images.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from moeclip_jax.checkpoint import backbones
from moeclip_jax.data import components
from moeclip_jax.methods.anomalymoe import (
  components_jax,
  experts,
  losses,
  maps,
  ops,
  training,
)
from moeclip_jax.methods.anomalymoe import data as data_lib
from moeclip_jax.methods.anomalymoe import model as model_lib
from moeclip_jax.models import dinov2
from moeclip_jax.sharding import presets

UPDATED_STATE = "updated_state"  # train.step.UPDATED_STATE (no import)

TRAINABLE_PATTERNS = (
    r"model/(patch_experts|global_experts|component_experts|gate)/.*",
    r"mi_estimator/.*",
)
FROZEN_PATTERNS = (r"model/encoder/.*", r"components/.*")
STATE_PATTERNS = (r"calib/.*",)
BATCH_KEYS = ("image", "component_masks", "class_id")


def model_config(config: Any) -> model_lib.AnomalyMoEConfig:
  """`AnomalyMoEConfig` from the ConfigDict (configs/anomalymoe_dinov2_b14)."""
  bb = config.backbone
  if bb.get("variant") == "tiny-test":
    base = model_lib.tiny_config()
    backbone, dims = base.backbone, base.dims
  else:
    backbone = dinov2.get_config(bb.get("variant", "dinov2reg_vit_base_14"))
    dims = experts.ExpertDims(width=backbone.width,
                              decoder_heads=backbone.num_heads)
  backbone = dataclasses_replace(
      backbone, interpolation=bb.get("interpolation", "official"),
      dtype=bb.get("dtype") or backbone.dtype)
  m = dict(config.model.to_dict())
  for key in ("target_layers",):
    m[key] = tuple(m[key])
  for key in ("train_fusion", "test_fusion"):
    m[key] = tuple(tuple(g) for g in m[key])
  m["expert_loop"] = expert_loop(config)
  return model_lib.AnomalyMoEConfig(backbone=backbone, dims=dims, **m)


def expert_loop(config: Any) -> str:
  """`config.model.expert_loop`, with "auto" resolved from the mesh.

  "auto" (the config default): "vmap" when the mesh (or its preset) has an
  `expert` axis other than 1, so the experts shard over it; else "scan",
  the lean single-host path (see `AnomalyMoEConfig.expert_loop`).
  """
  loop = config.model.get("expert_loop", "auto")
  if loop != "auto":
    return loop
  expert = presets.mesh_sizes_from_config(config).get("expert", 1)
  return "scan" if expert in (1, None) else "vmap"


def dataclasses_replace(obj, **kw):
  import dataclasses  # pylint: disable=g-import-not-at-top
  return dataclasses.replace(obj, **kw)


class AnomalyMoEMethod:
  """Trainer seam for AnomalyMoE."""

  name = "anomalymoe"
  trainable_patterns = TRAINABLE_PATTERNS
  frozen_patterns = FROZEN_PATTERNS
  state_patterns = STATE_PATTERNS
  batch_keys = BATCH_KEYS

  def __init__(self, config: Any):
    self.config = model_config(config)
    self.loss_config = losses.LossConfig(**dict(config.loss.to_dict()))
    self.optim = config.optim
    self.total_steps = int(config.get("total_steps", 100_000))
    self.backbone_ckpt = config.backbone.get("checkpoint", "") or None
    self.module = model_lib.AnomalyMoE(self.config)
    self.image_size = self.config.image_size
    self.preprocess = {"preset": "anomalymoe",
                       "size": int(config.data.get("resize", 448)),
                       "crop": self.image_size}
    self.data_config = config.data
    self.class_names = data_lib.class_names(config.data)
    self.component_dir = config.data.get("component_masks", "") or ""
    self.component_slots = int(config.data.get("component_slots", 5))
    self.test_time_jitter = bool(config.data.get("test_time_jitter", False))
    self.calib_momentum = float(config.get("calibration", {}).get(
        "momentum", 0.9))

  @property
  def num_classes(self) -> int:
    return max(1, len(self.class_names))

  # ---- parameters ----
  def init_fn(self, rng):
    s = self.image_size
    k1, k2 = jax.random.split(rng)
    model = self.module.init(k1, jnp.zeros((1, s, s, 3)),
                             jnp.zeros((1, s, s, 3)),
                             jnp.zeros((1, 1, s, s)))["params"]
    dim = self.config.dims.width
    est = losses.MIEstimator(dim).init(
        k2, jnp.zeros((2, 2, dim)), jnp.zeros((2, 2, dim)),
        np.array([[0, 1], [0, 1]]), np.array([[1, 0], [1, 0]]))["params"]
    c, k = self.num_classes, self.component_slots
    return {"model": model, "mi_estimator": est,
            "calib": {"min_max": jnp.zeros((c, 3, 2)),
                      "seen": jnp.zeros((c,))},
            "components": {"centres": jnp.zeros((c, k, dim)),
                           "keep": jnp.zeros((c, k))}}

  def load_pretrained(self, params):
    """Converted backbone (config.backbone.checkpoint) and the component
    model of config.data.component_masks merged into `params`."""
    if self.backbone_ckpt is not None:
      _, backbone, _ = backbones.load_dinov2(self.backbone_ckpt)
      enc = params["model"]["encoder"]
      shardings = jax.tree.map(lambda x: x.sharding, nn.unbox(enc))
      merged = jax.tree.map(jax.device_put, backbone, shardings)
      params = {**params, "model": {**params["model"], "encoder": merged}}
    if self.component_dir:
      params = {**params, "components": self._component_arrays(
          params["components"])}
    return params

  def _component_arrays(self, current):
    model = components.ComponentModel.load(self.component_dir)
    arrays = components_jax.model_arrays(
        model, self.class_names, self.component_slots,
        self.config.dims.width)
    return {k: jax.device_put(jnp.asarray(v), current[k].sharding)
            for k, v in arrays.items()}

  def make_train_data(self, config, batch_multiple: int = 1):
    """Normal training images + component masks (data.py)."""
    data = data_lib.AnomalyMoETrainData(config, self.preprocess,
                                        self.image_size, batch_multiple)
    if list(data.class_names) != list(self.class_names):
      raise ValueError(f"class vocabulary changed: {data.class_names} vs "
                       f"{self.class_names} at init")
    return data

  def make_tx(self, param_labels=None):
    """Model: clip 0.1 + StableAdamW + warm cosine; estimator: Adam + L2;
    frozen and state leaves: set_to_zero."""
    o = self.optim
    main = training.make_optimizer(
        float(o.lr), self.total_steps, int(o.get("warmup_steps", 100)),
        float(o.get("grad_clip", 0.1)))
    est = training.make_estimator_optimizer(float(o.get("estimator_lr",
                                                        o.lr)))

    def label_fn(params):
      def lab(path, leaf):
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        if param_labels is not None:
          trainable = leaf == "trainable"
        else:
          trainable = name.startswith(("model/", "mi_estimator/")) and (
              not name.startswith("model/encoder/"))
        if not trainable:
          return "frozen"
        return "estimator" if name.startswith("mi_estimator/") else "model"
      source = param_labels if param_labels is not None else params
      return jax.tree_util.tree_map_with_path(lab, source)

    return optax.multi_transform(
        {"model": main, "estimator": est, "frozen": optax.set_to_zero()},
        label_fn)

  def make_context(self, params, class_names: Sequence[str]) -> dict:
    del params, class_names
    return {}

  # ---- steps ----
  def _inputs(self, batch, rng=None):
    images = batch["image"]
    images_ae = batch.get("image_ae")
    if images_ae is None:
      images_ae = images if rng is None else ops.color_jitter(images, rng)
    masks = batch.get("component_masks")
    if masks is None:
      s = images.shape[1]
      masks = jnp.zeros((images.shape[0], 1, s, s), jnp.float32)
    return images, images_ae, masks.astype(jnp.float32)

  def _class_id(self, batch):
    cid = batch.get("class_id")
    if cid is None:
      return jnp.zeros((batch["image"].shape[0],), jnp.int32)
    return cid

  def loss_fn(self, params, batch, context, rng):
    del context
    cfg = self.config
    r_jit, r_drop, r_eir, r_est = jax.random.split(rng, 4)
    images, images_ae, masks = self._inputs(batch, r_jit)
    out = self.module.apply(
        {"params": params["model"]}, images, images_ae, masks, train=True,
        deterministic=False, with_ae_target=True, rngs={"dropout": r_drop})
    pairs, perms = losses.sample_eir_draws(
        r_eir, cfg.num_patch_experts, cfg.num_global_experts,
        images.shape[0])
    est = params["mi_estimator"]
    total, terms = losses.total_loss(
        out, model_lib.split_groups(cfg, out["routing_weights"]),
        jax.lax.stop_gradient(est), pairs, perms, self.loss_config)
    est_pairs, _ = losses.sample_eir_draws(
        r_est, cfg.num_patch_experts, cfg.num_global_experts,
        images.shape[0])
    est_loss = losses.MIEstimator(cfg.dims.width).apply(
        {"params": est}, jax.lax.stop_gradient(terms["patch_features"]),
        jax.lax.stop_gradient(terms["global_features"]), est_pairs,
        method=losses.MIEstimator.learning_loss)
    metrics = {k: terms[k] for k in (
        "loss_total", "loss_patch", "loss_global", "loss_component",
        "loss_esb", "loss_eir")}
    metrics["loss_estimator"] = est_loss
    if "calib" in params:
      metrics[UPDATED_STATE] = {"calib": self._calibrate(
          params, images, masks, self._class_id(batch))}
    return total + est_loss, metrics

  def _calibrate(self, params, images, masks, class_id):
    """Running per-class min / max of the eval-mode raw maps (no grad)."""
    model = jax.lax.stop_gradient(params["model"])
    raw, _ = maps.eval_maps(self.module, model, images, masks)
    return maps.calibration_update(
        params["calib"], maps.level_maps(raw), class_id,
        self.calib_momentum)

  def forward_maps(self, params, batch):
    """Eval forward; raw maps [B, S, S] x 3 and fusion coefficients."""
    images, _, masks = self._inputs(batch)
    return maps.eval_maps(self.module, params["model"], images, masks)

  def predict_fn(self, params, batch, context):
    """Class statistics and component masks come from `params`."""
    del context
    masks = batch.get("component_masks")
    jitter = jax.random.key(0) if self.test_time_jitter else None
    out = maps.predict(
        self.module, params, batch["image"], self._class_id(batch),
        None if masks is None else masks.astype(jnp.float32),
        jitter_rng=jitter)
    return {"anomaly_map": out["anomaly_map"],
            "image_score": out["image_score"]}

  def checkpoint_config(self) -> dict:
    return {"method": "anomalymoe", **self.config.to_dict(),
            "class_names": list(self.class_names)}
