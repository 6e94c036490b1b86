"""Procedural defects with exact masks, on real (or generated) images.

Kinds: "scratch" (thin polylines), "blob" (a dark or bright stain),
"cutpaste" (a patch copied elsewhere, flipped), "colour" (a hue/brightness
shift inside a region), "texture" (a region replaced by noise texture).
Every function takes uint8[H, W, 3] and a numpy Generator and returns
(image uint8[H, W, 3], mask uint8[H, W] in {0, 255}); the same seed gives the
same defect. Uses: test data, the offline demo (`write_mvtec_tree`), and an
optional training augmentation (see pipeline.PipelineConfig.synthetic_p).
"""

from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

DefectFn = Callable[[np.ndarray, np.random.Generator],
                    tuple[np.ndarray, np.ndarray]]


def _region(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
  """A random jagged polygon, bool[H, W], 20-50 % of the shorter side wide."""
  scale = rng.uniform(0.2, 0.5)
  cy, cx = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w
  radius = max(2.0, scale * min(h, w) / 2)
  n = int(rng.integers(6, 12))
  angles = np.sort(rng.uniform(0, 2 * np.pi, n))
  radii = radius * rng.uniform(0.5, 1.0, n)
  points = [(cx + r * np.cos(a), cy + r * np.sin(a))
            for a, r in zip(angles, radii)]
  canvas = Image.new("L", (w, h), 0)
  ImageDraw.Draw(canvas).polygon(points, fill=255)
  return np.asarray(canvas) > 0


def _blend(image, region, value) -> tuple[np.ndarray, np.ndarray]:
  out = image.copy()
  out[region] = np.clip(value[region] if np.ndim(value) == 3 else value,
                        0, 255).astype(np.uint8)
  return out, region.astype(np.uint8) * 255


def scratch(image, rng):
  """1-3 thin polylines in a dark or bright colour."""
  h, w = image.shape[:2]
  canvas = Image.new("L", (w, h), 0)
  draw = ImageDraw.Draw(canvas)
  for _ in range(int(rng.integers(1, 4))):
    n = int(rng.integers(2, 5))
    start = rng.uniform(0.1, 0.9, 2) * (w, h)
    steps = rng.normal(0, 0.15, (n, 2)) * (w, h)
    points = [tuple(p) for p in np.vstack([start, start + steps.cumsum(0)])]
    draw.line(points, fill=255, width=max(1, int(min(h, w) * 0.02)))
  region = np.asarray(canvas) > 0
  colour = 255 if image.mean() < 128 else 0
  return _blend(image, region, colour)


def blob(image, rng):
  """A stain: the region darkened or brightened by 60-120 levels."""
  region = _region(*image.shape[:2], rng)
  delta = rng.uniform(60, 120) * rng.choice([-1, 1])
  value = image.astype(np.float32) + delta
  if np.abs(np.clip(value, 0, 255) - image)[region].mean() < 20:
    value = image.astype(np.float32) - delta  # saturated: go the other way
  return _blend(image, region, value)


def cutpaste(image, rng):
  """A rectangle copied to another place, flipped left-right."""
  h, w = image.shape[:2]
  ph, pw = max(2, int(h * rng.uniform(0.1, 0.3))), max(2, int(w * rng.uniform(
      0.1, 0.3)))
  sy, sx = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
  dy, dx = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
  patch = image[sy:sy + ph, sx:sx + pw, :][:, ::-1]
  out = image.copy()
  out[dy:dy + ph, dx:dx + pw] = patch
  mask = np.zeros((h, w), np.uint8)
  changed = np.any(out != image, axis=-1)
  mask[dy:dy + ph, dx:dx + pw] = 255
  mask[~changed] = 0  # only pixels that actually differ are defective
  return out, mask


def colour(image, rng):
  """Channels rotated and brightness shifted inside a region."""
  region = _region(*image.shape[:2], rng)
  value = np.roll(image, int(rng.integers(1, 3)), axis=-1).astype(np.float32)
  value += rng.uniform(30, 60) * rng.choice([-1, 1])
  return _blend(image, region, value)


def texture(image, rng):
  """A region replaced by blurred random noise."""
  h, w = image.shape[:2]
  region = _region(h, w, rng)
  noise = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  noise = np.asarray(Image.fromarray(noise).filter(ImageFilter.BoxBlur(1)))
  return _blend(image, region, noise.astype(np.float32))


DEFECTS: dict[str, DefectFn] = {
    "scratch": scratch, "blob": blob, "cutpaste": cutpaste,
    "colour": colour, "texture": texture,
}


def apply(image: np.ndarray, rng: np.random.Generator,
          kinds: Sequence[str] = tuple(DEFECTS)) -> tuple[np.ndarray,
                                                          np.ndarray, str]:
  """One random defect of the given kinds; returns (image, mask, kind)."""
  kind = kinds[int(rng.integers(len(kinds)))]
  out, mask = DEFECTS[kind](np.asarray(image, np.uint8), rng)
  return out, mask, kind


def base_image(size: tuple[int, int], seed: int) -> np.ndarray:
  """A generated 'product' image: gradient, stripes and noise, uint8[H,W,3]."""
  rng = np.random.default_rng(seed)
  h, w = size
  ys, xs = np.mgrid[0:h, 0:w] / max(h, w)
  base = rng.uniform(60, 190, 3)
  stripes = 20 * np.sin(2 * np.pi * rng.uniform(2, 8) * (xs + ys))
  img = base + 40 * xs[..., None] + stripes[..., None]
  img += rng.normal(0, 6, (h, w, 3))
  return np.clip(img, 0, 255).astype(np.uint8)


def _save(path: str, arr: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(arr).save(path)


def write_mvtec_tree(
    root: str, class_names: Sequence[str] = ("widget",), n_train: int = 4,
    n_good: int = 2, n_bad: int = 4, size: tuple[int, int] = (64, 64),
    seed: int = 0, images: Optional[Sequence[np.ndarray]] = None,
    kinds: Sequence[str] = tuple(DEFECTS),
) -> int:
  """Writes an MVTec-layout dataset with synthetic defects; returns #images.

  Args:
    root: output folder.
    class_names: one folder per class.
    n_train, n_good, n_bad: images in train/good, test/good and test/<kind>.
    size: (height, width) of generated images.
    seed: everything is a function of this seed.
    images: real uint8[H, W, 3] images to use instead of generated ones
      (cycled).
    kinds: defect kinds to draw from (default: all of DEFECTS).
  """
  rng = np.random.default_rng(seed)
  count = 0
  for c, name in enumerate(class_names):
    def take(i, c=c):
      if images is not None:
        return np.asarray(images[(c * 997 + i) % len(images)], np.uint8)
      return base_image(size, seed * 1000 + c * 100 + i)
    for i in range(n_train):
      _save(f"{root}/{name}/train/good/{i:03d}.png", take(i))
    for i in range(n_good):
      _save(f"{root}/{name}/test/good/{i:03d}.png", take(n_train + i))
    for i in range(n_bad):
      img, mask, kind = apply(take(n_train + n_good + i), rng, kinds)
      _save(f"{root}/{name}/test/{kind}/{i:03d}.png", img)
      _save(f"{root}/{name}/ground_truth/{kind}/{i:03d}_mask.png", mask)
    count += n_train + n_good + n_bad
  return count
