"""Image loading and the standard CLIP preprocessing (PIL, numpy)."""

from __future__ import annotations

import os
import pathlib
from typing import Sequence

import numpy as np

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def load_rgb(path):
  """Reads any PIL-readable image as RGB uint8 [H, W, 3]; names the file on error."""
  from PIL import (
    Image,  # pylint: disable=g-import-not-at-top
    UnidentifiedImageError,  # pylint: disable=g-import-not-at-top
  )

  path = pathlib.Path(path)
  try:
    with Image.open(path) as im:
      im.load()
      return to_rgb(im)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"{path}: no such image") from e
  except (UnidentifiedImageError, OSError, SyntaxError,
          Image.DecompressionBombError) as e:
    raise ValueError(f"{path}: unreadable image ({e})") from e


def image_pixels(path) -> int:
  """Width x height of an image file, read from its header only."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as im:
      return int(im.size[0]) * int(im.size[1])
  except FileNotFoundError as e:
    raise FileNotFoundError(f"{path}: no such image") from e
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{path}: unreadable image ({e})") from e


# PIL modes `to_rgb` converts (16/32-bit greyscale scaled to the image max).
RGB_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa",
                       "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16",
                       "I;16B", "I;16L"})
_WIDE_GREY = ("I;16", "I;16B", "I;16L", "I")


def to_rgb(im) -> np.ndarray:
  """A loaded PIL image -> RGB uint8 [H, W, 3] (wide greyscale rescaled)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if im.mode in _WIDE_GREY:
    arr = np.asarray(im, np.float64)
    scale = 255.0 / max(float(arr.max()), 1.0)
    im = Image.fromarray((arr * scale).astype(np.uint8))
  return np.asarray(im.convert("RGB"))


def as_rgb(item, name: str = "image") -> np.ndarray:
  """A path, a PIL image or a uint8 array -> RGB uint8 [H, W, 3].

  Arrays: [H, W] grey, [H, W, 3] RGB or [H, W, 4] RGBA (alpha dropped, as
  for an RGBA file); PIL images and files go through `to_rgb` (16-bit,
  palette, CMYK handled), so the three forms of one picture agree.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if isinstance(item, (str, os.PathLike)):
    return load_rgb(item)
  if isinstance(item, Image.Image):
    if item.mode not in RGB_MODES:
      raise ValueError(f"{name}: PIL mode {item.mode!r} is not supported "
                       "(8/16-bit grey, palette, RGB(A), CMYK)")
    return to_rgb(item)
  if not hasattr(item, "__array__"):
    raise TypeError(f"{name}: expected a path, a PIL image or a uint8 "
                    f"array, got {type(item).__name__}")
  arr = np.asarray(item)
  if arr.dtype != np.uint8:
    raise ValueError(f"{name}: uint8 pixels expected, got {arr.dtype} "
                     "(scale to 0..255 and cast)")
  if arr.ndim == 3 and arr.shape[-1] == 3:
    return arr
  if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 4):
    return to_rgb(Image.fromarray(arr))
  raise ValueError(f"{name}: expected [H, W], [H, W, 3] or [H, W, 4] "
                   f"pixels, got shape {arr.shape}")


def normalize(uint8_images: np.ndarray, mean=CLIP_MEAN, std=CLIP_STD) -> np.ndarray:
  """uint8 [..., 3] -> float32 (x / 255 - mean) / std."""
  return ((uint8_images.astype(np.float32) / 255.0) - mean) / std


def resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """Shorter side to `size` (bicubic), then centre crop: CLIP's eval transform."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  h, w = image.shape[:2]
  scale = size / min(h, w)
  nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
  im = Image.fromarray(image).resize((nw, nh), Image.BICUBIC)
  top, left = (nh - size) // 2, (nw - size) // 2
  return np.asarray(im)[top:top + size, left:left + size]


def clip_preprocess(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 [H, W, 3] -> float32 [size, size, 3], normalised for CLIP."""
  return normalize(resize_center_crop(image, size))


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_images(inputs: Sequence[str]) -> tuple[list[pathlib.Path],
                                                  list[str]]:
  """Files (and image files found recursively under folders), sorted.

  Returns:
    (paths, problems): paths that do not exist are listed in `problems`.
  """
  paths, problems = [], []
  for item in inputs:
    p = pathlib.Path(item)
    if p.is_dir():
      paths += sorted(f for f in p.rglob("*") if f.is_file()
                      and f.suffix.lower() in IMAGE_SUFFIXES)
    elif p.is_file():
      paths.append(p)
    else:
      problems.append(f"{p}: no such file or folder")
  return paths, problems
