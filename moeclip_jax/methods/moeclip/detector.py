"""MoECLIP behind `load_detector` and every verb (the `Detector` protocol).

  det = moeclip_jax.load_detector("runs/visa/detector", domain="industrial")
  out = det.predict(images_uint8, "bottle")
  out.anomaly_map   # [B, H, W] at the input size: the summed map of the
                    # domain's rule, before the per-class min-max
  out.image_score   # [B]: (det . t_abn + 1) / 2, before min-max and fusion

Text prompts per class noun and domain; the text tower runs once per class
(cached). Dataset runs put one text matrix per class in the context and
score mixed-class batches through `predict_fn` (the trainer's seam).
Per-class min-max and the domain fusion need a whole class: `eval` does
them, or `calibrate` stores the statistics that calibration's
`fused_score` uses with `score_fusion`.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from moeclip_jax.checkpoint import params as ckpt_params
from moeclip_jax.data import records as rec
from moeclip_jax.inference import export as export_lib
from moeclip_jax.inference import overlay, runner
from moeclip_jax.methods import base
from moeclip_jax.methods.moeclip import maps, model_io, prompts
from moeclip_jax.methods.moeclip import model as model_lib
from moeclip_jax.models import tokenize
from moeclip_jax.utils import images as image_utils

GENERIC_CLASS = "object"


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


class MoECLIPDetector(base.DetectorBase):
  """A loaded MoECLIP checkpoint with cached per-class text features."""

  method = "moeclip"
  default_protocol = "moeclip-released"
  accepted_options = frozenset({"domain", "dataset_prompts"})

  def __init__(self, module, params, clip_config, config, tokenizer,
               checkpoint_dir, extra: dict[str, Any], *,
               domain: str | None = None, dataset_prompts: str | None = None):
    self.module, self.params = module, params
    self.clip_config, self.config = clip_config, config
    self.tokenizer = tokenizer or tokenize.load_tokenizer()
    self.checkpoint_dir = pathlib.Path(checkpoint_dir)
    self.default_domain = extra.get("domain", "industrial")
    self.domain = maps.canonical_domain(domain or self.default_domain)
    self.dataset_prompts = dataset_prompts
    self.image_size = clip_config.vision.image_size
    self.preprocess = {"preset": "moeclip", "size": self.image_size}
    self.score_fusion = functools.partial(_fuse, domain=self.domain)
    self._text_cache: dict[tuple[str, str | None], jax.Array] = {}
    self._forward = jax.jit(self._forward_impl, static_argnames=("domain",))
    self._encode = jax.jit(lambda p, ids, flags: module.apply(
        {"params": p}, module.apply({"params": p}, ids,
                                    method=model_lib.MoECLIP.encode_text_eot),
        flags, method=model_lib.MoECLIP.text_features))

  @classmethod
  def cli_options(cls) -> Sequence[base.Option]:
    return (
        base.Option("--domain", "industrial | medical (MoECLIP; default: "
                    "the checkpoint's)"),
        base.Option("--dataset-prompts", "dataset whose prompt nouns to use "
                    "(MoECLIP; default: search every dataset)"),
    )

  @classmethod
  def load(cls, checkpoint_dir, *, dtype: str | None = None, **options):
    cls.check_options(checkpoint_dir, options)
    path = pathlib.Path(checkpoint_dir)
    module, params, ccfg, cfg, tok = model_io.load(path, dtype=dtype)
    extra = ckpt_params.read_config(path)
    return cls(module, params, ccfg, cfg, tok, path, extra, **options)

  # ---- text --------------------------------------------------------------
  def text_features(self, class_name: str, dataset: str | None = None):
    """T [D, 2] for a class (cached; the text tower runs once per class)."""
    dataset = dataset or self.dataset_prompts
    key = (class_name, dataset)
    if key not in self._text_cache:
      sentences, flags = prompts.class_sentences(class_name, dataset)
      ids = tokenize.tokenize(self.tokenizer, sentences,
                              self.clip_config.text.context_length)
      self._text_cache[key] = self._encode(self.params, ids, flags)
    return self._text_cache[key]

  # ---- forward -----------------------------------------------------------
  def _forward_impl(self, params, pixels, text, domain):
    out, _ = self.module.apply({"params": params}, pixels)
    size = pixels.shape[1:3]
    return (maps.anomaly_map(out["seg_tokens"], text, size, domain),
            maps.image_score(out["det_feature"], text))

  def predict_fn(self, params, batch, context):
    """The trainer's seam: one text matrix per image (context["text"]
    [C, D, 2] indexed by class id)."""
    text = context["text"][batch["class_id"]]  # [B, D, 2]
    amap, score = self._forward_impl(params, batch["image"], text,
                                     self.domain)
    return {"anomaly_map": amap, "image_score": score}

  def predict_pixels(self, pixels, class_name, entry=None):
    del entry
    amap, score = self._forward(self.params, jnp.asarray(pixels),
                                self.text_features(class_name),
                                domain=self.domain)
    return {"anomaly_map": np.asarray(amap), "image_score": np.asarray(score)}

  def predict_maps(self, images, class_names=None, domain: str | None = None,
                   dataset: str | None = None) -> base.Predictions:
    """anomaly_map [B, H, W] at the input size and image_score [B]."""
    class_name = _one_class(class_names)
    domain = maps.canonical_domain(domain or self.domain)
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
    return base.Predictions(np.asarray(score), amap)

  def predict_images(self, images, class_name, batch_size=8, entry=None,
                     desc="predict"):
    return runner.batched(
        [_resize_uint8(im, self.image_size) for im in images],
        self.image_size, batch_size,
        lambda chunk: self.predict_pixels(
            prepare_images(np.stack(chunk), self.image_size), class_name),
        desc)

  def map_to_image(self, amap, hw):
    return overlay.resize_map(amap, hw)

  # ---- datasets ----------------------------------------------------------
  def run_facts(self) -> dict:
    return {"method": self.method, "producer_smoothing":
            f"MoECLIP {self.domain} blur on the patch grid"}

  def eval_runs(self, records, all_records, batch_size=8, map_size=None):
    del all_records
    names = rec.class_names(records)
    context = {"text": jnp.stack([self.text_features(c) for c in names])}
    yield runner.run_method(self, self.params, context, records,
                            self.preprocess, batch_size, map_size), {}

  # ---- export ------------------------------------------------------------
  def export_fn(self, class_names, calibration=None) -> export_lib.ExportSpec:
    """f(params, pixels f32[b, S, S, 3], text f32[D, 2]) -> (map, score);
    text.npz holds [D, 2] per exported class ("object" too)."""
    del calibration
    flat, treedef = jax.tree.flatten(self.params)
    names = list(dict.fromkeys([GENERIC_CLASS, *class_names]))
    texts = {n: np.asarray(self.text_features(n)) for n in names}
    domain = self.domain

    def fn(flat_params, pixels, text):
      params = jax.tree.unflatten(treedef, flat_params)
      return self._forward_impl(params, pixels, text, domain)

    return export_lib.ExportSpec(
        method=self.method, fn=fn, params=flat, image_size=self.image_size,
        preprocess=self.preprocess, class_inputs={"text": texts},
        table_file="text.npz", default_class=GENERIC_CLASS,
        meta={"domain": domain, "mean": image_utils.CLIP_MEAN.tolist(),
              "std": image_utils.CLIP_STD.tolist()},
        checkpoint_dir=self.checkpoint_dir)


def _fuse(maps_n, scores_n, domain):
  return maps.fuse_image_scores(maps_n, scores_n, domain)


def _one_class(class_names) -> str:
  """A class name (str) or a list of one repeated name -> that name."""
  if class_names is None:
    return GENERIC_CLASS
  if isinstance(class_names, str):
    return class_names
  names = set(class_names)
  if len(names) != 1:
    raise ValueError(f"one class per predict call, got {sorted(names)}")
  return names.pop()


def _resize_uint8(image: np.ndarray, size: int) -> np.ndarray:
  """uint8[H, W, 3] -> uint8[size, size, 3] (bicubic, as the detector)."""
  if image.shape[:2] == (size, size):
    return image
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return np.asarray(Image.fromarray(image).resize((size, size),
                                                  Image.BICUBIC))
