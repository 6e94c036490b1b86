"""Helpers shared by the layout readers: listing images, matching masks."""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

from sklearn import model_selection

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


def find_ci(folder: str, names: Sequence[str]) -> Optional[str]:
  """The first sub-folder of `folder` named one of `names` (any case)."""
  by_lower = {n.lower(): n for n in subdirs(folder)}
  for name in names:
    hit = by_lower.get(name.lower())
    if hit is not None:
      return os.path.join(folder, hit)
  return None


def need_ci(folder: str, names: Sequence[str], layout: str) -> str:
  """`find_ci`, or FileNotFoundError naming the folder and the layout."""
  hit = find_ci(folder, names)
  if hit is None:
    raise FileNotFoundError(
        f"{folder}: no {'/'.join(names)} folder (expected {layout})")
  return hit


def find_file(root: str, name: str, depth: Optional[int] = None
              ) -> Optional[str]:
  """The first file `name` in `root` or its sub-folders (sorted walk, at
  most `depth` levels down when given)."""
  for here, dirs, files in os.walk(root):
    dirs.sort()
    if depth is not None and here[len(root):].count(os.sep) >= depth:
      dirs[:] = []
    if name in files:
      return os.path.join(here, name)
  return None


def split_normals(records: list[rec.Record]) -> list[rec.Record]:
  """Normals 75/25 into train/test, anomalies stay test: every converter of
  InCTRL (`train_test_split(test_size=0.25, random_state=42)`)."""
  normals = [r for r in records if r.label == rec.NORMAL]
  if len(normals) < 2:
    return records
  train, _ = model_selection.train_test_split(
      list(range(len(normals))), test_size=0.25, random_state=42)
  in_train = {id(normals[i]) for i in train}
  return [dataclasses.replace(r, split="train") if id(r) in in_train else r
          for r in records]


def finish(out: rec.ScanResult, root: str) -> rec.ScanResult:
  """Adds the empty-dataset issue and the metric-coverage notes."""
  if not out.records and not out.issues:
    out.issues.append(empty_class_issue(root))
  test = [r for r in out.records if r.split == "test"]
  out.image_level = any(r.label == rec.NORMAL for r in test)
  if test and not out.image_level:
    out.notes.append(
        f"{root}: no normal test images: image-level metrics are left empty")
  if not out.expects_masks:
    out.notes.append(f"{root}: no masks: pixel-level metrics are left empty")
  return out
