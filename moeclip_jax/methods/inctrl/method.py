"""InCTRL as a trainer method (see methods/base.py for the interface).

Params tree = the Flax variables {"params": {img, txt, adapter, diff_head,
diff_head_ref}, "batch_stats": {...}}:

  params/(img|txt)/...                 frozen CLIP towers
  params/(diff_head|diff_head_ref)/bn1 frozen: bn1 is never called, so torch
                                       gives it no gradient and AdamW skips
                                       it (optax would still decay it)
  params/adapter/..., the heads' projections and bn2/bn3   trainable
  batch_stats/...                      state: BN running statistics, put in
                                       by the step from metrics
                                       ["updated_state"], checkpointed

The step (spec A4): the frozen towers encode queries and prompts under
`stop_gradient` (no tower gradient is ever formed), the heads run with
BatchNorm in train mode (torch semantics, heads.TorchBatchNorm), the loss is
Focal(s, y) + Focal(s_i, y) with the official double sigmoid, and the
optimizer is config.optim (AdamW, lr 1e-3, weight decay 0.01 made explicit).

Context (`make_context`): the text prior's [t_n, t_a] per class, from the
154 / 88 prompt ensembles encoded once (text.TextFeatureCache); and, when
the data has held-out classes, the frozen features of K prompt images per
class drawn once with the seed (data.InCTRLTrainData.eval_prompts), which
`predict_fn` scores held-out queries against.
"""

from __future__ import annotations

import functools
import json
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from moeclip_jax.checkpoint import backbones
from moeclip_jax.checkpoint import params as ckpt_params
from moeclip_jax.methods.inctrl import data as data_lib
from moeclip_jax.methods.inctrl import losses
from moeclip_jax.methods.inctrl import model as model_lib
from moeclip_jax.methods.inctrl import text as text_lib
from moeclip_jax.methods.moeclip.method import backbone_config
from moeclip_jax.models import clip, tokenize
from moeclip_jax.sharding import partition
from moeclip_jax.utils import tree as tree_utils

UPDATED_STATE = "updated_state"  # = train.step.UPDATED_STATE
TOWERS = ("img", "txt")
TRAINABLE_PATTERNS = (
    r"params/adapter/.*",
    r"params/(diff_head|diff_head_ref)/(projection[123]|bn2|bn3)/.*",
)
FROZEN_PATTERNS = (
    r"params/(img|txt)/.*",
    r"params/(diff_head|diff_head_ref)/bn1/.*",
)
STATE_PATTERNS = (r"batch_stats/.*",)


def _read_into_shards(ckpt, abstract, like: dict):
  """Restores checkpoint `ckpt` (tree `abstract`); the top-level subtrees
  present in `like` land directly in the shardings of its arrays."""
  mesh = jax.tree.leaves(like)[0].sharding.mesh
  target = partition.restore_target(abstract, like, mesh)
  return ckpt_params.read_params_checkpoint(ckpt, abstract=target)


def predict_with_class_prompts(module, variables, images, class_id,
                               context) -> dict:
  """Scores each image against its class's prompt features and text prior.

  Args:
    module: the InCTRL module.
    variables: {params, batch_stats}.
    images: float32[B, S, S, 3], normalised.
    class_id: int32[B].
    context: prompts {layer_tokens [C, K, L, T, W], pooled [C, K, D]},
      text [C, 2, D].

  Returns:
    {"anomaly_map" [B, S, S] (M_p), "image_score" [B] ((s_h + s_p) / 2)}.
  """
  query = module.apply(variables, images,
                       method=model_lib.InCTRL.encode_images)
  prompts = jax.tree.map(lambda x: x[class_id], context["prompts"])
  score, aux = module.apply(variables, query, prompts,
                            context["text"][class_id],
                            method=model_lib.InCTRL.score_features)
  amap = model_lib.patch_map_to_image(aux["patch_map"], images.shape[1:3])
  return {"anomaly_map": amap, "image_score": score}


class InCTRLMethod:
  """Trainer seam for InCTRL."""

  name = "inctrl"
  trainable_patterns = TRAINABLE_PATTERNS
  frozen_patterns = FROZEN_PATTERNS
  state_patterns = STATE_PATTERNS
  batch_keys = ("query", "prompts", "label", "class_id")

  def __init__(self, config: Any):
    self.clip_config, self.backbone_ckpt = backbone_config(config.backbone)
    m = config.model
    self.module = model_lib.InCTRL(
        clip_config=self.clip_config,
        feature_layers=tuple(m.feature_layers),
        adapter_reduction=int(m.adapter_reduction),
        text_scale=float(m.text_scale),
        official_batch_layout=bool(m.official_batch_layout))
    self.shots = int(config.shots)
    self.image_size = self.clip_config.vision.image_size
    pre = data_lib.preprocess_config(self.image_size)
    self.preprocess = {"preset": "inctrl", "size": pre.size, "crop": pre.crop}
    self._mean = np.asarray(pre.mean, np.float32)
    self._std = np.asarray(pre.std, np.float32)
    self.domain = config.get("domain", "industrial")
    self.data = None  # set by make_train_data (eval prompts)

  # ---- parameters ----
  def init_fn(self, rng):
    """Boxed variables {params, batch_stats} (logical axes on the towers)."""
    return model_lib.init_variables(self.module, rng, shots=self.shots,
                                    unbox=False)

  def load_pretrained(self, params):
    """Merges `backbone.checkpoint` into `params`, straight into its shards.

    A converted OpenCLIP checkpoint replaces the towers; an InCTRL one
    (`convert inctrl-official`, or a `detector/` export) replaces
    everything, heads and BN statistics included (fine-tuning).
    """
    ckpt = self.backbone_ckpt
    if ckpt is None:
      return params
    size = backbones.read_clip_config(ckpt).vision.image_size
    if size != self.image_size:
      raise ValueError(f"{ckpt}: converted at {size} px, config asks "
                       f"{self.image_size} px (re-convert with --image-size)")
    meta = json.loads((pathlib.Path(ckpt) / "config.json").read_text())
    if meta.get("method") == "inctrl":
      whole = ("params", "batch_stats")
      loaded = _read_into_shards(
          ckpt, jax.eval_shape(self.init_fn, jax.random.key(0)), params)
      return tree_utils.merge_subtrees(params, loaded, whole)
    towers = {k: params["params"][k] for k in TOWERS}
    loaded = _read_into_shards(
        ckpt, clip.abstract_params(backbones.read_clip_config(ckpt)), towers)
    return {**params, "params": tree_utils.merge_subtrees(
        params["params"], loaded, TOWERS)}

  # ---- data and context ----
  def make_train_data(self, config, batch_multiple: int = 1):
    self.data = data_lib.InCTRLTrainData(config, self.image_size,
                                         batch_multiple)
    return self.data

  def make_context(self, params, class_names: Sequence[str]) -> dict:
    """text [C, 2, D]; with held-out classes also prompts (frozen features
    of K fixed prompt images per class: layer_tokens [C, K, L, T, W],
    pooled [C, K, D])."""
    cache = text_lib.TextFeatureCache.from_model(
        self.module, params["params"], tokenize.load_tokenizer())
    context = {"text": jnp.asarray(cache.batch(class_names))}
    if self.data is not None and self.data.holdout:
      pixels = self.data.eval_prompts(class_names)  # uint8[C, K, S, S, 3]
      context = self.with_prompt_features(params, context, pixels)
    return context

  def with_prompt_features(self, params, context: dict, pixels) -> dict:
    """`context` plus the frozen features of K prompt images per class,
    `pixels` uint8 / normalised [C, K, S, S, 3] (what predict_fn scores
    against; make_context adds them for data with held-out classes)."""
    towers = {k: params["params"][k] for k in TOWERS}
    return {**context, "prompts": self._encode_prompts(towers, pixels)}

  @functools.cached_property
  def _encode_prompts(self):
    return jax.jit(lambda towers, x: self.module.apply(
        {"params": towers}, self._pixels(x),
        method=model_lib.InCTRL.encode_prompts))

  def _pixels(self, x: jax.Array) -> jax.Array:
    """uint8 images -> normalised float32 (float input passes through)."""
    if x.dtype != jnp.uint8:
      return x.astype(jnp.float32)
    return (x.astype(jnp.float32) / 255.0 - self._mean) / self._std

  def frozen_features(self, towers, query, prompts) -> tuple[dict, dict]:
    """Frozen-tower features of queries [B, S, S, 3] and prompts
    [B, K, S, S, 3], as constants of the step."""
    towers = jax.lax.stop_gradient(towers)
    apply = lambda x, fn: self.module.apply({"params": towers},
                                            self._pixels(x), method=fn)
    q = apply(query, model_lib.InCTRL.encode_images)
    p = apply(prompts, model_lib.InCTRL.encode_prompts)
    return jax.lax.stop_gradient(q), jax.lax.stop_gradient(p)

  # ---- steps ----
  def loss_fn(self, params, batch, context, rng):
    """Official focal losses; BN in train mode, new stats in metrics."""
    del rng
    towers = {k: params["params"][k] for k in TOWERS}
    query, prompts = self.frozen_features(towers, batch["query"],
                                          batch["prompts"])
    text = context["text"][batch["class_id"]]  # [B, 2, D]
    (score, aux), updates = self.module.apply(
        params, query, prompts, text, train=True,
        method=model_lib.InCTRL.score_features, mutable=["batch_stats"])
    loss = losses.inctrl_loss(score, aux["image_residual_score"],
                              batch["label"])
    return loss, {
        "score_mean": jnp.mean(score),
        "image_residual_score_mean": jnp.mean(aux["image_residual_score"]),
        UPDATED_STATE: {"batch_stats": updates["batch_stats"]},
    }

  def predict_fn(self, params, batch, context):
    """Scores normalised images against the class's fixed context prompts."""
    if "prompts" not in context:
      raise ValueError(
          "InCTRL predict_fn needs context['prompts'] (K prompt features per "
          "class), which make_context builds only for data with "
          "data.holdout_classes; for other sets use the detector or python "
          "moeclip-jax eval --shots K")
    return predict_with_class_prompts(self.module, params,
                                      self._pixels(batch["image"]),
                                      batch["class_id"], context)

  def checkpoint_config(self) -> dict:
    """config.json of an export; `detector.model_from_config` reads it."""
    m = self.module
    return {"method": "inctrl", "clip": self.clip_config.to_dict(),
            "inctrl": {"feature_layers": list(m.feature_layers),
                       "adapter_reduction": m.adapter_reduction,
                       "text_scale": m.text_scale},
            "shots": self.shots, "domain": self.domain}
