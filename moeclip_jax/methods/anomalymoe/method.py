"""AnomalyMoE as a trainer method (see methods/base.py for the interface).

Parameter tree: {"model": AnomalyMoE params (frozen "encoder" inside),
"mi_estimator": CLUB estimator params}. The official alternating estimator
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

from moeclip_jax.methods.anomalymoe import experts
from moeclip_jax.methods.anomalymoe import inference
from moeclip_jax.methods.anomalymoe import losses
from moeclip_jax.methods.anomalymoe import model as model_lib
from moeclip_jax.methods.anomalymoe import training
from moeclip_jax.models import dinov2

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

TRAINABLE_PATTERNS = (
    r"model/(patch_experts|global_experts|component_experts|gate)/.*",
    r"mi_estimator/.*",
)
FROZEN_PATTERNS = (r"model/encoder/.*",)


def color_jitter(images, rng, strength: float = 0.2):
  """One random ColorJitter (brightness, contrast or saturation) per image.

  Args:
    images: float[B, H, W, 3], ImageNet-normalised.
    rng: PRNG key.
    strength: factors are drawn from U[1 - strength, 1 + strength].

  Returns:
    float[B, H, W, 3], jittered and re-normalised.
  """
  b = images.shape[0]
  k1, k2 = jax.random.split(rng)
  kind = jax.random.randint(k1, (b,), 0, 3)
  factor = jax.random.uniform(k2, (b,), minval=1 - strength,
                              maxval=1 + strength)[:, None, None, None]
  x = images * IMAGENET_STD + IMAGENET_MEAN  # [B, H, W, 3] in [0, 1]
  grey = jnp.sum(x * jnp.array([0.299, 0.587, 0.114]), -1, keepdims=True)
  bright = x * factor
  contrast = factor * x + (1 - factor) * jnp.mean(grey, (1, 2, 3),
                                                  keepdims=True)
  sat = factor * x + (1 - factor) * grey
  out = jnp.select([kind[:, None, None, None] == i for i in range(3)],
                   [bright, contrast, sat])
  return (jnp.clip(out, 0.0, 1.0) - IMAGENET_MEAN) / IMAGENET_STD


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
      backbone, interpolation=bb.get("interpolation", "official"))
  m = dict(config.model.to_dict())
  for key in ("target_layers",):
    m[key] = tuple(m[key])
  for key in ("train_fusion", "test_fusion"):
    m[key] = tuple(tuple(g) for g in m[key])
  return model_lib.AnomalyMoEConfig(backbone=backbone, dims=dims, **m)


def dataclasses_replace(obj, **kw):
  import dataclasses  # pylint: disable=g-import-not-at-top
  return dataclasses.replace(obj, **kw)


class AnomalyMoEMethod:
  """Trainer seam for AnomalyMoE."""

  name = "anomalymoe"
  trainable_patterns = TRAINABLE_PATTERNS
  frozen_patterns = FROZEN_PATTERNS

  def __init__(self, config: Any):
    self.config = model_config(config)
    self.loss_config = losses.LossConfig(**dict(config.loss.to_dict()))
    self.optim = config.optim
    self.total_steps = int(config.get("total_steps", 100_000))
    self.backbone_ckpt = config.backbone.get("checkpoint", "") or None
    self.module = model_lib.AnomalyMoE(self.config)
    self.image_size = self.config.image_size
    self.preprocess = {"preset": "anomalymoe", "size": self.image_size,
                       "resize": int(config.data.get("resize", 448))}

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
    return {"model": model, "mi_estimator": est}

  def load_pretrained(self, params):
    if self.backbone_ckpt is None:
      return params
    from moeclip_jax.convert import hf_dinov2  # pylint: disable=g-import-not-at-top
    _, backbone, _ = hf_dinov2.load_checkpoint(self.backbone_ckpt)
    enc = params["model"]["encoder"]
    shardings = jax.tree.map(lambda x: x.sharding, nn.unbox(enc))
    merged = jax.tree.map(jax.device_put, backbone, shardings)
    return {**params, "model": {**params["model"], "encoder": merged}}

  def make_tx(self, param_labels=None):
    """Model: clip 0.1 + StableAdamW + warm cosine; estimator: Adam + L2."""
    del param_labels
    o = self.optim
    main = training.make_optimizer(
        float(o.lr), self.total_steps, int(o.get("warmup_steps", 100)),
        float(o.get("grad_clip", 0.1)))
    est = training.make_estimator_optimizer(float(o.get("estimator_lr",
                                                        o.lr)))

    def label_fn(params):
      def lab(path, _):
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        if name.startswith("mi_estimator"):
          return "estimator"
        return "frozen" if name.startswith("model/encoder") else "model"
      return jax.tree_util.tree_map_with_path(lab, params)

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
      images_ae = images if rng is None else color_jitter(images, rng)
    masks = batch.get("component_masks")
    if masks is None:
      s = images.shape[1]
      masks = jnp.zeros((images.shape[0], 1, s, s), jnp.float32)
    return images, images_ae, masks

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
    return total + est_loss, metrics

  def forward_maps(self, params, batch):
    """Eval forward; raw maps [B, S, S] x 3 and fusion coefficients."""
    images, images_ae, masks = self._inputs(batch)
    out = self.module.apply({"params": params["model"]}, images, images_ae,
                            masks)
    weights = model_lib.split_groups(self.config, out["routing_weights"])
    raw = inference.raw_maps(out, weights, self.image_size)
    return raw, inference.fusion_coefficients(weights)

  def predict_fn(self, params, batch, context):
    """Per-batch min-max (class statistics in `context["min_max"]` if any)."""
    raw, coef = self.forward_maps(params, batch)
    maps = (raw["map_patch"], raw["map_global"], raw["map_component"])
    min_max = context.get("min_max") if context else None
    if min_max is None:
      min_max = inference.class_min_max(maps)
    final = inference.fuse(maps, coef, min_max)
    _, _, scores = inference.score_maps(final)
    return {"anomaly_map": final, "image_score": scores}

  def checkpoint_config(self) -> dict:
    return {"method": "anomalymoe", **self.config.to_dict()}
