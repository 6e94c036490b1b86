"""Decoding images and masks to canonical arrays, converting what can be.

Canonical forms:
  * image: uint8[H, W, 3] RGB;
  * mask: uint8[H, W] with values {0, 255} (any non-zero source pixel is a
    defect pixel, so VisA's class-id masks binarise the same way).

Conversions (each reported as a note, the caller logs it):
  * grayscale / palette / CMYK / LA -> RGB;
  * RGBA -> RGB by dropping alpha (composited on black would change pixels of
    the visible image; AD datasets that ship RGBA do not use alpha);
  * 16-bit or 32-bit integer -> 8-bit by value * 255 / max-of-type, rounded;
  * a mask of another size but the same aspect ratio (within 1 %) -> resized
    to the image size with nearest-neighbour.
Anything else (unreadable, truncated, a mask of another aspect ratio) raises
`BadInputError` naming the file and the problem.
"""

from __future__ import annotations

import io
import os
from typing import Optional

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp",
)


class BadInputError(ValueError):
  """An input file that cannot be used; str() is 'path: problem'."""

  def __init__(self, path: str, problem: str):
    super().__init__(f"{path}: {problem}")
    self.path = path
    self.problem = problem


def is_image_file(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _open_array(path: str) -> tuple[np.ndarray, str]:
  """Fully decodes `path`; returns (array, PIL mode)."""
  try:
    with Image.open(path) as im:
      im.load()
      mode = im.mode
      if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
      elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "1"):
        im = im.convert("RGB" if mode != "1" else "L")
      arr = np.asarray(im)
  except FileNotFoundError as e:
    raise BadInputError(path, "file not found") from e
  except (OSError, SyntaxError, ValueError) as e:
    raise BadInputError(path, f"unreadable or truncated image ({e})") from e
  return arr, mode


def _to_uint8(arr: np.ndarray, path: str, notes: list[str]) -> np.ndarray:
  """Integer / bool arrays of any depth -> uint8."""
  if arr.dtype == np.uint8:
    return arr
  if arr.dtype == bool:
    notes.append(f"{path}: converted 1-bit image to 8-bit")
    return arr.astype(np.uint8) * 255
  if np.issubdtype(arr.dtype, np.integer):
    # PIL may hand 16-bit files over as int32 ("I"); values <= 65535 are
    # taken as 16-bit data.
    wide = arr.dtype.itemsize > 2 and arr.max(initial=0) > 65535
    top = np.iinfo(arr.dtype).max if wide else 65535
    notes.append(f"{path}: converted {arr.dtype} image to 8-bit")
    scaled = np.clip(arr.astype(np.float64), 0, top) * (255.0 / top)
    return np.rint(scaled).astype(np.uint8)
  raise BadInputError(path, f"unsupported pixel type {arr.dtype}")


def load_image(
    path: str, notes: Optional[list[str]] = None
) -> np.ndarray:
  """Reads an image as uint8[H, W, 3] RGB.

  Args:
    path: image file.
    notes: if given, conversion notes ("path: converted ...") are appended.

  Returns:
    uint8[H, W, 3].

  Raises:
    BadInputError: unreadable, truncated, or of an unusable shape.
  """
  notes = [] if notes is None else notes
  arr, mode = _open_array(path)
  arr = _to_uint8(arr, path, notes)
  if arr.ndim == 2:
    notes.append(f"{path}: converted grayscale ({mode}) image to RGB")
    arr = np.repeat(arr[:, :, None], 3, axis=2)
  elif arr.ndim == 3 and arr.shape[2] == 2:
    notes.append(f"{path}: converted grayscale+alpha image to RGB")
    arr = np.repeat(arr[:, :, :1], 3, axis=2)
  elif arr.ndim == 3 and arr.shape[2] == 4:
    notes.append(f"{path}: dropped the alpha channel of an RGBA image")
    arr = arr[:, :, :3]
  if arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 1:
    raise BadInputError(path, f"unusable image shape {arr.shape}")
  return np.ascontiguousarray(arr)


def image_size(path: str) -> tuple[int, int]:
  """(height, width) from the file header, without decoding the pixels."""
  try:
    with Image.open(path) as im:
      return im.size[1], im.size[0]
  except FileNotFoundError as e:
    raise BadInputError(path, "file not found") from e
  except (OSError, SyntaxError, ValueError) as e:
    raise BadInputError(path, f"unreadable image ({e})") from e


def load_mask(
    path: str,
    size_hw: Optional[tuple[int, int]] = None,
    notes: Optional[list[str]] = None,
) -> np.ndarray:
  """Reads a mask as uint8[H, W] in {0, 255}.

  Args:
    path: mask file, or a folder of masks merged by union (MVTec LOCO keeps
      one mask per defect of an image in `ground_truth/<type>/<stem>/`).
    size_hw: the image's (height, width); a mask of another size but the same
      aspect ratio is resized (nearest), otherwise BadInputError.
    notes: conversion notes are appended here.

  Returns:
    uint8[H, W].
  """
  notes = [] if notes is None else notes
  if os.path.isdir(path):
    return _merged_masks(path, size_hw, notes)
  arr, _ = _open_array(path)
  if arr.ndim == 3:
    arr = arr.max(axis=2)
  binary = (arr != 0).astype(np.uint8) * 255  # [h, w]
  if size_hw is None or tuple(binary.shape) == tuple(size_hw):
    return binary
  h, w = binary.shape
  th, tw = size_hw
  if abs((h / w) / (th / tw) - 1.0) > 0.01:
    raise BadInputError(
        path, f"mask size {w}x{h} does not match image size {tw}x{th}"
    )
  notes.append(f"{path}: resized mask {w}x{h} to the image size {tw}x{th}")
  resized = Image.fromarray(binary).resize((tw, th), Image.Resampling.NEAREST)
  return np.asarray(resized)


def _merged_masks(folder, size_hw, notes) -> np.ndarray:
  """Union of every mask file in `folder`, each at the image size."""
  names = sorted(n for n in os.listdir(folder) if is_image_file(n))
  if not names:
    raise BadInputError(folder, "mask folder holds no mask files")
  merged = None
  for name in names:
    part = load_mask(os.path.join(folder, name), size_hw, notes)
    if merged is not None and part.shape != merged.shape:
      raise BadInputError(os.path.join(folder, name),
                          f"mask size {part.shape} differs from "
                          f"{merged.shape} of the other masks")
    merged = part if merged is None else np.maximum(merged, part)
  return merged


def load_pair(
    image_path: str, mask_path: Optional[str],
    crop: Optional[tuple[int, int, int, int]] = None,
    notes: Optional[list[str]] = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Image and mask of one record, cropped to `crop` when given.

  Returns:
    (uint8[H, W, 3], uint8[H, W] in {0, 255}); the mask is all zeros when
    mask_path is None.
  """
  image = load_image(image_path, notes)  # [H, W, 3]
  if mask_path is not None:
    mask = load_mask(mask_path, image.shape[:2], notes)  # [H, W]
  else:
    mask = np.zeros(image.shape[:2], np.uint8)  # [H, W]
  if crop is not None:
    left, top, right, bottom = crop
    if not (0 <= left < right <= image.shape[1]
            and 0 <= top < bottom <= image.shape[0]):
      raise BadInputError(image_path, f"crop {crop} outside the image "
                          f"{image.shape[1]}x{image.shape[0]}")
    image = np.ascontiguousarray(image[top:bottom, left:right])
    mask = np.ascontiguousarray(mask[top:bottom, left:right])
  return image, mask


def encode_png(arr: np.ndarray, compress_level: int = 1) -> bytes:
  """Lossless PNG bytes of a uint8[H, W] or uint8[H, W, 3] array."""
  buf = io.BytesIO()
  Image.fromarray(np.asarray(arr).squeeze()).save(
      buf, format="png", compress_level=compress_level
  )
  return buf.getvalue()
