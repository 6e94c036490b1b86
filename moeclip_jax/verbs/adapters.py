"""Per-method adapters: what eval / predict / calibrate / export need.

`load_detector` picks the detector class from the checkpoint's config.json;
`make_adapter` wraps it in one small class per method with one interface:

  eval_runs(records, all_records, batch_size, map_size)
      -> iterator of (predict_dataset output, run facts); one run per
         prompt draw (InCTRL), one run otherwise. Every run goes through
         the trainer's `predict_fn(params, batch, context)` seam
         (`train.evaluator.predict_dataset`), so metrics.json has the same
         keys for every method;
  begin_predict(paths, class_name, entry, out)  -> facts for the summary
  predict_images(images, class_name, batch_size, entry)
      -> raw maps float[N, S, S] (model size), image scores float[N];
  map_to_image(map [S, S], (H, W)) -> the map on the input image
      (inverse of the preprocessing's resize + centre crop).

Method flags (`Options`) that a method does not use are errors, never
silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Iterator, Sequence

import numpy as np

from moeclip_jax.data import transforms
from moeclip_jax.verbs import overlay

# CLI spelling of every method option.
FLAG_NAMES = {
    "domain": "--domain", "dataset_prompts": "--dataset-prompts",
    "shots": "--shots", "prompt_seed": "--prompt-seed",
    "prompts": "--prompts", "prompt_draws": "--prompt-draws",
    "save_prompts": "--save-prompts", "minmax": "--minmax",
}


@dataclasses.dataclass
class Options:
  """Method-specific options; None = not given on the command line."""

  domain: str | None = None  # MoECLIP
  dataset_prompts: str | None = None  # MoECLIP
  shots: int | None = None  # InCTRL
  prompt_seed: int | None = None  # InCTRL
  prompts: Sequence[str] | None = None  # InCTRL
  prompt_draws: int | None = None  # InCTRL (eval)
  save_prompts: str | None = None  # InCTRL (eval)
  minmax: str | None = None  # AnomalyMoE (eval)

  @classmethod
  def from_args(cls, args) -> "Options":
    return cls(**{f.name: getattr(args, f.name, None)
                  for f in dataclasses.fields(cls)})


def add_method_flags(parser, verb: str) -> None:
  """The InCTRL / AnomalyMoE flags of `verb` (MoECLIP's are per verb)."""
  group = parser.add_argument_group(
      "InCTRL (few-shot prompts; errors for other methods)")
  group.add_argument("--shots", type=int, default=None,
                     help="K normal prompt images (default: the "
                          "checkpoint's `shots`, else 2)")
  group.add_argument("--prompt-seed", type=int, default=None,
                     help="seed of the prompt draw (draw d uses seed + d; "
                          "default 0)")
  group.add_argument("--prompts", nargs="+", default=None,
                     help="normal prompt images / folders (K drawn from "
                          "them), or saved prompt sets (.npz)"
                          + ("; required for InCTRL" if verb == "predict"
                             else ""))
  if verb == "eval":
    group.add_argument("--prompt-draws", type=int, default=None,
                       help="evaluate N prompt draws; metrics.json holds "
                            "their mean, `std` and every draw")
    group.add_argument("--save-prompts", default=None,
                       help="folder to save every drawn prompt set (.npz)")
    amoe = parser.add_argument_group("AnomalyMoE")
    amoe.add_argument("--minmax", choices=("auto", "test"), default=None,
                      help="per-class map statistics: 'auto' (the "
                           "checkpoint's, else the test set's) or 'test' "
                           "(official test.py: the class's test images)")


def checkpoint_config(checkpoint_dir) -> dict:
  path = pathlib.Path(checkpoint_dir) / "config.json"
  return json.loads(path.read_text()) if path.is_file() else {}


def map_to_image(amap: np.ndarray, hw, preprocess) -> np.ndarray:
  """float[S, S] on the model input -> float[H, W] on the original image.

  Undoes `transforms.resize_image`: the map is put back at the centre
  crop's place (border = the crop's edge values) and resized.
  """
  cfg = transforms.get_preprocess(preprocess)
  h, w = hw
  if cfg.resize_mode == "square":
    new_h = new_w = cfg.size
  else:
    short, long = min(w, h), max(w, h)
    new_long = int(cfg.size * long / short)
    new_w, new_h = (cfg.size, new_long) if w <= h else (new_long, cfg.size)
  if cfg.crop:
    top = int(round((new_h - cfg.crop) / 2.0))
    left = int(round((new_w - cfg.crop) / 2.0))
    crop = overlay.resize_map(amap, (cfg.crop, cfg.crop))
    amap = np.pad(crop, ((top, new_h - cfg.crop - top),
                         (left, new_w - cfg.crop - left)), mode="edge")
  return overlay.resize_map(amap, (h, w))


def prepare_images(images: Sequence[np.ndarray], preprocess) -> np.ndarray:
  """uint8 images (any sizes) -> normalised float32[N, S, S, 3]."""
  cfg = transforms.get_preprocess(preprocess)
  if not len(images):
    s = cfg.output_size
    return np.zeros((0, s, s, 3), np.float32)
  return np.stack([transforms.normalize(transforms.resize_image(im, cfg), cfg)
                   for im in images])


def chunks(n: int, batch_size: int):
  return range(0, n, batch_size)


def pad_batch(x: np.ndarray, batch_size: int) -> np.ndarray:
  """Pads the leading axis to `batch_size` with zeros (static shapes)."""
  if len(x) == batch_size:
    return x
  pad = np.zeros((batch_size - len(x),) + x.shape[1:], x.dtype)
  return np.concatenate([x, pad])


class Adapter:
  """Base adapter; subclasses set `name`, `accepted` and the methods."""

  name = "?"
  accepted: frozenset = frozenset()
  default_protocol = "raw"
  fuses_scores = False  # calibration: MoECLIP's fused score, else as given
  preprocess: Any = None
  image_size = 0

  def __init__(self, detector, checkpoint_dir, options: Options | None):
    self.detector = detector
    self.checkpoint_dir = pathlib.Path(checkpoint_dir)
    self.options = options or Options()
    self.check_options(self.options)

  def check_options(self, options: Options) -> None:
    check_flags(type(self), options, self.checkpoint_dir)

  @property
  def domain(self) -> str | None:
    return None

  def run_facts(self) -> dict:
    """Facts recorded in protocol.json."""
    return {"method": self.name}

  def eval_runs(self, records, all_records, batch_size: int = 8,
                map_size: int | None = None
                ) -> Iterator[tuple[dict, dict]]:
    raise NotImplementedError

  def begin_predict(self, paths, class_name: str, entry: dict | None,
                    out=None) -> dict:
    del paths, class_name, entry, out
    return {}

  def predict_images(self, images, class_name: str, batch_size: int = 8,
                     entry: dict | None = None, desc: str | None = "predict"
                     ) -> tuple[np.ndarray, np.ndarray]:
    raise NotImplementedError

  def map_to_image(self, amap: np.ndarray, hw) -> np.ndarray:
    return map_to_image(amap, hw, self.preprocess)

  def calibration_entry(self, images, class_name: str,
                        batch_size: int = 8) -> dict:
    """Statistics `predict_images` needs, computed on normal images
    before they are scored (`calibrate --normal`)."""
    del images, class_name, batch_size
    return {}

  def calibration_extras(self, pred: dict | None, cid: int | None) -> dict:
    """Per-class facts stored beside the thresholds (prompts, min-max)."""
    del pred, cid
    return {}


class MoECLIPAdapter(Adapter):
  """MoECLIP: text prompts per class noun and domain (unchanged path)."""

  name = "moeclip"
  accepted = frozenset({"domain", "dataset_prompts"})
  default_protocol = "moeclip-released"
  fuses_scores = True

  def __init__(self, detector, checkpoint_dir, options=None):
    super().__init__(detector, checkpoint_dir, options)
    from moeclip_jax.methods.moeclip import maps  # pylint: disable=g-import-not-at-top
    self._domain = maps.canonical_domain(self.options.domain
                                         or detector.default_domain)
    self.image_size = detector.image_size
    self.preprocess = {"preset": "moeclip", "size": self.image_size}

  @property
  def domain(self) -> str:
    return self._domain

  def run_facts(self) -> dict:
    return {"producer_smoothing":
            f"MoECLIP {self._domain} blur on the patch grid"}

  def eval_runs(self, records, all_records, batch_size=8, map_size=None):
    from moeclip_jax.verbs import inference  # pylint: disable=g-import-not-at-top
    del all_records
    yield inference.predict_records(
        self.detector, records, self._domain, batch_size,
        self.options.dataset_prompts, map_size), {}

  def predict_images(self, images, class_name, batch_size=8, entry=None,
                     desc="predict"):
    from moeclip_jax.verbs import inference  # pylint: disable=g-import-not-at-top
    del entry
    return inference.predict_images(
        self.detector, images, class_name, self._domain,
        self.options.dataset_prompts, batch_size, desc=desc)

  def map_to_image(self, amap, hw):
    return overlay.resize_map(amap, hw)


def adapter_class(method: str | None, checkpoint_dir=None) -> type:
  """The Adapter subclass of a method name (config.json's "method")."""
  if method == "moeclip":
    return MoECLIPAdapter
  if method == "inctrl":
    from moeclip_jax.verbs import adapter_inctrl  # pylint: disable=g-import-not-at-top
    return adapter_inctrl.InCTRLAdapter
  if method == "anomalymoe":
    from moeclip_jax.verbs import adapter_anomalymoe  # pylint: disable=g-import-not-at-top
    return adapter_anomalymoe.AnomalyMoEAdapter
  raise ValueError(f"{checkpoint_dir}: method {method!r} is not served by "
                   "eval / predict / calibrate / export")


def check_flags(cls: type, options: Options | None, checkpoint_dir) -> None:
  """Raises ValueError naming the given flags `cls`'s method does not use."""
  if options is None:
    return
  given = [f.name for f in dataclasses.fields(options)
           if getattr(options, f.name) is not None]
  bad = [FLAG_NAMES[n] for n in given if n not in cls.accepted]
  if bad:
    raise ValueError(
        f"{checkpoint_dir}: {', '.join(bad)} not used by {cls.name} "
        "detectors (see docs/cli.md, 'Methods')")


def make_adapter(detector, checkpoint_dir=None,
                 options: Options | None = None) -> Adapter:
  """The adapter of a loaded detector (its `method` attribute)."""
  if isinstance(detector, Adapter):
    return detector
  checkpoint_dir = checkpoint_dir or getattr(detector, "checkpoint_dir", None)
  if checkpoint_dir is None:
    raise ValueError("make_adapter needs the checkpoint folder")
  cls = adapter_class(getattr(detector, "method", None), checkpoint_dir)
  return cls(detector, checkpoint_dir, options)
