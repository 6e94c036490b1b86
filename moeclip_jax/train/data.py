"""Trainer-side data: records from a reader, a held-out split, loaders.

`config.data`:
  name, root, options   reader (moeclip_jax.data.readers) and its options
  split                 "test" (the CLIP-AD protocol trains on the source
                        dataset's test split with masks), "train" or "all"
  holdout_fraction      share of each class kept for periodic evaluation
  synthetic_p           synthetic defects on normal training images
  augment               "moeclip" | "none"
  eval_batch_size, worker_count
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import jax
import numpy as np

from moeclip_jax.data import pipeline, readers, sources
from moeclip_jax.data import records as rec

log = logging.getLogger("moeclip_jax.train")


def scan_records(data_cfg: Any) -> list[rec.Record]:
  result = readers.scan(data_cfg.name, data_cfg.get("root") or None,
                        **dict(data_cfg.get("options", {})))
  for issue in result.issues:
    log.warning("data: %s", issue)
  split = data_cfg.get("split", "test")
  records = [r for r in result.records if split == "all" or r.split == split]
  if not records:
    raise ValueError(f"dataset {data_cfg.name!r} at {data_cfg.get('root')}: "
                     f"no records in split {split!r}")
  return records


def holdout_split(records: Sequence[rec.Record], fraction: float, seed: int
                  ) -> tuple[list[rec.Record], list[rec.Record]]:
  """Per (class, label) random split; both labels stay in the holdout."""
  rng = np.random.default_rng(seed)
  train, held = [], []
  groups: dict[tuple[str, int], list[rec.Record]] = {}
  for r in records:
    groups.setdefault((r.class_name, r.label), []).append(r)
  for key in sorted(groups):
    group = groups[key]
    order = rng.permutation(len(group))
    n_held = int(round(fraction * len(group)))
    if fraction > 0 and len(group) > 1:
      n_held = max(1, min(n_held, len(group) - 1))
    held += [group[i] for i in order[:n_held]]
    train += [group[i] for i in order[n_held:]]
  return train, held


def to_global(batch: dict, sharding) -> dict:
  return pipeline.to_global(batch, sharding)


class TrainData(pipeline.GrainIteratorData):
  """Training iterator (resumable) plus the held-out evaluation records."""

  def __init__(self, config: Any, method: Any, batch_multiple: int = 1):
    """`batch_multiple`: data-parallel devices per process (batch divisor)."""
    data_cfg = config.data
    records = scan_records(data_cfg)
    train, self.holdout = holdout_split(
        records, data_cfg.get("holdout_fraction", 0.1), config.seed)
    if not train:
      raise ValueError("no training records left after the held-out split")
    self.class_names = rec.class_names(records)
    global_batch = config.batch_size
    if global_batch % (jax.process_count() * batch_multiple):
      raise ValueError(
          f"batch_size {global_batch} is not divisible by the "
          f"{jax.process_count() * batch_multiple} data-parallel devices "
          "(set --config.batch_size or the mesh)")
    self.pipeline_cfg = pipeline.PipelineConfig(
        preprocess=method.preprocess, augment=data_cfg.get("augment", "moeclip"),
        batch_size=global_batch // jax.process_count(), seed=config.seed,
        worker_count=data_cfg.get("worker_count", 0),
        synthetic_p=data_cfg.get("synthetic_p", 0.0))
    eval_bs = data_cfg.get("eval_batch_size", 8)
    self.eval_batch_size = -(-eval_bs // batch_multiple) * batch_multiple
    loader = pipeline.train_loader(sources.RecordSource(train),
                                   self.class_names, self.pipeline_cfg)
    self._iter = iter(loader)
    log.info("data: %d train / %d held-out records, classes %s", len(train),
             len(self.holdout), self.class_names)

  def holdout_loader(self, process_local: bool = True):
    del process_local
    return pipeline.holdout_loader(self.holdout, self.class_names,
                                   self.pipeline_cfg.preprocess,
                                   self.eval_batch_size,
                                   self.pipeline_cfg.seed)
