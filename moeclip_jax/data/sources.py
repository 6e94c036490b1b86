"""Random-access sources for grain: raw records, built TFDS data, padding.

Every source returns examples with the TFDS feature keys (tfds_builders.py):
image uint8[H, W, 3], mask uint8[H, W, 1], has_mask, label, class_name, ...
plus `valid` (False only for padding items).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from moeclip_jax.data import images
from moeclip_jax.data import records as rec


class RecordSource:
  """Decodes records straight from their files (no build step)."""

  def __init__(self, records: Sequence[rec.Record]):
    self._records = list(records)

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict[str, Any]:
    r = self._records[index]
    image, mask = images.load_pair(r.image_path, r.mask_path, r.crop)
    return {
        "image": image, "mask": mask[..., None], "has_mask": r.mask_path
        is not None, "label": r.label, "class_name": r.class_name,
        "defect_type": r.defect_type, "dataset": r.dataset,
        "image_path": r.image_path, "mask_path": r.mask_path or "",
        "crop": np.asarray(r.crop or (0, 0, 0, 0), np.int32),
    }

  def __repr__(self) -> str:
    return f"RecordSource({len(self)} records)"


class PaddedSource:
  """`source` followed by padding items up to `length` (eval batches)."""

  def __init__(self, source: Any, length: int):
    if length < len(source):
      raise ValueError(f"padded length {length} < source length {len(source)}")
    self._source = source
    self._length = length

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int) -> dict[str, Any]:
    if index < len(self._source):
      return dict(self._source[index], valid=True)
    return {"valid": False}

  def __repr__(self) -> str:
    return f"PaddedSource({self._source!r}, {self._length})"
