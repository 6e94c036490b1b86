"""AnomalyMoE training data for the generic trainer (`make_train_data`).

AnomalyMoE trains on **normal** images only (`train/good`, label 0) and is
evaluated on the test split. `config.data`:

  name, root, options   reader (moeclip_jax.data.readers)
  component_masks       folder written by `python -m moeclip_jax.data
                        components` ("" = no component masks); masks are
                        matched by image id (path relative to `root`),
                        never by a glob order
  component_slots       K, mask slots per image (padded with zeros)
  holdout_fraction      share of each (class, label) group of the *test*
                        split used for held-out evaluation (>= 1: all;
                        0 disables it)
  eval_batch_size, worker_count

Batches (process-local numpy): image float32[B, S, S, 3], component_masks
uint8[B, K, S, S] ({0, 1}; K = 1 all-zero without a mask folder),
class_id int32[B], plus the pipeline's label / mask / valid / index fields.
"""

from __future__ import annotations

import functools
import logging
import pathlib
from typing import Any, Sequence

import grain
import jax
import numpy as np

from moeclip_jax.data import components, pipeline, readers, sources
from moeclip_jax.data import records as rec

log = logging.getLogger("moeclip_jax.train")


@functools.lru_cache(maxsize=4)
def _scan(name: str, root: str, options: tuple) -> tuple[rec.Record, ...]:
  result = readers.scan(name, root or None, **dict(options))
  for issue in result.issues:
    log.warning("data: %s", issue)
  return tuple(result.records)


def scan_records(data_cfg: Any) -> list[rec.Record]:
  """Every record of the configured dataset (both splits)."""
  options = tuple(sorted(dict(data_cfg.get("options", {}) or {}).items()))
  records = list(_scan(data_cfg.name, data_cfg.get("root", "") or "",
                       options))
  if not records:
    raise ValueError(f"dataset {data_cfg.name!r} at {data_cfg.get('root')}: "
                     "no records")
  return records


def class_names(data_cfg: Any) -> list[str]:
  """The class vocabulary (class_id = position); [] without a data root."""
  if not data_cfg.get("root"):
    return list(data_cfg.get("class_names", ()) or ())
  return rec.class_names(scan_records(data_cfg))


def select_holdout(records: Sequence[rec.Record], fraction: float,
                   seed: int) -> list[rec.Record]:
  """`fraction` of each (class, label) group (all of it when >= 1)."""
  if fraction <= 0:
    return []
  if fraction >= 1:
    return list(records)
  rng = np.random.default_rng(seed)
  groups: dict[tuple[str, int], list[rec.Record]] = {}
  for r in records:
    groups.setdefault((r.class_name, r.label), []).append(r)
  held = []
  for key in sorted(groups):
    group = groups[key]
    n = max(1, int(round(fraction * len(group))))
    held += [group[i] for i in sorted(rng.permutation(len(group))[:n])]
  return held


def mask_paths(records: Sequence[rec.Record], mask_dir: str, root: str
               ) -> list[pathlib.Path]:
  """OUT/<class>/<image id>.npz per record; a missing file is an error."""
  out = pathlib.Path(mask_dir)
  paths = [out / r.class_name
           / f"{components.image_id(root, r.image_path)}.npz"
           for r in records]
  missing = [p for p in paths if not p.is_file()]
  if missing:
    raise FileNotFoundError(
        f"config.data.component_masks={mask_dir}: {len(missing)} of "
        f"{len(paths)} training images have no mask file, e.g. {missing[0]} "
        "(run `python -m moeclip_jax.data components` with the same --root)")
  return paths


class AttachMasks(grain.transforms.Map):
  """Adds component_masks uint8[K, S, S] read by the example's index."""

  def __init__(self, paths, slots: int, size: int):
    self.paths, self.slots, self.size = paths, slots, size

  def map(self, element):
    masks = np.zeros((self.slots, self.size, self.size), np.uint8)
    if self.paths:
      loaded = components.load_masks(self.paths[int(element["index"])])
      if loaded.shape[1:] != (self.size, self.size):
        raise ValueError(f"{self.paths[int(element['index'])]}: masks "
                         f"{loaded.shape}, expected [n, {self.size}, "
                         f"{self.size}]")
      n = min(len(loaded), self.slots)
      masks[:n] = loaded[:n]
    return dict(element, component_masks=masks)


class AnomalyMoETrainData(pipeline.GrainIteratorData):
  """Normal-only training iterator (resumable) + held-out test records."""

  def __init__(self, config: Any, preprocess: Any, image_size: int,
               batch_multiple: int = 1):
    data_cfg = config.data
    records = scan_records(data_cfg)
    self.class_names = rec.class_names(records)
    train = [r for r in records if r.split == "train" and r.label == 0]
    if not train:
      raise ValueError(f"dataset {data_cfg.name!r} at {data_cfg.root}: no "
                       "normal training images (split 'train', label 0)")
    test = [r for r in records if r.split == "test"]
    self.holdout = select_holdout(test, data_cfg.get("holdout_fraction", 1.0),
                                  config.seed)
    global_batch = config.batch_size
    if global_batch % (jax.process_count() * batch_multiple):
      raise ValueError(
          f"batch_size {global_batch} is not divisible by the "
          f"{jax.process_count() * batch_multiple} data-parallel devices")
    mask_dir = data_cfg.get("component_masks", "") or ""
    paths = mask_paths(train, mask_dir, data_cfg.root) if mask_dir else []
    slots = int(data_cfg.get("component_slots", 5)) if mask_dir else 1
    self.preprocess = preprocess
    self.seed = config.seed
    eval_bs = data_cfg.get("eval_batch_size", 8)
    self.eval_batch_size = -(-eval_bs // batch_multiple) * batch_multiple
    self._loader = self._train_loader(
        train, paths, slots, image_size, global_batch // jax.process_count(),
        data_cfg.get("worker_count", 0))
    self._iter = iter(self._loader)
    log.info("data: %d normal train / %d held-out test records, classes %s,"
             " component masks %s", len(train), len(self.holdout),
             self.class_names, mask_dir or "none")

  def _train_loader(self, train, paths, slots, size, batch, workers):
    shard = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    sampler = grain.samplers.IndexSampler(
        num_records=len(train), shard_options=shard, shuffle=True,
        num_epochs=None, seed=self.seed)
    ops = [pipeline.Prepare(self.preprocess, self.class_names),
           AttachMasks(paths, slots, size),
           grain.transforms.Batch(batch, drop_remainder=True)]
    if workers:
      pipeline._ensure_absl_flags_parsed()  # pylint: disable=protected-access
    return grain.DataLoader(
        data_source=pipeline.Indexed(sources.RecordSource(train)), sampler=sampler,
        operations=ops, worker_count=workers, shard_options=shard)

  def holdout_loader(self, process_local: bool = True):
    del process_local
    return pipeline.holdout_loader(self.holdout, self.class_names,
                                   self.preprocess, self.eval_batch_size,
                                   self.seed)
