"""InCTRL behind `load_detector` and every verb (the `Detector` protocol).

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

Verbs: dataset runs (`eval`, `calibrate --dataset`) draw every class's
prompts from its normal TRAIN images (or `--prompts`, see prompt_sets.py),
encode them once per draw, and score every test image against its own
class's prompts and text prior inside one jitted `predict_fn` (mixed-class
batches, the trainer's seam); `--prompt-draws N` gives N runs (draw d: seed
+ d). Loose images (`predict`, `calibrate --normal`) use `set_prompts` +
`predict` with the prompts of `--prompts`. image_score = (s_h + s_p) / 2,
anomaly_map = M_p (bilinear).
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from moeclip_jax.checkpoint import params as ckpt_params
from moeclip_jax.data import records as rec
from moeclip_jax.data import transforms
from moeclip_jax.inference import export as export_lib
from moeclip_jax.inference import runner
from moeclip_jax.methods import base
from moeclip_jax.methods.inctrl import fewshot, prompt_sets
from moeclip_jax.methods.inctrl import method as inctrl_method
from moeclip_jax.methods.inctrl import model as inctrl_model
from moeclip_jax.methods.inctrl import text as inctrl_text
from moeclip_jax.models import clip_config, tokenize
from moeclip_jax.utils import console

log = logging.getLogger("moeclip_jax.inctrl")
DEFAULT_SHOTS = 2
PROMPT_SET_FILE = "prompt_set.npz"
GENERIC_CLASS = "object"

Features = dict[str, np.ndarray]


class InCTRLDetector(base.DetectorBase):
  """Few-shot InCTRL scoring around a model and its variables.

  Args:
    model: an `InCTRL` with its CLIP towers.
    variables: {params, batch_stats}.
    tokenizer: CLIP tokenizer for the text prior.
    batch_size: images per forward when encoding.
    checkpoint_dir: the folder it was loaded from (its config.json's
      `shots` is the default K).
    shots, prompt_seed, prompts, prompt_draws, save_prompts: the verbs'
      options (see `cli_options`).
  """

  method = "inctrl"
  accepted_options = frozenset({"shots", "prompt_seed", "prompts",
                                "prompt_draws", "save_prompts"})

  def __init__(self, model: inctrl_model.InCTRL, variables, tokenizer,
               *, batch_size: int = 32, checkpoint_dir=None,
               shots: int | None = None, prompt_seed: int | None = None,
               prompts: Sequence[str] | None = None,
               prompt_draws: int | None = None,
               save_prompts: str | None = None):
    self.model = model
    self.variables = variables
    self.batch_size = batch_size
    self.image_size = model.clip_config.vision.image_size
    s = self.image_size
    self.preprocess = {"preset": "inctrl", "size": s, "crop": s}
    self.checkpoint_dir = pathlib.Path(checkpoint_dir or ".")
    self._configure(shots, prompt_seed, prompts, prompt_draws, save_prompts,
                    checkpoint_dir)
    self.text_cache = inctrl_text.TextFeatureCache.from_model(
        model, variables["params"], tokenizer)
    self._encode = jax.jit(lambda v, x: model.apply(
        v, x, method=inctrl_model.InCTRL.encode_images))
    self._score = jax.jit(lambda v, q, p, t: model.apply(
        v, q, p, t, method=inctrl_model.InCTRL.score_features))
    self.prompt_features: Features | None = None

  def _configure(self, shots, prompt_seed, prompts, prompt_draws,
                 save_prompts, checkpoint_dir) -> None:
    self.shots = shots or default_shots(checkpoint_dir)
    if self.shots < 1:
      raise ValueError(f"--shots must be >= 1, got {self.shots}")
    self.seed = prompt_seed or 0
    self.save_prompts = save_prompts
    self.source = prompt_sets.PromptSource(prompts, self.preprocess,
                                           self.shots, self.seed)
    self.source.check_shots(explicit=shots is not None)
    self.num_draws = prompt_draws or 1
    if self.num_draws < 1:
      raise ValueError(f"--prompt-draws must be >= 1, got {self.num_draws}")
    if self.num_draws > 1 and self.source.only_fixed_sets:
      raise ValueError("--prompt-draws > 1 with saved prompt sets only: a "
                       "saved set is one fixed draw")
    self.prompt_set = None  # the loose-image path's set (begin_predict)
    self._store = None  # serve: every class's prompts (`prompt_store`)

  @classmethod
  def cli_options(cls) -> Sequence[base.Option]:
    return (
        base.Option("--shots", "K normal prompt images (default: the "
                    "checkpoint's `shots`, else 2; export: K the exported "
                    "program takes)", kwargs={"type": int}),
        base.Option("--prompt-seed", "seed of the prompt draw (draw d uses "
                    "seed + d; default 0)", kwargs={"type": int}),
        base.Option("--prompts", "normal prompt images / folders (K drawn "
                    "from them), or saved prompt sets (.npz); required for "
                    "InCTRL's predict", kwargs={"nargs": "+"}),
        base.Option("--prompt-draws", "evaluate N prompt draws; "
                    "metrics.json holds their mean, `std` and every draw",
                    verbs=("eval", "benchmark"), kwargs={"type": int}),
        base.Option("--save-prompts", "folder to save every drawn prompt "
                    "set (.npz)", verbs=("eval",)),
    )

  def prepare_pixels(self, images) -> np.ndarray:
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
    pixels = self.prepare_pixels(images)
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

  def predict_maps(self, images, class_names=None) -> base.Predictions:
    """image_score [N] and anomaly_map [N, H, W] at the input size.

    InCTRL's prompts depend on the class name only (`set_prompts` first).
    """
    class_name = class_names if isinstance(class_names, str) else (
        GENERIC_CLASS if class_names is None else _single(class_names))
    images = np.asarray(images)
    if images.ndim == 3:
      images = images[None]
    scores, maps = self.score(self.encode(images), class_name)
    heat = inctrl_model.patch_map_to_image(jnp.asarray(maps),
                                           images.shape[1:3])
    return base.Predictions(scores, np.asarray(heat))

  def run_facts(self) -> dict:
    return {"method": "inctrl", "shots": self.shots,
            "prompt_seed": self.seed, "prompt_draws": self.num_draws,
            "producer_smoothing": "none (M_p bilinear from the patch grid)"}

  # ---- the trainer seam ----
  def predict_fn(self, variables, batch, context):
    """Query features -> scores against each image's class prompts.

    context: prompts {layer_tokens [C, K, L, T, W], pooled [C, K, D]},
    text [C, 2, D].
    """
    return inctrl_method.predict_with_class_prompts(
        self.model, variables, batch["image"], batch["class_id"],
        context)

  def _normalise(self, images_uint8) -> np.ndarray:
    cfg = transforms.get_preprocess(self.preprocess)
    return np.stack([transforms.normalize(im, cfg) for im in images_uint8])

  def _context(self, sets: dict[str, fewshot.PromptSet], class_names):
    feats = [self.encode(self._normalise(sets[c].images))
             for c in class_names]
    prompts = {k: jnp.asarray(np.stack([f[k] for f in feats]))
               for k in feats[0]}  # [C, K, ...]
    text = jnp.asarray(np.stack([np.asarray(self.text_cache(c))
                                 for c in class_names]))  # [C, 2, D]
    return {"prompts": prompts, "text": text}

  def _save(self, ps: fewshot.PromptSet) -> None:
    folder = pathlib.Path(self.save_prompts)
    folder.mkdir(parents=True, exist_ok=True)
    fewshot.save_prompt_set(
        folder / f"{ps.class_name}_k{ps.shots}_seed{ps.seed}.npz", ps)

  def eval_runs(self, records, all_records, batch_size=8, map_size=None):
    names = rec.class_names(records)
    for d in range(self.num_draws):
      sets = {c: self.source.draw(c, d, all_records) for c in names}
      if self.save_prompts:
        for ps in sets.values():
          self._save(ps)
      pred = runner.run_method(
          self, self.variables, self._context(sets, names), records,
          self.preprocess, batch_size, map_size,
          desc=f"eval draw {d}" if self.num_draws > 1 else "eval")
      pred["prompt_sets"] = sets
      yield pred, {"draw": d, "seed": self.seed + d,
                   "prompts": {c: prompt_sets.describe(ps)
                               for c, ps in sets.items()}}

  # ---- loose images ----
  def default_class_name(self) -> str:
    """A single saved prompt set's class, else the generic 'object'."""
    if len(self.source.sets) == 1 and not self.source.pool:
      return next(iter(self.source.sets))
    return "object"

  def begin_predict(self, paths, class_name, entry, out=None) -> dict:
    """Draws the prompts from --prompts and hands them to the detector."""
    del paths
    if not self.source.given:
      raise ValueError("InCTRL needs --prompts (K normal images of the "
                       "class, a folder of them, or a saved prompt set "
                       ".npz) to score images")
    ps = self.source.draw(class_name, 0)
    self.set_prompts(self._normalise(ps.images))
    self.prompt_set = ps
    facts = prompt_sets.describe(ps)
    stored = (entry or {}).get("prompts")
    if stored and stored.get("fingerprint") != facts["fingerprint"]:
      log.warning("predict: calibration of %r used other prompt images "
                  "(%s); its threshold may not fit these prompts",
                  class_name, stored.get("paths"))
      console.console().print("warning: the calibration used other prompt "
                             "images; its threshold may not fit")
    if out is not None:
      fewshot.save_prompt_set(pathlib.Path(out) / PROMPT_SET_FILE, ps)
    return {"prompts": facts}

  def begin_images(self, images, class_name, entry, batch_size) -> None:
    if self.prompt_set is None:
      self.begin_predict(None, class_name, None)

  def predict_pixels(self, pixels, class_name, entry=None):
    del entry
    out = self.predict_maps(pixels, class_name)
    return {"anomaly_map": out.anomaly_map, "image_score": out.image_score}

  # ---- serving: one prompt set per class, uploaded or from --prompts ----
  @property
  def prompt_shots(self) -> int:
    return self.shots

  @property
  def prompt_store(self) -> prompt_sets.PromptStore:
    if self._store is None:
      self._store = prompt_sets.PromptStore(
          self.source, self.shots,
          lambda images: self.encode(self._normalise(images)))
    return self._store

  def serving_classes(self):
    store = self.prompt_store
    return None if store.has_pool() else store.classes()

  def not_ready(self, class_name, entry):
    del entry
    if self.prompt_store.available(class_name):
      return None
    return ("prompts_missing", f"class {class_name!r}: no InCTRL prompt "
            "set; start the server with --prompts or POST K normal images "
            "to /v1/prompts")

  def select_class(self, class_name, entry, warm_up=False):
    store = self.prompt_store
    if warm_up and not store.available(class_name):
      ps, feats = store.blank(self.image_size)
    else:
      ps, feats = store.get(class_name)
    self.prompt_features, self.prompt_set = feats, ps
    return entry

  def add_prompts(self, images, names, class_name, seed) -> dict:
    seed = self.seed if seed is None else seed  # --prompt-seed
    ps = self.prompt_store.upload(images, names, class_name, seed)
    if class_name:
      self.prompt_store.get(class_name)  # encodes now, not at a request
    return prompt_sets.describe(ps)

  def calibration_extras(self, pred, cid):
    if pred is not None and "prompt_sets" in pred:
      name = pred["class_names"][cid]
      return {"prompts": prompt_sets.describe(pred["prompt_sets"][name])}
    if self.prompt_set is not None:
      return {"prompts": prompt_sets.describe(self.prompt_set)}
    return {}

  def export_fn(self, class_names, calibration=None) -> export_lib.ExportSpec:
    """f(params, pixels f32[b, S, S, 3], prompts f32[K, S, S, 3], text
    f32[2, D]) -> (M_p f32[b, S, S], score f32[b]); K is fixed at export
    (--shots / the checkpoint's `shots`); text.npz holds [t_n, t_a] per
    exported class ("object" too)."""
    del calibration
    flat, treedef = jax.tree.flatten(self.variables)
    names = list(dict.fromkeys([GENERIC_CLASS, *class_names]))
    texts = {n: np.asarray(self.text_cache(n), np.float32) for n in names}
    s, model = self.image_size, self.model

    def fn(flat_params, pixels, prompts, text):
      variables = jax.tree.unflatten(treedef, flat_params)
      encode = lambda x: model.apply(
          variables, x, method=inctrl_model.InCTRL.encode_images)
      score, aux = model.apply(variables, encode(pixels), encode(prompts),
                               text, method=inctrl_model.InCTRL.score_features)
      return inctrl_model.patch_map_to_image(aux["patch_map"], s), score

    prompts = jax.ShapeDtypeStruct((self.shots, s, s, 3), jnp.float32)
    return export_lib.ExportSpec(
        method=self.method, fn=fn, params=flat, image_size=s,
        preprocess=self.preprocess, class_inputs={"text": texts},
        table_file="text.npz", default_class=GENERIC_CLASS,
        runtime_inputs={"prompts": prompts}, meta={"shots": self.shots},
        checkpoint_dir=self.checkpoint_dir)

  @classmethod
  def load(cls, checkpoint_dir, **kwargs) -> "InCTRLDetector":
    """From a `convert inctrl-official` output or a training export.

    Both hold params/ = the variables {params, batch_stats} (towers
    included) and a config.json {"method": "inctrl", "clip", "inctrl"};
    the generic trainer writes `<workdir>/detector` with
    `InCTRLMethod.checkpoint_config()` as that config.json.
    """
    return load(checkpoint_dir, **kwargs)


def model_from_config(cfg: dict[str, Any],
                      dtype: str | None = None) -> inctrl_model.InCTRL:
  """InCTRL from a checkpoint's config.json dict (towers in `dtype` when
  given, else the config's; models/precision.py)."""
  if cfg.get("method") != "inctrl":
    raise ValueError(f"not an InCTRL checkpoint (method={cfg.get('method')})")
  extra = cfg.get("inctrl", {})
  ccfg = clip_config.CLIPConfig.from_dict(cfg["clip"])
  if dtype is not None:
    ccfg = ccfg.replace(dtype=dtype)
  return inctrl_model.InCTRL(
      clip_config=ccfg,
      feature_layers=tuple(extra.get("feature_layers",
                                     inctrl_model.DEFAULT_LAYERS)),
      adapter_reduction=extra.get("adapter_reduction", 4),
      text_scale=extra.get("text_scale", inctrl_model.TEXT_SCALE))


def load_variables(checkpoint_dir, dtype: str | None = None
                   ) -> tuple[inctrl_model.InCTRL, dict]:
  """(model, {params, batch_stats}) from a converted checkpoint folder."""
  path = pathlib.Path(checkpoint_dir)
  config_file = path / "config.json"
  if not config_file.is_file():
    raise FileNotFoundError(f"{config_file}: missing (not a checkpoint?)")
  model = model_from_config(ckpt_params.read_json(config_file), dtype)
  abstract = jax.eval_shape(
      lambda r: inctrl_model.init_variables(model, r), jax.random.key(0))
  return model, ckpt_params.read_params_checkpoint(path, abstract)


def load(checkpoint_dir, **kwargs) -> InCTRLDetector:
  """An `InCTRLDetector` from a converted or trained checkpoint folder."""
  InCTRLDetector.check_options(checkpoint_dir, {
      k: v for k, v in kwargs.items() if k != "batch_size"})
  model, variables = load_variables(checkpoint_dir, kwargs.pop("dtype", None))
  tok_dir = pathlib.Path(checkpoint_dir) / "tokenizer"
  tokenizer = tokenize.load_tokenizer(tok_dir if tok_dir.is_dir() else None)
  return InCTRLDetector(model, variables, tokenizer,
                        checkpoint_dir=checkpoint_dir, **kwargs)


def default_shots(checkpoint_dir) -> int:
  """K from the checkpoint's config.json (`shots`), else 2."""
  if checkpoint_dir is None:
    return DEFAULT_SHOTS
  path = pathlib.Path(checkpoint_dir) / ckpt_params.CONFIG_FILE
  cfg = ckpt_params.read_json(path) if path.is_file() else {}
  shots = cfg.get("shots") or cfg.get("inctrl", {}).get("shots")
  return int(shots or DEFAULT_SHOTS)


def _single(class_names) -> str:
  names = set(class_names)
  if len(names) != 1:
    raise ValueError(f"one class per predict call, got {sorted(names)}")
  return names.pop()
