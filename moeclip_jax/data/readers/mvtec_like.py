"""MVTec-style layouts: MVTec AD, MPDD, BTAD, DTD-Synthetic.

  <root>/<class>/train/<normal>/*.png
  <root>/<class>/test/<normal | defect>/*.png
  <root>/<class>/ground_truth/<defect>/<stem><suffix>.<any image ext>

The layouts differ only in the normal folder name (MVTec/MPDD/DTD "good",
BTAD "ok"), the mask suffix (MVTec/MPDD "_mask", BTAD and DTD-Synthetic none)
and the mask extension (BTAD 03 uses .bmp), which `find_mask` absorbs.
"""

from __future__ import annotations

import os

from moeclip_jax.data import records as rec
from moeclip_jax.data.readers import _common

NORMAL_DIRS = ("good", "ok")


def _split_records(
    class_dir: str, class_name: str, split: str, dataset: str,
    mask_suffixes: tuple[str, ...],
) -> tuple[list[rec.Record], list[str]]:
  """Records of one class/split; also returns the empty defect folders."""
  out, empty = [], []
  split_dir = os.path.join(class_dir, split)
  for defect in _common.subdirs(split_dir):
    files = _common.list_images(os.path.join(split_dir, defect))
    if not files:
      empty.append(os.path.join(split_dir, defect))
    normal = defect.lower() in NORMAL_DIRS
    mask_dir = os.path.join(class_dir, "ground_truth", defect)
    for path in files:
      mask = (None if normal
              else _common.find_mask(mask_dir, path, mask_suffixes))
      out.append(rec.Record(
          image_path=path, mask_path=mask,
          label=rec.NORMAL if normal else rec.ANOMALOUS,
          class_name=class_name,
          defect_type=rec.GOOD if normal else defect,
          dataset=dataset, split=split,
      ))
  return out, empty


def scan_layout(
    root: str, dataset: str, mask_suffixes: tuple[str, ...] = ("_mask", ""),
    classes: tuple[str, ...] = (),
) -> rec.ScanResult:
  """Scans an MVTec-style tree.

  Args:
    root: folder holding one sub-folder per class.
    dataset: the name written into each record.
    mask_suffixes: stem suffixes tried, in order, to find a mask.
    classes: only these classes (default: every class folder).

  Returns:
    ScanResult; empty class or defect folders are issues.
  """
  _common.require_dir(root)
  result = rec.ScanResult(records=[])
  for class_name in classes or _common.subdirs(root):
    class_dir = os.path.join(root, class_name)
    found = []
    for split in ("train", "test"):
      split_records, empty = _split_records(
          class_dir, class_name, split, dataset, mask_suffixes)
      found += split_records
      result.issues += [
          rec.Issue(d, "empty defect folder: no image files", is_item=False)
        for d in empty
      ]
    if not found:
      result.issues.append(_common.empty_class_issue(class_dir))
    result.records += found
  return result


def scan_mvtec(root: str, **kwargs) -> rec.ScanResult:
  return scan_layout(root, "mvtec", ("_mask", ""), **kwargs)


def scan_mpdd(root: str, **kwargs) -> rec.ScanResult:
  return scan_layout(root, "mpdd", ("_mask", ""), **kwargs)


def scan_btad(root: str, **kwargs) -> rec.ScanResult:
  return scan_layout(root, "btad", ("", "_mask"), **kwargs)


def scan_dtd_synthetic(root: str, **kwargs) -> rec.ScanResult:
  """DTD-Synthetic: one class folder per variant (e.g. Woven_001)."""
  return scan_layout(root, "dtd_synthetic", ("", "_mask"), **kwargs)
