"""Metadata-file layouts: MoECLIP JSONL, AnomalyCLIP/AdaCLIP meta.json, InCTRL.

* MoECLIP JSONL: one object per line, `image_path`, `label` (0/1, int or
  float), `mask_path` (anomalous items only) and `class_name`; paths relative
  to the dataset root. The files are test splits (`full-shot.jsonl`).
* meta.json: `{"train"|"test": {class: [{img_path, mask_path, cls_name,
  specie_name, anomaly}, ...]}}`, paths relative to the root; mask_path is ""
  for normal items (and for datasets without masks, e.g. HeadCT).
* InCTRL: per-class JSON lists of `{image_path, target, type}`; files named
  `*_val_*.json` are the test split, the others training lists.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Iterator, Optional

from moeclip_jax.data import records as rec
from moeclip_jax.data.readers import _common


def _label(value: Any, where: str) -> int:
  try:
    as_float = float(value)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{where}: label {value!r} is not 0/1") from e
  if as_float not in (0.0, 1.0):
    raise ValueError(f"{where}: label {value!r} is not 0/1")
  return int(as_float)


def _defect_from_path(path: str, label: int) -> str:
  return os.path.basename(os.path.dirname(path)) if label else rec.GOOD


def _pick_file(root: str, path: Optional[str], pattern: str, prefer: str):
  if path:
    return _common.resolve(root, path)
  found = sorted(glob.glob(os.path.join(root, pattern)))
  preferred = os.path.join(root, prefer)
  if preferred in found or len(found) == 1:
    return preferred if preferred in found else found[0]
  raise FileNotFoundError(
      f"{root}: give the metadata file explicitly; found {found or 'none'}")


def _jsonl_lines(path: str) -> Iterator[tuple[str, Any]]:
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      if line.strip():
        where = f"{path}:{number}"
        try:
          yield where, json.loads(line)
        except json.JSONDecodeError as e:
          yield where, e


def scan_moeclip_jsonl(
    root: str, meta: Optional[str] = None, dataset: str = "moeclip_jsonl",
    class_from: str = "class_name",
) -> rec.ScanResult:
  """Reads a MoECLIP JSONL file (default `<root>/full-shot.jsonl`).

  Args:
    root: the folder image/mask paths are relative to.
    meta: the JSONL file (relative to root or absolute).
    dataset: name written into the records.
    class_from: "class_name" (the field) or "first_component" (the first
      path component, e.g. DTD-Synthetic's per-variant evaluation).
  """
  _common.require_dir(root)
  path = _pick_file(root, meta, "*.jsonl", "full-shot.jsonl")
  out = rec.ScanResult(records=[], expects_masks=False)
  for where, obj in _jsonl_lines(path):
    try:
      if isinstance(obj, Exception):
        raise ValueError(f"not JSON ({obj})")
      label = _label(obj["label"], where)
      image = obj["image_path"]
      mask = obj.get("mask_path") or None
      name = (image.replace("\\", "/").split("/")[0]
              if class_from == "first_component" else obj["class_name"])
      out.records.append(rec.Record(
          image_path=_common.resolve(root, image),
          mask_path=_common.resolve(root, mask) if mask else None,
          label=label, class_name=str(name),
          defect_type=_defect_from_path(image, label),
          dataset=dataset, split="test"))
    except (KeyError, ValueError, TypeError) as e:
      out.issues.append(rec.Issue(where, f"bad metadata line: {e!r}"))
  return out


def _meta_item(root, item, split, dataset, where) -> rec.Record:
  label = _label(item["anomaly"], where)
  mask = item.get("mask_path") or None
  return rec.Record(
      image_path=_common.resolve(root, item["img_path"]),
      mask_path=_common.resolve(root, mask) if mask else None,
      label=label, class_name=str(item["cls_name"]),
      defect_type=str(item.get("specie_name") or
                      ("anomaly" if label else rec.GOOD)),
      dataset=dataset, split=split)


def scan_meta_json(
    root: str, meta: Optional[str] = None, dataset: str = "meta_json"
) -> rec.ScanResult:
  """Reads an AnomalyCLIP/AdaCLIP `meta.json` (default `<root>/meta.json`)."""
  _common.require_dir(root)
  path = _pick_file(root, meta, "meta.json", "meta.json")
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  out = rec.ScanResult(records=[], expects_masks=False)
  for split, per_class in data.items():
    for class_name, items in per_class.items():
      if not items:
        out.issues.append(rec.Issue(
            f"{path}[{split}][{class_name}]", "empty class", is_item=False))
      for i, item in enumerate(items):
        where = f"{path}[{split}][{class_name}][{i}]"
        try:
          out.records.append(_meta_item(root, item, split, dataset, where))
        except (KeyError, ValueError, TypeError) as e:
          out.issues.append(rec.Issue(where, f"bad metadata item: {e!r}"))
  return out


def _inctrl_mask(image_path: str) -> Optional[str]:
  """MVTec-style mask of an InCTRL test image, if one exists."""
  defect_dir = os.path.dirname(image_path)
  test_dir = os.path.dirname(defect_dir)
  if os.path.basename(test_dir) != "test":
    return None
  mask_dir = os.path.join(
      os.path.dirname(test_dir), "ground_truth", os.path.basename(defect_dir))
  return _common.find_mask(mask_dir, image_path)


def scan_inctrl_json(
    root: str, files: Optional[list[str]] = None, dataset: str = "inctrl_json"
) -> rec.ScanResult:
  """Reads InCTRL JSON lists (default: every `*.json` under `root`)."""
  _common.require_dir(root)
  paths = [_common.resolve(root, p) for p in files] if files else sorted(
      glob.glob(os.path.join(root, "*.json")))
  if not paths:
    raise FileNotFoundError(f"{root}: no InCTRL *.json lists found")
  out = rec.ScanResult(records=[], expects_masks=False)
  for path in paths:
    split = "test" if "_val_" in os.path.basename(path) else "train"
    with open(path, encoding="utf-8") as f:
      items = json.load(f)
    for i, item in enumerate(items):
      where = f"{path}[{i}]"
      try:
        label = _label(item["target"], where)
        image = _common.resolve(root, item["image_path"])
        out.records.append(rec.Record(
            image_path=image,
            mask_path=_inctrl_mask(image) if label else None,
            label=label, class_name=str(item["type"]),
            defect_type=_defect_from_path(image, label),
            dataset=dataset, split=split))
      except (KeyError, ValueError, TypeError) as e:
        out.issues.append(rec.Issue(where, f"bad metadata item: {e!r}"))
  return out
