"""The eval core: records -> `detector.eval_runs` -> metrics reports.

`moeclip-jax eval` and `moeclip-jax benchmark` both evaluate through
`evaluate_runs`; what they write around it (report files, overlays, a
results store) is theirs. One report per run: one run per InCTRL prompt
draw, one run otherwise.
"""

from __future__ import annotations

import hashlib
import pathlib
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from moeclip_jax.eval import evaluate as eval_lib

HASH_MAX_FILE_BYTES = 1 << 20  # only config / metadata files are hashed


def checkpoint_hash(checkpoint_dir) -> str:
  """sha256 (16 hex) of the checkpoint's small files (config, metadata)."""
  digest = hashlib.sha256()
  root = pathlib.Path(checkpoint_dir)
  for path in sorted(root.rglob("*")):
    if path.is_file() and path.stat().st_size < HASH_MAX_FILE_BYTES:
      digest.update(path.relative_to(root).as_posix().encode())
      digest.update(path.read_bytes())
  return digest.hexdigest()[:16]


def evaluate_pred(pred: Mapping[str, Any], protocol: str,
                  domain: str | None, meta: Mapping[str, Any]
                  ) -> dict[str, Any]:
  """The metrics report (metrics.json schema) of one `eval_runs` output;
  pixel metrics only when some image has a mask."""
  names = np.asarray(pred["class_names"])[pred["class_ids"]]
  with_masks = bool(np.asarray(pred["has_mask"]).any())
  return eval_lib.evaluate(
      pred["image_scores"], pred["labels"], names,
      anomaly_maps=pred["maps"] if with_masks else None,
      masks=(pred["masks"] > 0.5) if with_masks else None,
      protocol=protocol, domains=domain, metadata=dict(meta))


def evaluate_runs(detector, records: Sequence[Any],
                  all_records: Sequence[Any] | None = None,
                  protocol: str | None = None, batch_size: int = 8,
                  map_size: int | None = None,
                  meta: Mapping[str, Any] | None = None
                  ) -> Iterator[tuple[dict[str, Any], dict, dict]]:
  """Yields (report, run facts, predictions) for every run of `detector`.

  Args:
    detector: anything with the Detector protocol's `eval_runs`,
      `run_facts`, `default_protocol`, `domain` and `checkpoint_dir`.
    records: the records to score; `all_records` every record of the
      dataset (InCTRL draws its prompts from the normal train images).
    protocol: metrics protocol (default: the detector's).
    meta: extra run facts for the report's protocol.json.
  """
  protocol = protocol or detector.default_protocol
  base = {"checkpoint": str(detector.checkpoint_dir),
          "checkpoint_hash": checkpoint_hash(detector.checkpoint_dir),
          **dict(meta or {}), **detector.run_facts()}
  for pred, facts in detector.eval_runs(records, all_records, batch_size,
                                        map_size):
    report = evaluate_pred(pred, protocol, detector.domain,
                           {**base, **facts})
    yield report, facts, pred
