"""Helpers shared by the layout readers: listing images, matching masks."""

from __future__ import annotations

import os
from typing import Optional, Sequence

from moeclip_jax.data import images
from moeclip_jax.data import records as rec


def list_images(folder: str) -> list[str]:
  """Sorted absolute paths of the image files directly inside `folder`."""
  if not os.path.isdir(folder):
    return []
  return [
      os.path.join(folder, n)
      for n in sorted(os.listdir(folder))
      if images.is_image_file(n) and os.path.isfile(os.path.join(folder, n))
  ]


def subdirs(folder: str) -> list[str]:
  """Sorted names of the sub-folders of `folder` (hidden ones skipped)."""
  if not os.path.isdir(folder):
    return []
  return [
      n for n in sorted(os.listdir(folder))
      if os.path.isdir(os.path.join(folder, n)) and not n.startswith(".")
  ]


def stem(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


def find_mask(
    mask_dir: str, image_path: str, suffixes: Sequence[str] = ("_mask", "")
) -> Optional[str]:
  """The mask in `mask_dir` whose stem is the image stem plus a suffix.

  Any image extension is accepted (BTAD mixes .png and .bmp).
  """
  if not os.path.isdir(mask_dir):
    return None
  by_stem = {}
  for n in os.listdir(mask_dir):
    if images.is_image_file(n):
      by_stem.setdefault(os.path.splitext(n)[0], os.path.join(mask_dir, n))
  for suffix in suffixes:
    hit = by_stem.get(stem(image_path) + suffix)
    if hit is not None:
      return hit
  return None


def resolve(root: str, path: str) -> str:
  """`path` if absolute, else joined to `root`; normalised."""
  path = os.path.expanduser(path)
  if not os.path.isabs(path):
    path = os.path.join(root, path)
  return os.path.normpath(path)


def empty_class_issue(folder: str) -> rec.Issue:
  return rec.Issue(folder, "empty class: no image files found",
                   is_item=False)


def require_dir(root: str) -> None:
  if not os.path.isdir(root):
    raise FileNotFoundError(f"{root}: dataset root is not a folder")
