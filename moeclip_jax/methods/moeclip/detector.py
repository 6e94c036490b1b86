"""`load_detector(dir)` for MoECLIP: single-batch prediction without a dataset.

  det = moeclip_jax.load_detector("runs/visa/detector")
  out = det.predict(images_uint8, "bottle", domain="industrial")
  out["anomaly_map"]  # [B, H, W] at the input size: the summed map of the
                      # domain's rule, before the per-class min-max
  out["image_score"]  # [B]: (det . t_abn + 1) / 2, before min-max and fusion

Per-class min-max and the domain fusion need a whole class: `eval` does
them, or `calibrate` stores the statistics that `fused_score` uses.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from moeclip_jax.methods.moeclip import maps
from moeclip_jax.methods.moeclip import model as model_lib
from moeclip_jax.methods.moeclip import model_io
from moeclip_jax.methods.moeclip import prompts
from moeclip_jax.models import tokenize
from moeclip_jax.utils import images as image_utils

CALIBRATION_FILE = "calibration.json"


def prepare_images(images, size: int) -> np.ndarray:
  """uint8 [B, H, W, 3] (any size) or float32 [B, S, S, 3] -> model input."""
  x = np.asarray(images)
  if x.ndim == 3:
    x = x[None]
  if x.ndim != 4 or x.shape[-1] != 3:
    raise ValueError(f"images must be [B, H, W, 3] (RGB), got {x.shape}")
  if x.dtype == np.uint8:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    resized = [np.asarray(Image.fromarray(im).resize((size, size),
                                                     Image.BICUBIC))
               for im in x]
    return image_utils.normalize(np.stack(resized))
  if x.dtype.kind == "f":
    if x.shape[1:3] != (size, size):
      raise ValueError(
          f"float images must be normalised NHWC at the model size "
          f"[B, {size}, {size}, 3], got {x.shape} (pass uint8 to resize)")
    return x.astype(np.float32)
  raise ValueError(f"images must be uint8 or float32, got {x.dtype}")


class MoECLIPDetector:
  """A loaded MoECLIP checkpoint with cached per-class text features."""

  method = "moeclip"

  def __init__(self, module, params, clip_config, config, tokenizer,
               checkpoint_dir, extra: dict[str, Any]):
    self.module, self.params = module, params
    self.clip_config, self.config = clip_config, config
    self.tokenizer = tokenizer or tokenize.load_tokenizer()
    self.checkpoint_dir = pathlib.Path(checkpoint_dir)
    self.default_domain = extra.get("domain", "industrial")
    self.image_size = clip_config.vision.image_size
    self._text_cache: dict[tuple[str, str | None], jax.Array] = {}
    self._forward = jax.jit(self._forward_impl, static_argnames=("domain",))
    self._encode = jax.jit(lambda p, ids, flags: module.apply(
        {"params": p}, module.apply({"params": p}, ids,
                                    method=model_lib.MoECLIP.encode_text_eot),
        flags, method=model_lib.MoECLIP.text_features))

  @classmethod
  def load(cls, checkpoint_dir, *, dtype: str | None = None):
    path = pathlib.Path(checkpoint_dir)
    module, params, ccfg, cfg, tok = model_io.load(path, dtype=dtype)
    extra = json.loads((path / "config.json").read_text())
    return cls(module, params, ccfg, cfg, tok, path, extra)

  def text_features(self, class_name: str, dataset: str | None = None):
    """T [D, 2] for a class (cached; the text tower runs once per class)."""
    key = (class_name, dataset)
    if key not in self._text_cache:
      sentences, flags = prompts.class_sentences(class_name, dataset)
      ids = tokenize.tokenize(self.tokenizer, sentences,
                              self.clip_config.text.context_length)
      self._text_cache[key] = self._encode(self.params, ids, flags)
    return self._text_cache[key]

  def _forward_impl(self, params, pixels, text, domain):
    out, _ = self.module.apply({"params": params}, pixels)
    size = pixels.shape[1:3]
    return (maps.anomaly_map(out["seg_tokens"], text, size, domain),
            maps.image_score(out["det_feature"], text))

  def predict(self, images, class_name: str, domain: str | None = None,
              dataset: str | None = None) -> dict[str, np.ndarray]:
    """anomaly_map [B, H, W] at the input size and image_score [B]."""
    domain = maps.canonical_domain(domain or self.default_domain)
    raw = np.asarray(images)
    pixels = prepare_images(raw, self.image_size)
    text = self.text_features(class_name, dataset)
    amap, score = self._forward(self.params, jnp.asarray(pixels), text,
                                domain=domain)
    amap = np.asarray(amap)
    out_hw = raw.shape[-3:-1]
    if tuple(out_hw) != amap.shape[1:]:
      amap = np.asarray(jax.image.resize(
          amap, (amap.shape[0],) + tuple(out_hw), "bilinear"))
    return {"anomaly_map": amap, "image_score": np.asarray(score)}
