"""The one record type every reader produces, and the problems readers report.

A `Record` names one image on disk plus its annotations; pixels are read
later (`images.py`). Readers return a `ScanResult`: the records they found and
the `Issue`s they met on the way (an empty class folder, a metadata line that
points nowhere). Nothing is dropped silently: every record a reader found is
either kept or reported.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Iterable, Optional

NORMAL = 0
ANOMALOUS = 1
GOOD = "good"  # defect_type of normal images


@dataclasses.dataclass(frozen=True)
class Record:
  """One image of an anomaly-detection dataset.

  Attributes:
    image_path: absolute path of the image file.
    mask_path: absolute path of the ground-truth mask, or None (normal images,
      or datasets without masks).
    label: 0 normal, 1 anomalous.
    class_name: the object / texture class as the dataset names it.
    defect_type: "good" for normal images, else the defect folder / type.
    dataset: the reader name ("mvtec", "visa", ...).
    split: "train" or "test".
    crop: (left, top, right, bottom) pixel box of the source image (and
      mask) this record stands for, or None for the whole image (InCTRL's
      KolektorSDD protocol cuts each image into 3 slices).
  """

  image_path: str
  mask_path: Optional[str]
  label: int
  class_name: str
  defect_type: str
  dataset: str
  split: str
  crop: Optional[tuple[int, int, int, int]] = None

  def __post_init__(self):
    if self.label not in (NORMAL, ANOMALOUS):
      raise ValueError(
          f"{self.image_path}: label must be 0 or 1, got {self.label!r}"
      )


@dataclasses.dataclass(frozen=True)
class Issue:
  """A problem with one input path.

  Attributes:
    path: the offending file or folder.
    problem: one line saying what is wrong.
    record: the record the problem belongs to, if one could be built.
    is_item: True when the issue stands for one input item (an image, a
      metadata line) that will not be written; False for e.g. an empty class
      folder, which holds no item.
  """

  path: str
  problem: str
  record: Optional[Record] = None
  is_item: bool = True

  def __str__(self) -> str:
    return f"{self.path}: {self.problem}"


@dataclasses.dataclass
class ScanResult:
  """What a reader found.

  Attributes:
    records: every record found, including ones an issue refers to.
    issues: problems found while scanning (before any pixel is read).
    expects_masks: whether anomalous records of this layout must have a mask.
    notes: informational lines (e.g. items left out by a label rule).
    image_level: False when the test split holds no normal images (e.g.
      the colonoscopy sets): image AUROC/AP are undefined, leave them empty.
      `expects_masks` False likewise means no pixel-level metrics.
  """

  records: list[Record]
  issues: list[Issue] = dataclasses.field(default_factory=list)
  expects_masks: bool = True
  notes: list[str] = dataclasses.field(default_factory=list)
  image_level: bool = True


def counts(records: Iterable[Record]) -> dict[str, collections.Counter]:
  """Counts records per split, per split/class and per split/label."""
  out = {
      "split": collections.Counter(),
      "class": collections.Counter(),
      "label": collections.Counter(),
      "mask": collections.Counter(),
  }
  for r in records:
    out["split"][r.split] += 1
    out["class"][(r.split, r.class_name)] += 1
    out["label"][(r.split, r.label)] += 1
    if r.label == ANOMALOUS:
      out["mask"][(r.split, r.mask_path is not None)] += 1
  return out


def class_names(records: Iterable[Record]) -> list[str]:
  """Sorted distinct class names."""
  return sorted({r.class_name for r in records})
