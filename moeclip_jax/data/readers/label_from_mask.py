"""Layouts whose label comes from the mask content: KolektorSDD and RSDD.

KolektorSDD (KSDD v1): `<root>/kosNN/PartK.jpg` + `PartK_label.bmp`.
  `slices=3, split_normals=True` reproduces InCTRL's SDD protocol: each image
  cut vertically into 3 equal slices (records with a `crop`), a slice with
  any mask pixel is anomalous, normals split 75/25 train/test with
  `train_test_split(test_size=0.25, random_state=42)` (the sizes match
  InCTRL's 286 normal / 54 anomalous test slices; InCTRL's listing order, and
  so which normals land in test, is not known).
KolektorSDD2: `<root>/{train,test}/<id>.png` + `<id>_GT.png`.
RSDD: `<root>/<Type-I|Type-II ...>/Rail surface images/*.jpg` with the same
  stems under `GroundTruth/`; a tree that is already MVTec-style (the
  AdaCLIP-style preprocessed RSDD) is read with the MVTec reader instead.
An image is anomalous when its mask has any non-zero pixel.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from sklearn import model_selection

from moeclip_jax.data import images
from moeclip_jax.data import records as rec
from moeclip_jax.data.readers import _common, mvtec_like


def _slice_boxes(height: int, width: int, slices: int):
  """`slices` equal horizontal bands (top to bottom), as crop boxes."""
  if slices == 1:
    return [None]
  step = height // slices
  return [(0, k * step, width, (k + 1) * step) for k in range(slices)]


def _records_from_mask(
    path: str, mask: str | None, class_name: str, dataset: str, split: str,
    issues: list[rec.Issue], slices: int = 1,
) -> list[rec.Record]:
  """Reads the mask to decide the label(s); a missing mask is an issue."""
  if mask is None:
    issues.append(rec.Issue(path, "missing mask (the label comes from it)"))
    return []
  try:
    pixels = images.load_mask(mask, images.image_size(path))  # [H, W]
  except images.BadInputError as e:
    issues.append(rec.Issue(e.path, e.problem))
    return []
  out = []
  for box in _slice_boxes(*pixels.shape, slices):
    part = pixels if box is None else pixels[box[1]:box[3], box[0]:box[2]]
    anomalous = bool(np.any(part))
    out.append(rec.Record(
        image_path=path, mask_path=mask if anomalous else None,
        label=int(anomalous), class_name=class_name,
        defect_type="defect" if anomalous else rec.GOOD,
        dataset=dataset, split=split, crop=box))
  return out


def _scan_pairs(
    folder: str, mask_dir: str, suffixes: tuple[str, ...], class_name: str,
    dataset: str, split: str, out: rec.ScanResult, slices: int = 1,
) -> None:
  """Appends one record per image in `folder` whose mask is in `mask_dir`."""
  for path in _common.list_images(folder):
    if folder == mask_dir and any(
        _common.stem(path).endswith(s) for s in suffixes if s):
      continue  # a mask stored beside its image
    mask = _common.find_mask(mask_dir, path, suffixes)
    out.records += _records_from_mask(
        path, mask, class_name, dataset, split, out.issues, slices)


def _split_normals(records: list[rec.Record]) -> list[rec.Record]:
  """Normals 75/25 into train/test (random_state 42); anomalies stay test."""
  normals = [r for r in records if r.label == rec.NORMAL]
  train, _ = model_selection.train_test_split(
      list(range(len(normals))), test_size=0.25, random_state=42)
  in_train = {id(normals[i]) for i in train}
  return [dataclasses.replace(r, split="train") if id(r) in in_train else r
          for r in records]


def scan_ksdd(
    root: str, class_name: str = "ksdd", slices: int = 1,
    split_normals: bool = False,
) -> rec.ScanResult:
  """KolektorSDD v1 (`kosNN/` folders) or v2 (`train/`, `test/` folders).

  Args:
    root: dataset folder.
    class_name: class written into the records (InCTRL uses "SDD").
    slices: v1 only: cut each image into this many horizontal bands.
    split_normals: v1 only: move 75 % of the normals to train.
  """
  _common.require_dir(root)
  out = rec.ScanResult(records=[])
  subs = _common.subdirs(root)
  if "train" in subs or "test" in subs:  # KSDD2
    for split in ("train", "test"):
      folder = os.path.join(root, split)
      _scan_pairs(folder, folder, ("_GT",), class_name, "ksdd", split, out)
  else:
    for part in subs:
      folder = os.path.join(root, part)
      _scan_pairs(folder, folder, ("_label",), class_name, "ksdd", "test",
                  out, slices)
    if split_normals:
      out.records = _split_normals(out.records)
  if not out.records and not out.issues:
    out.issues.append(_common.empty_class_issue(root))
  return out


def _find_ci(folder: str, name: str) -> str | None:
  for sub in _common.subdirs(folder):
    if sub.lower() == name.lower():
      return os.path.join(folder, sub)
  return None


def scan_rsdd(root: str) -> rec.ScanResult:
  """RSDD in its original layout, or an MVTec-style preprocessed copy."""
  _common.require_dir(root)
  if any(os.path.isdir(os.path.join(root, c, "test"))
         for c in _common.subdirs(root)):
    return mvtec_like.scan_layout(root, "rsdd", ("_mask", ""))
  out = rec.ScanResult(records=[])
  type_dirs = [root] + [os.path.join(root, s) for s in _common.subdirs(root)]
  for type_dir in type_dirs:
    images_dir = _find_ci(type_dir, "Rail surface images")
    gt_dir = _find_ci(type_dir, "GroundTruth")
    if images_dir and gt_dir:
      name = os.path.basename(os.path.normpath(type_dir))
      _scan_pairs(images_dir, gt_dir, ("",), name, "rsdd", "test", out)
  if not out.records and not out.issues:
    out.issues.append(_common.empty_class_issue(root))
  return out
