"""Per-method preprocessing (a config, not a code path) and joint augmentation.

Presets (spec: moeclip.md §2, inctrl.md A2, anomalymoe.md B2):

| preset     | resize                          | crop | interp.  | mean/std |
|------------|---------------------------------|------|----------|----------|
| moeclip    | square 518                      | none | bicubic  | CLIP     |
| inctrl     | shorter side 240                | 240  | bicubic  | CLIP     |
| anomalymoe | square 448 (torchvision default)| 392  | bilinear | ImageNet |

Masks follow the same geometry with nearest-neighbour, then `mask != 0`.
Resizing is PIL's (what torchvision does on PIL images), so pixels match the
reference loaders. Augmentations act on the normalised image and the mask
stacked as one float32[H, W, 4] array, as MoECLIP does.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """How one method turns a decoded image into model input.

  Attributes:
    name: preset name.
    size: target size (square side, or the shorter side).
    resize_mode: "square" (resize to size x size) or "shorter" (shorter side
      to size, aspect kept, as torchvision's Resize(int)).
    crop: centre-crop side after resizing, or None.
    interpolation: image resampling ("bicubic", "bilinear").
    mask_interpolation: mask resampling (default "nearest").
    mean, std: per-channel normalisation on [0, 1] pixels.
  """

  name: str
  size: int
  resize_mode: str = "square"
  crop: Optional[int] = None
  interpolation: str = "bicubic"
  mask_interpolation: str = "nearest"
  mean: tuple[float, float, float] = CLIP_MEAN
  std: tuple[float, float, float] = CLIP_STD

  @property
  def output_size(self) -> int:
    return self.crop or self.size


PRESETS: dict[str, Preprocess] = {
    "moeclip": Preprocess("moeclip", 518),
    "inctrl": Preprocess("inctrl", 240, "shorter", crop=240),
    "anomalymoe": Preprocess(
        "anomalymoe", 448, crop=392, interpolation="bilinear",
        mean=IMAGENET_MEAN, std=IMAGENET_STD),
}


def get_preprocess(config: Any) -> Preprocess:
  """A Preprocess from a preset name, a Preprocess, or a mapping.

  A mapping (dict / ConfigDict) names a `preset` and overrides fields, e.g.
  `{"preset": "moeclip", "size": 336}`.
  """
  if isinstance(config, Preprocess):
    return config
  if isinstance(config, str):
    if config not in PRESETS:
      raise KeyError(f"unknown preprocessing {config!r}; known {list(PRESETS)}")
    return PRESETS[config]
  if isinstance(config, Mapping) or hasattr(config, "to_dict"):
    fields = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    base = get_preprocess(fields.pop("preset", "moeclip"))
    for key in ("mean", "std"):
      if key in fields:
        fields[key] = tuple(fields[key])
    return dataclasses.replace(base, **fields)
  raise TypeError(f"cannot make a Preprocess from {type(config).__name__}")


def _geometry(pil: Image.Image, cfg: Preprocess, resample) -> Image.Image:
  """Resize (+ centre crop) as torchvision does on PIL images."""
  w, h = pil.size
  if cfg.resize_mode == "square":
    new_w = new_h = cfg.size
  elif cfg.resize_mode == "shorter":
    short, long = min(w, h), max(w, h)
    new_long = int(cfg.size * long / short)
    new_w, new_h = (cfg.size, new_long) if w <= h else (new_long, cfg.size)
  else:
    raise ValueError(f"resize_mode must be square/shorter: {cfg.resize_mode}")
  pil = pil.resize((new_w, new_h), resample)
  if cfg.crop:
    top = int(round((new_h - cfg.crop) / 2.0))
    left = int(round((new_w - cfg.crop) / 2.0))
    pil = pil.crop((left, top, left + cfg.crop, top + cfg.crop))
  return pil


def resize_image(image: np.ndarray, cfg: Preprocess) -> np.ndarray:
  """uint8[H, W, 3] -> uint8[S, S, 3] (S = cfg.output_size)."""
  pil = Image.fromarray(image)
  return np.asarray(_geometry(pil, cfg, _RESAMPLE[cfg.interpolation]))


def resize_mask(mask: np.ndarray, cfg: Preprocess) -> np.ndarray:
  """uint8[H, W] or [H, W, 1] -> float32[S, S] in {0, 1}."""
  pil = Image.fromarray(np.asarray(mask).reshape(mask.shape[:2]))
  out = _geometry(pil, cfg, _RESAMPLE[cfg.mask_interpolation])
  return (np.asarray(out) != 0).astype(np.float32)


def normalize(image: np.ndarray, cfg: Preprocess) -> np.ndarray:
  """uint8[S, S, 3] -> float32[S, S, 3], (x / 255 - mean) / std."""
  x = image.astype(np.float32) / np.float32(255.0)
  mean = np.asarray(cfg.mean, np.float32)
  std = np.asarray(cfg.std, np.float32)
  return (x - mean) / std


# ---------------------------------------------------------------- augmentation


def rotate_nearest(x: np.ndarray, degrees: float) -> np.ndarray:
  """Rotates float32[H, W, C] about its centre; nearest, fill 0.

  Positive angles turn the content counter-clockwise (torchvision's sense).
  Each channel is rotated as a PIL "F" image, so values pass unchanged.
  """
  channels = [
      np.asarray(Image.fromarray(np.ascontiguousarray(x[..., c]), "F").rotate(
          degrees, resample=Image.Resampling.NEAREST, fillcolor=0.0))
      for c in range(x.shape[-1])
  ]
  return np.stack(channels, axis=-1)  # [H, W, C]


def translate(x: np.ndarray, dx: int, dy: int) -> np.ndarray:
  """Shifts float[H, W, C] by whole pixels (right/down positive), fill 0."""
  h, w = x.shape[:2]
  out = np.zeros_like(x)
  ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (
      slice(-dy, h), slice(0, h + dy))
  xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (
      slice(-dx, w), slice(0, w + dx))
  out[yd, xd] = x[ys, xs]
  return out


@dataclasses.dataclass(frozen=True)
class Augment:
  """Joint image+mask augmentation; each op applied with probability p.

  Defaults are MoECLIP's (spec §6): rotation ±30° (nearest, fill 0),
  translation up to 15 % of each side, horizontal flip, vertical flip.
  """

  p: float = 0.5
  max_degrees: float = 30.0
  max_translate: float = 0.15
  hflip: bool = True
  vflip: bool = True

  def __call__(
      self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
  ) -> tuple[np.ndarray, np.ndarray]:
    """float32[H, W, 3], float32[H, W] -> the same, transformed jointly."""
    x = np.concatenate([image, mask[..., None]], axis=-1)  # [H, W, 4]
    x = x.astype(np.float32, copy=False)
    h, w = x.shape[:2]
    if self.max_degrees and rng.random() < self.p:
      x = rotate_nearest(x, rng.uniform(-self.max_degrees, self.max_degrees))
    if self.max_translate and rng.random() < self.p:
      dx = int(round(rng.uniform(-1, 1) * self.max_translate * w))
      dy = int(round(rng.uniform(-1, 1) * self.max_translate * h))
      x = translate(x, dx, dy)
    if self.hflip and rng.random() < self.p:
      x = x[:, ::-1]
    if self.vflip and rng.random() < self.p:
      x = x[::-1]
    x = np.ascontiguousarray(x)
    return x[..., :3], x[..., 3]


AUGMENTATIONS: dict[str, Optional[Augment]] = {
    "moeclip": Augment(),
    "none": None,
}
