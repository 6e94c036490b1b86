"""VisA: the official `split_csv/1cls.csv` split.

Columns: object, split, label ("normal" / "anomaly"), image, mask; paths are
relative to the VisA root. The CSV names no defect types, so anomalous
records get defect_type "anomaly".
"""

from __future__ import annotations

import csv
import os

from moeclip_jax.data import records as rec
from moeclip_jax.data.readers import _common

CSV = os.path.join("split_csv", "1cls.csv")
_COLUMNS = ("object", "split", "label", "image", "mask")


def _row_record(root: str, row: dict[str, str], where: str) -> rec.Record:
  label_text = row["label"].strip().lower()
  if label_text not in ("normal", "anomaly"):
    raise ValueError(
        f"{where}: label must be normal/anomaly, got {label_text!r}")
  anomalous = label_text == "anomaly"
  mask = row.get("mask", "").strip()
  return rec.Record(
      image_path=_common.resolve(root, row["image"].strip()),
      mask_path=_common.resolve(root, mask) if mask else None,
      label=rec.ANOMALOUS if anomalous else rec.NORMAL,
      class_name=row["object"].strip(),
      defect_type="anomaly" if anomalous else rec.GOOD,
      dataset="visa",
      split=row["split"].strip().lower(),
  )


def scan_visa(root: str, csv_path: str = CSV) -> rec.ScanResult:
  """Reads `<root>/split_csv/1cls.csv` (or `csv_path`, relative to root)."""
  _common.require_dir(root)
  path = _common.resolve(root, csv_path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: VisA split CSV not found")
  result = rec.ScanResult(records=[])
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    missing = set(_COLUMNS) - set(reader.fieldnames or ())
    if missing:
      raise ValueError(f"{path}: missing columns {sorted(missing)}")
    for line, row in enumerate(reader, start=2):
      try:
        result.records.append(_row_record(root, row, f"{path}:{line}"))
      except ValueError as e:
        result.issues.append(rec.Issue(f"{path}:{line}", str(e)))
  return result
