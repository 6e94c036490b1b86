"""MoECLIP as a trainer method (see methods/base.py for the interface).

The frozen text tower runs once per class (`make_context`): its EOT features
[C, N, Wt] are cached and only the text adapter runs in each step.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from moeclip_jax.checkpoint import backbones
from moeclip_jax.checkpoint import params as ckpt_params
from moeclip_jax.methods import base
from moeclip_jax.methods.moeclip import config as config_lib
from moeclip_jax.methods.moeclip import losses, maps, prompts
from moeclip_jax.methods.moeclip import model as model_lib
from moeclip_jax.models import clip, clip_config, tokenize
from moeclip_jax.sharding import partition
from moeclip_jax.utils import tree as tree_utils


def backbone_config(cfg: Any) -> tuple[clip_config.CLIPConfig, str | None]:
  """(CLIPConfig, checkpoint dir or None) from `config.backbone`.

  `backbone.checkpoint` names a converted CLIP checkpoint; empty means random
  weights of `backbone.variant` (tests, smoke runs).
  """
  ckpt = cfg.get("checkpoint", "") or None
  if ckpt:
    ccfg = backbones.read_clip_config(ckpt)
  else:
    ccfg = clip_config.get_config(cfg.variant)
  overrides = {}
  for key in ("image_size", "patch_size"):
    if cfg.get(key):
      overrides[key] = int(cfg[key])
  for key in ("dtype", "matmul_precision", "activation", "remat"):
    if cfg.get(key):
      overrides[key] = cfg[key]
  return ccfg.replace(**overrides), ckpt


class MoECLIPMethod:
  """Trainer seam for MoECLIP."""

  name = "moeclip"
  trainable_patterns = model_lib.TRAINABLE_PATTERNS
  frozen_patterns = model_lib.FROZEN_PATTERNS

  def __init__(self, config: Any):
    self.clip_config, self.backbone_ckpt = backbone_config(config.backbone)
    mcfg = dict(config.model.to_dict())
    mcfg["faithful"] = config.get("faithful", mcfg.get("faithful", "released"))
    mcfg.setdefault("text_width", self.clip_config.text.width)
    self.config = base.dataclass_from_config(config_lib.MoECLIPConfig, mcfg)
    if self.config.text_width != self.clip_config.text.width:
      raise ValueError(
          f"model.text_width {self.config.text_width} != backbone text width "
          f"{self.clip_config.text.width}")
    self.module = model_lib.MoECLIP(self.clip_config, self.config)
    self.image_size = self.clip_config.vision.image_size
    self.preprocess = {"preset": "moeclip", "size": self.image_size}
    self.dataset = config.data.get("dataset_prompts", None)
    self.domain = maps.canonical_domain(config.get("domain", "industrial"))

  # ---- parameters ----
  def init_fn(self, rng):
    pixels, ids = model_lib._dummy_inputs(self.clip_config, abstract=False)  # pylint: disable=protected-access
    return self.module.init(rng, pixels, ids,
                            method=model_lib.MoECLIP.init_all)["params"]

  def load_pretrained(self, params):
    """Restores the converted backbone straight into `params`' shards.

    The orbax restore target carries each `img` / `txt` leaf's
    NamedSharding, so no host or device ever holds the whole backbone.
    """
    if self.backbone_ckpt is None:
      return params
    ccfg = backbones.read_clip_config(self.backbone_ckpt)
    if ccfg.vision.image_size != self.image_size:
      raise ValueError(
          f"{self.backbone_ckpt}: converted at {ccfg.vision.image_size} px, "
          f"config asks {self.image_size} px (re-convert with --image-size)")
    mesh = jax.tree.leaves(params)[0].sharding.mesh
    towers = ("img", "txt")
    target = partition.restore_target(
        clip.abstract_params(ccfg), {k: params[k] for k in towers}, mesh)
    backbone = ckpt_params.read_params_checkpoint(self.backbone_ckpt,
                                             abstract=target)
    return tree_utils.merge_subtrees(params, backbone, towers)

  # ---- text cache ----
  def make_context(self, params, class_names: Sequence[str]) -> dict:
    """EOT features of every class's prompt sentences, computed once."""
    tok = tokenize.load_tokenizer()
    ids, flags = [], None
    for name in class_names:
      sentences, flags = prompts.class_sentences(name, self.dataset)
      ids.append(tokenize.tokenize(tok, sentences,
                                   self.clip_config.text.context_length))
    ids = np.stack(ids)  # [C, N, L]
    eot = jnp.stack([self._encode_eot(params, x) for x in ids])  # [C, N, Wt]
    return {"eot": eot, "is_abnormal": jnp.asarray(flags)}

  @functools.cached_property
  def _encode_eot(self):
    """One jitted frozen-text-tower call, reused by every make_context."""
    return jax.jit(lambda p, x: self.module.apply(
        {"params": p}, x, method=model_lib.MoECLIP.encode_text_eot))

  def _text_features(self, params, context, class_id):
    t_all = self.module.apply(
        {"params": params}, context["eot"], context["is_abnormal"],
        method=model_lib.MoECLIP.text_features)  # [C, D, 2]
    return t_all[class_id]  # [B, D, 2]

  # ---- steps ----
  def loss_fn(self, params, batch, context, rng):
    out, aux = self.module.apply(
        {"params": params}, batch["image"], train=True,
        rngs={"dropout": rng})
    text = self._text_features(params, context, batch["class_id"])
    masks_ = batch["mask"].astype(jnp.float32)
    return losses.total_loss(out, aux, text, batch["label"], masks_,
                             self.config.loss_weights())

  def predict_fn(self, params, batch, context):
    out, _ = self.module.apply({"params": params}, batch["image"])
    text = self._text_features(params, context, batch["class_id"])
    size = batch["image"].shape[1:3]
    return {
        "anomaly_map": maps.anomaly_map(out["seg_tokens"], text, size,
                                        self.domain),
        "image_score": maps.image_score(out["det_feature"], text),
    }

  def checkpoint_config(self) -> dict:
    return {"method": "moeclip", "clip": self.clip_config.to_dict(),
            "moeclip": self.config.to_dict(), "domain": self.domain}
