"""InCTRL detector: load a converted or trained checkpoint, set K prompts,
predict.

    det = detector.load("ckpt/inctrl_k2")
    det.set_prompts(normal_images)            # uint8 [K, H, W, 3], once
    out = det.predict(images, "candle")       # uint8 [B, H, W, 3]
    out["image_score"]   # float32[B]  (s_h + s_p) / 2
    out["anomaly_map"]   # float32[B, H, W]  M_p upsampled to the input size

Images are uint8 [N, H, W, 3] (resized: shorter side 240, bicubic, centre
crop, CLIP mean/std, the `inctrl` preset) or float32 [N, S, S, 3] already
normalised at the model's size. Query features do not depend on the prompts,
so `encode` + `score` let an evaluation encode queries once and score them
against many prompt draws.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from moeclip_jax.convert import common
from moeclip_jax.data import transforms
from moeclip_jax.methods.inctrl import model as inctrl_model
from moeclip_jax.methods.inctrl import text as inctrl_text
from moeclip_jax.models import clip_config
from moeclip_jax.models import tokenize

Features = dict[str, np.ndarray]


class InCTRLDetector:
  """Few-shot InCTRL scoring around a model and its variables.

  Args:
    model: an `InCTRL` with its CLIP towers.
    variables: {params, batch_stats}.
    tokenizer: CLIP tokenizer for the text prior.
    batch_size: images per forward when encoding.
  """

  method = "inctrl"

  def __init__(self, model: inctrl_model.InCTRL, variables, tokenizer,
               *, batch_size: int = 32):
    self.model = model
    self.variables = variables
    self.batch_size = batch_size
    self.image_size = model.clip_config.vision.image_size
    self.text_cache = inctrl_text.TextFeatureCache.from_model(
        model, variables["params"], tokenizer)
    self._encode = jax.jit(lambda v, x: model.apply(
        v, x, method=inctrl_model.InCTRL.encode_images))
    self._score = jax.jit(lambda v, q, p, t: model.apply(
        v, q, p, t, method=inctrl_model.InCTRL.score_features))
    self.prompt_features: Features | None = None

  def preprocess(self, images) -> np.ndarray:
    """uint8 [N, H, W, 3] or normalised float32 [N, S, S, 3] -> float32."""
    images = np.asarray(images)
    if images.ndim == 3:
      images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"expected images [N, H, W, 3], got {images.shape}")
    if images.dtype != np.uint8 and images.dtype.kind != "f":
      raise ValueError(f"images must be uint8 or float32, got {images.dtype}")
    if images.dtype != np.uint8:
      if images.shape[1:3] != (self.image_size, self.image_size):
        raise ValueError(
            f"float images must be normalised at {self.image_size} px, got "
            f"{images.shape}; pass uint8 images to have them resized")
      return images.astype(np.float32)
    cfg = transforms.get_preprocess({"preset": "inctrl",
                                     "size": self.image_size,
                                     "crop": self.image_size})
    return np.stack([transforms.normalize(transforms.resize_image(im, cfg),
                                          cfg) for im in images])

  def encode(self, images) -> Features:
    """Backbone features: layer_tokens [N, L, T, W], pooled [N, D] (host)."""
    pixels = self.preprocess(images)
    chunks = [
        self._encode(self.variables, pixels[i:i + self.batch_size])
        for i in range(0, len(pixels), self.batch_size)
    ]
    return {k: np.concatenate([np.asarray(c[k]) for c in chunks])
            for k in chunks[0]}

  def set_prompts(self, images) -> None:
    """Encodes the K normal prompt images once (uint8 or normalised)."""
    self.prompt_features = self.encode(images)

  def score(self, query: Features, class_name: str,
            prompts: Features | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Scores encoded queries against encoded prompts.

    Returns:
      (image_score float32[N], patch_map float32[N, P]).
    """
    prompts = prompts if prompts is not None else self.prompt_features
    if prompts is None:
      raise ValueError("no prompts: call set_prompts(images) first")
    text = jnp.asarray(self.text_cache(class_name))  # [2, D]
    scores, maps = [], []
    n = len(query["pooled"])
    for i in range(0, n, self.batch_size):
      q = {k: v[i:i + self.batch_size] for k, v in query.items()}
      s, aux = self._score(self.variables, q, prompts, text)
      scores.append(np.asarray(s))
      maps.append(np.asarray(aux["patch_map"]))
    return np.concatenate(scores), np.concatenate(maps)

  def predict(self, images, class_name: str, domain=None,
              dataset=None) -> dict[str, np.ndarray]:
    """image_score [N] and anomaly_map [N, H, W] at the input size.

    `domain` and `dataset` are accepted for API symmetry with MoECLIP and
    unused: InCTRL's prompts depend on the class name only.
    """
    del domain, dataset
    images = np.asarray(images)
    if images.ndim == 3:
      images = images[None]
    scores, maps = self.score(self.encode(images), class_name)
    heat = inctrl_model.patch_map_to_image(jnp.asarray(maps),
                                           images.shape[1:3])
    return {"image_score": scores, "anomaly_map": np.asarray(heat)}

  @classmethod
  def load(cls, checkpoint_dir, **kwargs) -> "InCTRLDetector":
    """From a `convert inctrl-official` output or a training export.

    Both hold params/ = the variables {params, batch_stats} (towers
    included) and a config.json {"method": "inctrl", "clip", "inctrl"};
    the generic trainer writes `<workdir>/detector` with
    `InCTRLMethod.checkpoint_config()` as that config.json.
    """
    return load(checkpoint_dir, **kwargs)


def model_from_config(cfg: dict[str, Any]) -> inctrl_model.InCTRL:
  """InCTRL from a checkpoint's config.json dict."""
  if cfg.get("method") != "inctrl":
    raise ValueError(f"not an InCTRL checkpoint (method={cfg.get('method')})")
  extra = cfg.get("inctrl", {})
  return inctrl_model.InCTRL(
      clip_config=clip_config.CLIPConfig.from_dict(cfg["clip"]),
      feature_layers=tuple(extra.get("feature_layers",
                                     inctrl_model.DEFAULT_LAYERS)),
      adapter_reduction=extra.get("adapter_reduction", 4),
      text_scale=extra.get("text_scale", inctrl_model.TEXT_SCALE))


def load_variables(checkpoint_dir) -> tuple[inctrl_model.InCTRL, dict]:
  """(model, {params, batch_stats}) from a converted checkpoint folder."""
  path = pathlib.Path(checkpoint_dir)
  config_file = path / "config.json"
  if not config_file.is_file():
    raise FileNotFoundError(f"{config_file}: missing (not a checkpoint?)")
  model = model_from_config(json.loads(config_file.read_text()))
  abstract = jax.eval_shape(
      lambda r: inctrl_model.init_variables(model, r), jax.random.key(0))
  return model, common.read_params_checkpoint(path, abstract)


def load(checkpoint_dir, **kwargs) -> InCTRLDetector:
  """An `InCTRLDetector` from a converted or trained checkpoint folder."""
  model, variables = load_variables(checkpoint_dir)
  tok_dir = pathlib.Path(checkpoint_dir) / "tokenizer"
  tokenizer = tokenize.load_tokenizer(tok_dir if tok_dir.is_dir() else None)
  return InCTRLDetector(model, variables, tokenizer, **kwargs)
