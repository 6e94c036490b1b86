"""InCTRL training data for the generic loop: episodes from reader records.

Official recipe (spec A4): per class of the auxiliary set, the normals are
all normal images of every split (train/good + test/good) and the anomalies
the test defects. A batch holds `per_label` normal and `per_label` anomalous
queries drawn from endless random permutations of the whole auxiliary set
(`BalancedBatchSampler`); each query comes with K normal prompts of its own
class drawn afresh, without replacement (the query itself may be among them,
as in the official `IC_dataset`).

Images are decoded, resized (the `inctrl` preset: shorter side, bicubic,
centre crop) and cached in memory once as uint8 (auxiliary sets are small:
MVTec AD is about 0.9 GB at 240 px); batches stay uint8 and are normalised on
the device (4x less host-to-device traffic than float32).

`data.holdout_classes` names classes kept out of training altogether (the
cross-class protocol of InCTRL); their images form the held-out evaluation
set, scored against K prompts drawn once with the seed from their normals
(`eval_prompts`). Empty (the default) disables held-out evaluation.

The sampler's state (numpy bit-generator state + permutation queues) is a
JSON string, so a resumed run draws exactly the episodes an uninterrupted one
would.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
from typing import Any, Sequence

import jax
import numpy as np

from moeclip_jax.data import images, pipeline, readers, transforms
from moeclip_jax.data import records as rec
from moeclip_jax.methods.inctrl import fewshot

log = logging.getLogger("moeclip_jax.train")
Pool = dict[str, np.ndarray]  # class name -> uint8[M, S, S, 3]


class EpisodeSampler:
  """Balanced batches of (query, K same-class normal prompts, label).

  Args:
    normals: class name -> [M, ...] normal images (any dtype).
    anomalies: class name -> [A, ...] anomalous images.
    shots: K.
    per_label: queries per label in a batch (8 officially).
    seed: numpy seed (the official RNG_SEED is 10).
  """

  def __init__(self, normals: Pool, anomalies: Pool, shots: int,
               per_label: int = 8, seed: int = 10):
    small = {c: len(v) for c, v in normals.items() if len(v) < shots}
    if small:
      raise ValueError(f"classes with fewer than K={shots} normal images for "
                       f"prompts: {small}")
    for label, pool in (("normal", normals), ("anomalous", anomalies)):
      if not any(len(v) for v in pool.values()):
        raise ValueError(f"no {label} training images")
    self.normals, self.anomalies = normals, anomalies
    self.shots, self.per_label = shots, per_label
    self._rng = np.random.default_rng(seed)
    self._index = {
        label: [(c, i) for c in sorted(pool) for i in range(len(pool[c]))]
        for label, pool in ((0, normals), (1, anomalies))}
    self._queue: dict[int, list[int]] = {0: [], 1: []}

  def _next(self, label: int) -> tuple[str, int]:
    if not self._queue[label]:
      self._queue[label] = self._rng.permutation(
          len(self._index[label])).tolist()
    return self._index[label][self._queue[label].pop()]

  def sample(self) -> tuple[dict, list[str]]:
    """(batch {query [B, ...], prompts [B, K, ...], label int32[B]}, class
    names of the queries); normals first, then anomalies."""
    queries, prompts, labels, names = [], [], [], []
    for label, pool in ((0, self.normals), (1, self.anomalies)):
      for _ in range(self.per_label):
        cls, i = self._next(label)
        idx = self._rng.choice(len(self.normals[cls]), self.shots,
                               replace=False)
        queries.append(pool[cls][i])
        prompts.append(self.normals[cls][idx])
        labels.append(label)
        names.append(cls)
    batch = {"query": np.stack(queries), "prompts": np.stack(prompts),
             "label": np.asarray(labels, np.int32)}
    return batch, names

  def state(self) -> str:
    """JSON: bit-generator state, permutation queues, pool sizes."""
    return json.dumps({
        "rng": self._rng.bit_generator.state,
        "queue": [self._queue[0], self._queue[1]],
        "sizes": [len(self._index[0]), len(self._index[1])]})

  def restore(self, state: str) -> None:
    """Inverse of `state`; fails if the pools changed size."""
    raw = json.loads(state)
    sizes = [len(self._index[0]), len(self._index[1])]
    if raw.get("sizes") != sizes:
      raise ValueError(
          f"episode sampler state is for pools of {raw.get('sizes')} "
          f"(normal, anomalous) images, this dataset has {sizes}: the "
          "auxiliary data changed since the checkpoint")
    self._rng.bit_generator.state = raw["rng"]
    self._queue = {0: list(raw["queue"][0]), 1: list(raw["queue"][1])}


def preprocess_config(image_size: int) -> transforms.Preprocess:
  """The `inctrl` preset at the model's input size."""
  return transforms.get_preprocess({"preset": "inctrl", "size": image_size,
                                    "crop": image_size})


def _load(record: rec.Record, cfg: transforms.Preprocess) -> np.ndarray:
  image, _ = images.load_pair(record.image_path, None, record.crop)
  return transforms.resize_image(image, cfg)  # uint8[S, S, 3]


def load_pools(records: Sequence[rec.Record], cfg: transforms.Preprocess,
               max_per_class: int = 0, seed: int = 0,
               workers: int = 4) -> tuple[Pool, Pool]:
  """Official aux split, decoded: (normals of any split, test anomalies).

  Returns:
    (normals, anomalies): class -> uint8[N, S, S, 3], files in sorted order
    (a random subset of `max_per_class` per class and label when > 0).
  """
  rng = np.random.default_rng(seed)
  picked: dict[tuple[int, str], list[rec.Record]] = {}
  for name in sorted({r.class_name for r in records}):
    for label in (0, 1):
      group = sorted((r for r in records if r.class_name == name
                      and r.label == label
                      and (label == 0 or r.split == "test")),
                     key=lambda r: (r.image_path, r.crop or ()))
      if max_per_class and len(group) > max_per_class:
        keep = np.sort(rng.choice(len(group), max_per_class, replace=False))
        group = [group[i] for i in keep]
      if group:
        picked[(label, name)] = group
  flat = [r for group in picked.values() for r in group]
  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
    decoded = list(pool.map(lambda r: _load(r, cfg), flat))
  pools: tuple[Pool, Pool] = ({}, {})
  start = 0
  for (label, name), group in picked.items():
    pools[label][name] = np.stack(decoded[start:start + len(group)])
    start += len(group)
  return pools


def split_holdout(records: Sequence[rec.Record], holdout_classes
                  ) -> tuple[list[rec.Record], list[rec.Record]]:
  """(training records, records of the held-out classes)."""
  held = set(holdout_classes)
  unknown = held - {r.class_name for r in records}
  if unknown:
    raise ValueError(f"data.holdout_classes {sorted(unknown)} are not in the "
                     "dataset")
  return ([r for r in records if r.class_name not in held],
          [r for r in records if r.class_name in held])


def scan(data_cfg: Any) -> list[rec.Record]:
  """All records of `config.data` (every split)."""
  result = readers.scan(data_cfg.name, data_cfg.get("root") or None,
                        **dict(data_cfg.get("options", {})))
  for issue in result.issues:
    log.warning("data: %s", issue)
  if not result.records:
    raise ValueError(f"dataset {data_cfg.name!r} at {data_cfg.get('root')}: "
                     "no records")
  return list(result.records)


def _prompt_records(records: Sequence[rec.Record], shots: int,
                    seed: int) -> list[rec.Record]:
  """K normals of one class drawn with `seed` (train split preferred, as the
  official test protocol draws its prompts from train/good)."""
  normals = sorted((r for r in records if r.label == 0),
                   key=lambda r: (r.image_path, r.crop or ()))
  train = [r for r in normals if r.split == "train"]
  pool = train if len(train) >= shots else normals
  return [pool[i] for i in fewshot.draw_prompt_indices(len(pool), shots, seed)]


class InCTRLTrainData:
  """The generic loop's data object for InCTRL (see methods/base.py).

  `next()` gives a process-local batch {query uint8[b, S, S, 3], prompts
  uint8[b, K, S, S, 3], label int32[b], class_id int32[b]}, b = 2 *
  per_label / process_count: per_label normals then per_label anomalies.
  """

  def __init__(self, config: Any, image_size: int, batch_multiple: int = 1):
    data_cfg = config.data
    self.shots, self.seed = int(config.shots), int(config.seed)
    per_label = int(data_cfg.per_label)
    procs = jax.process_count()
    if per_label % procs or (2 * per_label // procs) % batch_multiple:
      raise ValueError(
          f"data.per_label={per_label}: the batch of 2 x per_label = "
          f"{2 * per_label} queries must split evenly over {procs} "
          f"process(es) x {batch_multiple} data-parallel device(s) each "
          "(set --config.data.per_label or the mesh)")
    self.preprocess = preprocess_config(image_size)
    records = scan(data_cfg)
    self.class_names = rec.class_names(records)
    train, held = split_holdout(records, data_cfg.get("holdout_classes", ()))
    self.normals, self.anomalies = load_pools(
        train, self.preprocess, data_cfg.get("max_per_class", 0), self.seed,
        data_cfg.get("worker_count", 0) or 4)
    self._prompts = {c: _prompt_records([r for r in held if r.class_name == c],
                                        self.shots, self.seed)
                     for c in sorted({r.class_name for r in held})}
    chosen = {id(r) for group in self._prompts.values() for r in group}
    self.holdout = [r for r in held if id(r) not in chosen]
    self.sampler = EpisodeSampler(
        self.normals, self.anomalies, self.shots, per_label // procs,
        self.seed + 1000 * jax.process_index())
    self._ids = {name: i for i, name in enumerate(self.class_names)}
    eval_bs = data_cfg.get("eval_batch_size", 8)
    self.eval_batch_size = -(-eval_bs // batch_multiple) * batch_multiple
    log.info("data: normals %s, anomalies %s, held-out classes %s "
             "(%d queries)", _sizes(self.normals), _sizes(self.anomalies),
             sorted(self._prompts), len(self.holdout))

  def next(self) -> dict:
    batch, names = self.sampler.sample()
    batch["class_id"] = np.asarray([self._ids[n] for n in names], np.int32)
    return batch

  def state(self) -> str:
    return self.sampler.state()

  def restore(self, state: str) -> None:
    self.sampler.restore(state)

  def holdout_loader(self, process_local: bool = True):
    del process_local
    return pipeline.holdout_loader(self.holdout, self.class_names,
                                   self.preprocess, self.eval_batch_size,
                                   self.seed)

  def eval_prompts(self, class_names: Sequence[str]) -> np.ndarray:
    """uint8[C, K, S, S, 3]: fixed prompts per class, drawn with the seed.

    Held-out classes: K of their normals (not among the held-out queries);
    training classes: K of their cached training normals.
    """
    out = []
    for name in class_names:
      if name in self._prompts:
        out.append(np.stack([_load(r, self.preprocess)
                             for r in self._prompts[name]]))
      elif name in self.normals:
        idx = fewshot.draw_prompt_indices(len(self.normals[name]),
                                          self.shots, self.seed)
        out.append(self.normals[name][idx])
      else:
        raise ValueError(
            f"InCTRL needs K={self.shots} normal prompt images of class "
            f"{name!r}, which is not in the training data {self.class_names}"
            " (for other sets use python -m moeclip_jax.methods.inctrl."
            "evaluate)")
    return np.stack(out)


def _sizes(pool: Pool) -> dict[str, int]:
  return {c: len(v) for c, v in pool.items()}
