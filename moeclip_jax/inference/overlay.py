"""Heatmap overlays: original | heatmap over the image | thresholded contour.

All functions are NumPy + PIL (no matplotlib). Maps are expected in [0, 1]
(normalise first: `normalise_for_display` or calibration statistics).
"""

from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image
from scipy import ndimage

# A jet-like colormap: anchor values -> RGB in [0, 255].
_ANCHORS = np.array([0.0, 0.25, 0.5, 0.75, 1.0], np.float32)
_COLOURS = np.array([[0, 0, 128], [0, 128, 255], [0, 255, 0],
                     [255, 200, 0], [255, 0, 0]], np.float32)
CONTOUR_RGB = np.array([255, 0, 0], np.uint8)
SEPARATOR = 4  # pixels of white between panels


def colormap(values: np.ndarray) -> np.ndarray:
  """float[H, W] in [0, 1] -> uint8[H, W, 3] (blue = low, red = high)."""
  v = np.clip(np.nan_to_num(values), 0.0, 1.0).astype(np.float32)
  rgb = [np.interp(v, _ANCHORS, _COLOURS[:, c]) for c in range(3)]
  return np.stack(rgb, -1).round().astype(np.uint8)


def normalise_for_display(amap: np.ndarray) -> np.ndarray:
  """Per-map min-max to [0, 1] (flat maps become 0)."""
  lo, hi = float(np.min(amap)), float(np.max(amap))
  if hi - lo < 1e-12:
    return np.zeros_like(amap, np.float32)
  return ((amap - lo) / (hi - lo)).astype(np.float32)


def resize_map(amap: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """Bilinear resize of float[h, w] to (H, W)."""
  if tuple(amap.shape) == tuple(hw):
    return amap.astype(np.float32)
  im = Image.fromarray(amap.astype(np.float32), mode="F")
  return np.asarray(im.resize((hw[1], hw[0]), Image.BILINEAR), np.float32)


def heat_panel(image: np.ndarray, amap01: np.ndarray,
               alpha: float = 0.5) -> np.ndarray:
  """Colour map blended over the image; uint8[H, W, 3]."""
  heat = colormap(amap01).astype(np.float32)
  out = (1 - alpha) * image.astype(np.float32) + alpha * heat
  return out.round().astype(np.uint8)


def contour_panel(image: np.ndarray, region: np.ndarray) -> np.ndarray:
  """The image with the outline of `region` (bool[H, W]) drawn in red."""
  width = max(1, min(image.shape[:2]) // 150)
  inner = ndimage.binary_erosion(region, iterations=width)
  edge = region & ~inner
  out = image.copy()
  out[edge] = CONTOUR_RGB
  return out


def panels(image: np.ndarray, amap01: np.ndarray,
           threshold: float) -> np.ndarray:
  """[original | heatmap | contour of amap01 >= threshold], uint8.

  Args:
    image: uint8[H, W, 3].
    amap01: float[h, w] in [0, 1] (resized to H x W here).
    threshold: map level of the contour.

  Returns:
    uint8[H, 3W + 2 * SEPARATOR, 3].
  """
  h, w = image.shape[:2]
  amap = resize_map(amap01, (h, w))
  sep = np.full((h, SEPARATOR, 3), 255, np.uint8)
  return np.concatenate([image, sep, heat_panel(image, amap), sep,
                         contour_panel(image, amap >= threshold)], axis=1)


def save_png(path, array: np.ndarray) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)
  return path


def panel_slices(width: int) -> tuple[slice, slice, slice]:
  """Column slices of the three panels in a `panels` image of `width`."""
  w = (width - 2 * SEPARATOR) // 3
  return (slice(0, w), slice(w + SEPARATOR, 2 * w + SEPARATOR),
          slice(2 * w + 2 * SEPARATOR, 3 * w + 2 * SEPARATOR))
