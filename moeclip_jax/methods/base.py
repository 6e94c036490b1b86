"""The two seams every method implements: `Method` (training) and
`Detector` (inference).

Training: a method object exposes (names the trainer relies on):

  name                     "moeclip", "inctrl", ...
  preprocess               data preprocessing preset/mapping for the pipeline
  image_size               model input side
  trainable_patterns       regexes (optim/masks.py) of trainable leaves
  frozen_patterns          regexes of frozen leaves (coverage check)
  init_fn(rng)             boxed params (logical axes) for sharded init
  load_pretrained(params)  params with the converted backbone merged in
  make_context(params, class_names) -> arrays the steps need (text caches)
  loss_fn(params, batch, context, rng) -> (loss, named metrics)
  predict_fn(params, batch, context) -> {"anomaly_map" [B,H,W], "image_score" [B]}
  checkpoint_config()      JSON-able dict written to config.json on export

Optional (the trainer uses a default when absent):

  state_patterns           regexes of state leaves (masks.STATE: not trained,
                           checkpointed; loss_fn returns their new values as
                           metrics["updated_state"], a partial params tree)
  make_tx(param_labels)    the optimizer (default: optimizers.make_tx over
                           config.optim)
  batch_keys               batch fields the step receives (default
                           loop.STEP_KEYS: image, mask, label, class_id)
  make_train_data(config, batch_multiple)
                           the training data object (default train.data.
                           TrainData): next(), state(), restore(s),
                           class_names, holdout, holdout_loader(),
                           eval_batch_size
  domain                   "industrial" | "medical" (metrics protocol)

Inference: `Detector` (methods/<m>/detector.py, listed in
registry.DETECTORS) is what `load_detector(dir, **method_options)` returns
and what every verb (eval, predict, calibrate, export) calls; the verbs name
no method. See the `Detector` protocol below for its members.

Methods never import the trainer or the verbs.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import numpy as np

from moeclip_jax.inference import decision, runner
from moeclip_jax.models import precision


class Method(Protocol):
  name: str
  preprocess: Any
  image_size: int
  trainable_patterns: tuple[str, ...]
  frozen_patterns: tuple[str, ...]

  def init_fn(self, rng): ...
  def load_pretrained(self, params): ...
  def make_context(self, params, class_names): ...
  def loss_fn(self, params, batch, context, rng): ...
  def predict_fn(self, params, batch, context): ...
  def checkpoint_config(self) -> dict: ...


# ---- inference ---------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Option:
  """One method flag of the verbs (`cli_options()`): `--flag` -> `dest`.

  `verbs`: the verbs that take it; `kwargs`: argparse's (type, nargs,
  choices, ...). Every option defaults to None (= not given).
  """

  flag: str
  help: str
  verbs: tuple[str, ...] = ("eval", "predict", "calibrate", "export",
                            "serve", "benchmark")
  kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def dest(self) -> str:
    return self.flag.lstrip("-").replace("-", "_")


# Flags every detector takes (one argument group, "every method").
COMMON_OPTIONS = (
    Option("--dtype", "compute dtype of the model: auto (bfloat16 on TPU / "
           "GPU, float32 on CPU; docs/performance.md) or a concrete one; "
           "default: the checkpoint's config.json",
           kwargs={"choices": precision.CHOICES}),
)
COMMON_DESTS = frozenset(o.dest for o in COMMON_OPTIONS)


class Predictions(Mapping):
  """What `Detector.predict` returns, for a batch of B images.

  image_score  float32[B], the method's own image score (before any
               calibration fusion)
  anomaly_map  float32[B, H, W] at the input images' size (a list of
               [H_i, W_i] maps when the sizes differ)
  level_maps   optional per-level maps {name: [B, H, W]} (AnomalyMoE's
               patch / global / component)
  extras       optional method outputs (e.g. "component_masks")

  Dict access (`out["anomaly_map"]`, `out["image_score"]`, extras by name)
  is kept for the earlier dict-returning API.
  """

  def __init__(self, image_score, anomaly_map, level_maps=None, **extras):
    self.image_score = np.asarray(image_score)
    self.anomaly_map = anomaly_map
    self.level_maps = dict(level_maps or {})
    self.extras = extras

  def _fields(self) -> dict:
    return {"image_score": self.image_score, "anomaly_map": self.anomaly_map,
            **self.extras}

  def __getitem__(self, key):
    return self._fields()[key]

  def __iter__(self):
    return iter(self._fields())

  def __len__(self):
    return len(self._fields())


class Detector(Protocol):
  """A loaded checkpoint of one method, as every verb uses it.

  Attributes:
    method: "moeclip" | "inctrl" | "anomalymoe" (config.json's "method").
    image_size: the model's input side S.
    preprocess: the data-pipeline preset of its input (`data.transforms`).
    checkpoint_dir: the folder it was loaded from.
    domain: "industrial" | "medical" | None (metrics protocol).
    default_protocol: the eval protocol used when none is given.
    score_fusion: None, or fn(normalised maps [N, H, W], normalised scores
      [N]) -> final scores (MoECLIP's domain rule) used with calibration.
  """

  method: str
  image_size: int
  preprocess: Any
  checkpoint_dir: pathlib.Path
  domain: str | None
  default_protocol: str
  score_fusion: Callable | None

  @classmethod
  def load(cls, checkpoint_dir, **method_options) -> "Detector": ...

  @classmethod
  def cli_options(cls) -> Sequence[Option]:
    """The method's own flags, with their help (InCTRL --shots, ...)."""

  def predict(self, images, class_names=None, *, class_name=None,
              threshold="auto", tile=None, batch_size: int = 8,
              **method_options):
    """Two forms (`DetectorBase.predict`): with `class_name=` (or paths /
    PIL images) -> [inference.decision.Decision], one per image; else
    uint8 [B, H, W, 3] -> raw `Predictions` (`predict_maps`)."""

  def predict_maps(self, images, class_names=None, **method_options
                   ) -> Predictions:
    """uint8 [B, H, W, 3] (any size; or a list) -> raw maps at the input
    size and the method's own image scores (no calibration)."""

  def decide(self, images, class_name: str | None = None, threshold="auto",
             tile=None, batch_size: int = 8) -> list:
    """Paths / PIL images / uint8 arrays -> [Decision] with the
    checkpoint's calibration (`inference/decision.py`)."""

  def predict_images(self, images: Sequence[np.ndarray], class_name: str,
                     batch_size: int = 8, entry: dict | None = None,
                     desc: str | None = "predict"
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Raw maps float32[N, S, S] at the model size and scores float32[N]
    of uint8 images of one class, in fixed-size jitted batches; `entry`:
    the class's calibration entry."""

  def map_to_image(self, amap: np.ndarray, hw) -> np.ndarray:
    """A model-size map [S, S] -> the original image's [H, W]."""

  def eval_runs(self, records, all_records, batch_size: int = 8,
                map_size: int | None = None
                ) -> Iterator[tuple[dict, dict]]:
    """Dataset runs: (runner.predict_dataset output + "class_names", run
    facts); one run per InCTRL prompt draw, one otherwise."""

  def begin_predict(self, paths, class_name: str, entry: dict | None,
                    out=None) -> dict:
    """Prepares loose-image prediction of one class (InCTRL prompts,
    AnomalyMoE statistics); returns facts for the summary."""

  def calibration_entry(self, images, class_name: str,
                        batch_size: int = 8) -> dict:
    """Statistics `predict_images` needs, from normal images (calibrate)."""

  def calibration_extras(self, pred: dict | None, cid: int | None) -> dict:
    """Per-class facts stored beside the thresholds."""

  def run_facts(self) -> dict:
    """Facts recorded in protocol.json."""

  def default_class_name(self) -> str:
    """The class `predict` uses when none is given."""

  def export_fn(self, class_names: Sequence[str], calibration: dict | None):
    """The `inference.export.ExportSpec` that `export` lowers."""

  # serving (`moeclip-jax serve`): per-class state between requests.
  prompt_shots: int | None
  """K normal reference images `POST /v1/prompts` takes (None: none)."""

  def serving_classes(self) -> list[str] | None:
    """Classes the checkpoint / its reference sets know; None: any class
    can be scored (e.g. an InCTRL prompt pool)."""

  def not_ready(self, class_name: str, entry: dict | None
                ) -> tuple[str, str] | None:
    """(stable code, message) when `class_name` cannot be scored yet (no
    prompt set, no class statistics), None when it can."""

  def select_class(self, class_name: str, entry: dict | None,
                   warm_up: bool = False) -> dict | None:
    """Before a batch of `class_name` (compute thread): installs the
    class's state; returns the entry `predict_images` gets (the reply's
    score still uses the calibration entry).
    `warm_up`: the class may not be ready; install stand-ins that compile
    the same shapes."""

  def add_prompts(self, images: Sequence[np.ndarray], names: Sequence[str],
                  class_name: str | None, seed: int | None) -> dict:
    """Registers uploaded reference images (all classes when `class_name`
    is None; `seed` of the draw, None: the detector's); returns facts of
    the drawn set (at least "shots", "seed", "paths")."""


class DetectorBase:
  """Defaults shared by the detectors (each overrides what differs)."""

  method = "?"
  default_protocol = "raw"
  score_fusion = None
  domain = None
  accepted_options: frozenset = frozenset()
  checkpoint_dir: pathlib.Path
  preprocess: Any = None
  image_size = 0

  @classmethod
  def cli_options(cls) -> Sequence[Option]:
    return ()

  # ---- the Python API: decisions, or raw maps ----
  def predict(self, images, class_names=None, *, class_name=None,
              threshold="auto", tile=None, batch_size: int = 8,
              **method_options):
    """Decisions for images of one class, or the raw maps.

      det = moeclip_jax.load_detector(checkpoint_dir)
      preds = det.predict(["a.png", pil_image, uint8_array],
                          class_name="bottle")
      preds[0].score, preds[0].is_anomalous, preds[0].threshold
      preds[0].anomaly_map   # float32[H, W] at that image's size
      preds[0].mask          # bool[H, W]: anomaly_map >= pixel_threshold

    The decision form (`class_name=` given, or any input a path or a PIL
    image, or `threshold` / `tile` given) returns one
    `inference.decision.Decision` per image, with the image threshold and
    pixel threshold that `moeclip-jax calibrate` stored in the checkpoint
    (calibration.json). Without a calibration entry for the class (and no
    other entry to fall back to) it raises ValueError saying how to
    calibrate, unless `threshold` is a number: then the score is the
    detector's own image score and the mask uses the per-image min-max
    map at `calibration.DEFAULT_MAP_THRESHOLD`. A class without its own
    entry that falls back to another class's is warned about (naming
    both). `tile`: "SIZE[,OVERLAP]" or a `tiling.TileSpec` (as `predict
    --tile`). Method options (domain, shots, ...) are given to
    `load_detector`.

    The raw form (uint8 arrays and `class_names` positional or keyword,
    the earlier API) returns `Predictions` (`predict_maps`): the maps at
    the input size and the method's own image scores, uncalibrated.
    """
    if (class_name is None and threshold == "auto" and tile is None
        and not decision.is_undecoded(images)):
      return self.predict_maps(images, class_names, **method_options)
    if class_names is not None or method_options:
      given = sorted(method_options) + (["class_names"] if class_names
                                        is not None else [])
      raise TypeError(f"predict(class_name=...) takes no {', '.join(given)}"
                      " (method options go to load_detector)")
    return self.decide(images, class_name, threshold, tile, batch_size)

  def decide(self, images, class_name=None, threshold="auto", tile=None,
             batch_size: int = 8) -> list:
    """[Decision] of images of one class (`predict`'s decision form)."""
    return decision.decide_images(self, images, class_name, threshold,
                                  batch_size, tile)

  def predict_maps(self, images, class_names=None, **method_options
                   ) -> Predictions:
    """Default raw form: `predict_images` + `map_to_image` per image."""
    del method_options
    class_name = (class_names if isinstance(class_names, str) or
                  class_names is None else class_names[0])
    images = [np.asarray(im) for im in images]
    maps, scores = self.predict_images(
        images, class_name or self.default_class_name(), desc=None)
    full = [self.map_to_image(m, im.shape[:2]) for m, im in zip(maps, images)]
    same = len({f.shape for f in full}) == 1
    return Predictions(scores, np.stack(full) if same else full)

  @classmethod
  def check_options(cls, checkpoint_dir, options: Mapping[str, Any]) -> None:
    """ValueError naming the given flags this method does not use."""
    accepted = cls.accepted_options | COMMON_DESTS
    bad = sorted("--" + k.replace("_", "-") for k, v in options.items()
                 if v is not None and k not in accepted)
    if bad:
      raise ValueError(f"{checkpoint_dir}: {', '.join(bad)} not used by "
                       f"{cls.method} detectors (see docs/cli.md, 'Methods')")

  def run_facts(self) -> dict:
    return {"method": self.method}

  def default_class_name(self) -> str:
    return "object"  # the generic noun / class

  def begin_predict(self, paths, class_name, entry, out=None) -> dict:
    del paths, class_name, entry, out
    return {}

  def map_to_image(self, amap, hw):
    return runner.map_to_image(amap, hw, self.preprocess)

  def calibration_entry(self, images, class_name, batch_size=8) -> dict:
    del images, class_name, batch_size
    return {}

  def calibration_extras(self, pred, cid) -> dict:
    del pred, cid
    return {}

  def predict_images(self, images, class_name, batch_size=8, entry=None,
                     desc="predict"):
    """`runner.batched` over `predict_pixels` (the method's forward)."""
    self.begin_images(images, class_name, entry, batch_size)
    return runner.batched(
        images, self.image_size, batch_size,
        lambda chunk: self.predict_pixels(
            runner.prepare_images(chunk, self.preprocess), class_name,
            entry), desc)

  def begin_images(self, images, class_name, entry, batch_size) -> None:
    """Hook before `predict_images` scores `images` (default: nothing)."""
    del images, class_name, entry, batch_size

  def predict_pixels(self, pixels, class_name, entry):
    """Normalised float32[B, S, S, 3] -> {"anomaly_map" [B, S, S],
    "image_score" [B]} (model size)."""
    raise NotImplementedError

  # ---- serving: no per-class state by default ----
  prompt_shots = None

  def serving_classes(self) -> list[str] | None:
    return list(getattr(self, "class_names", None) or ())

  def not_ready(self, class_name, entry):
    del class_name, entry
    return None

  def select_class(self, class_name, entry, warm_up=False):
    del class_name, warm_up
    return entry

  def add_prompts(self, images, names, class_name, seed) -> dict:
    del images, names, class_name, seed
    raise ValueError(f"{self.method} detectors take no prompt images")


def dataclass_from_config(cls, cfg: Any):
  """A frozen dataclass from a ConfigDict/mapping; unknown keys fail loudly."""
  raw = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(raw) - known)
  if unknown:
    raise ValueError(f"{cls.__name__}: unknown config keys {unknown}")
  for key, value in raw.items():
    if isinstance(value, list):
      raw[key] = tuple(value)
  return cls(**raw)
