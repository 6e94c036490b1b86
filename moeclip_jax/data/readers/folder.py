"""A generic folder of normal / abnormal images with optional masks.

Like anomalib's Folder dataset:

  <root>/<normal_dir>/*.png            label 0
  <root>/<abnormal_dir>/*.png          label 1, defect type "anomaly"
  <root>/<abnormal_dir>/<defect>/*.png label 1, defect type <defect>
  <root>/<mask_dir>[/<defect>]/<stem>[_mask].png

Masks are matched to abnormal images by file stem. Folder names default to
the first that exists of a few common spellings.
"""

from __future__ import annotations

import os
from typing import Optional

from moeclip_jax.data import records as rec
from moeclip_jax.data.readers import _common

NORMAL_NAMES = ("good", "normal", "ok")
ABNORMAL_NAMES = ("abnormal", "anomaly", "defect", "bad", "ko")
MASK_NAMES = ("mask", "masks", "ground_truth")


def _pick(root: str, given: Optional[str], names: tuple[str, ...]):
  if given:
    return _common.resolve(root, given)
  for name in names:
    if os.path.isdir(os.path.join(root, name)):
      return os.path.join(root, name)
  return None


def _abnormal_groups(abnormal: str) -> list[tuple[str, str]]:
  """(defect type, folder) pairs: the folder itself and its sub-folders."""
  groups = [("anomaly", abnormal)]
  groups += [(d, os.path.join(abnormal, d)) for d in _common.subdirs(abnormal)]
  return groups


def scan_folder(
    root: str, normal_dir: Optional[str] = None,
    abnormal_dir: Optional[str] = None, mask_dir: Optional[str] = None,
    class_name: Optional[str] = None, split: str = "test",
) -> rec.ScanResult:
  """Scans a generic folder dataset (all records in one split)."""
  _common.require_dir(root)
  name = class_name or os.path.basename(os.path.normpath(root))
  normal = _pick(root, normal_dir, NORMAL_NAMES)
  abnormal = _pick(root, abnormal_dir, ABNORMAL_NAMES)
  masks = _pick(root, mask_dir, MASK_NAMES)
  if normal is None and abnormal is None:
    raise FileNotFoundError(
        f"{root}: no normal ({'/'.join(NORMAL_NAMES)}) or abnormal "
        f"({'/'.join(ABNORMAL_NAMES)}) folder")
  out = rec.ScanResult(records=[], expects_masks=masks is not None)
  for path in _common.list_images(normal) if normal else []:
    out.records.append(rec.Record(path, None, rec.NORMAL, name, rec.GOOD,
                                  "folder", split))
  for defect, folder in _abnormal_groups(abnormal) if abnormal else []:
    for path in _common.list_images(folder):
      mask = None
      if masks is not None:
        mask = (_common.find_mask(os.path.join(masks, defect), path)
                or _common.find_mask(masks, path))
      out.records.append(rec.Record(path, mask, rec.ANOMALOUS, name, defect,
                                    "folder", split))
  if not out.records:
    out.issues.append(_common.empty_class_issue(root))
  return out
