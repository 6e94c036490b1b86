"""Image loading and the standard CLIP preprocessing (PIL, numpy)."""

from __future__ import annotations

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
      if im.mode in ("I;16", "I;16B", "I"):
        arr = np.asarray(im, np.float64)
        scale = 255.0 / max(float(arr.max()), 1.0)
        im = Image.fromarray((arr * scale).astype(np.uint8))
      return np.asarray(im.convert("RGB"))
  except FileNotFoundError as e:
    raise FileNotFoundError(f"{path}: no such image") from e
  except (UnidentifiedImageError, OSError, SyntaxError) as e:
    raise ValueError(f"{path}: unreadable image ({e})") from e


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
