"""ELPV solar cells, straight from the installed `elpv-dataset` package.

The package ships `elpv_dataset/data/labels.csv` (path, defect probability,
cell type mono/poly) and the 300x300 cell images; no masks. Label rules:

* "inctrl" (default, as InCTRL's converter prepared ELPV): probability 0 ->
  normal, split 75/25 into train/test with scikit-learn's
  `train_test_split(test_size=0.25, random_state=42)`; probability 1 ->
  anomalous (test), defect type = cell type; 1/3 and 2/3 are dropped.
* "threshold:P": probability >= P -> anomalous, else normal; normals split
  as above, anomalies in test, nothing dropped.
"""

from __future__ import annotations

import importlib.resources
import os
from typing import Optional

from sklearn import model_selection

from moeclip_jax.data import records as rec


def package_root() -> str:
  """The folder holding labels.csv inside the installed package."""
  return str(importlib.resources.files("elpv_dataset").joinpath("data"))


def read_labels(root: str) -> list[tuple[str, float, str]]:
  """(absolute image path, probability, cell type) per CSV row."""
  path = os.path.join(root, "labels.csv")
  rows = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      if line.strip():
        name, prob, kind = line.split()
        rows.append((os.path.join(root, name), float(prob), kind))
  return rows


def _classify(prob: float, rule: str) -> Optional[int]:
  if rule == "inctrl":
    return {0.0: rec.NORMAL, 1.0: rec.ANOMALOUS}.get(prob)
  if rule.startswith("threshold:"):
    return int(prob >= float(rule.split(":", 1)[1]))
  raise ValueError(
      f"label_rule must be 'inctrl' or 'threshold:P', got {rule!r}")


def scan_elpv(
    root: Optional[str] = None, label_rule: str = "inctrl",
    class_name: str = "elpv",
) -> rec.ScanResult:
  """ELPV records; `root` defaults to the installed package's data folder."""
  root = root or package_root()
  normals, out = [], rec.ScanResult(records=[], expects_masks=False)
  left_out = 0
  for path, prob, kind in read_labels(root):
    label = _classify(prob, label_rule)
    if label is None:
      left_out += 1
    elif label == rec.NORMAL:
      normals.append(path)
    elif label == rec.ANOMALOUS:
      out.records.append(rec.Record(path, None, rec.ANOMALOUS, class_name,
                                    kind, "elpv", "test"))
  train, test = model_selection.train_test_split(
      normals, test_size=0.25, random_state=42)
  for split, paths in (("train", train), ("test", test)):
    out.records += [rec.Record(p, None, rec.NORMAL, class_name, rec.GOOD,
                               "elpv", split) for p in paths]
  if left_out:
    out.notes.append(f"label_rule {label_rule}: left out {left_out} cells "
                     "with defect probability 1/3 or 2/3 (by design)")
  return out
