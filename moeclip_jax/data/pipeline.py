"""grain input pipelines: seeded, sharded per process, resumable.

    source (RecordSource or tfds_builders.load(...)[split])
      -> [SyntheticDefects]      optional, raw uint8 images, p per normal image
      -> Prepare                 method preprocessing (transforms.Preprocess)
      -> [JointAugment]          training only (MoECLIP's by default)
      -> Batch

Batches are dicts of numpy arrays:
  image    float32[B, S, S, 3]   normalised
  mask     float32[B, S, S]      {0, 1}
  label    int32[B]              0 normal / 1 anomalous
  class_id int32[B]              index into the class vocabulary
  has_mask bool[B]
  valid    bool[B]               False on eval padding
  index    int64[B]              source index (-1 on padding)

Randomness comes from grain's per-record generators (seed + record), so a
restored iterator (`get_state` / `set_state`, or orbax via
`grain.checkpoint`) yields exactly the batches an uninterrupted one would.
Evaluation pads the dataset to a multiple of batch_size x process_count with
items whose `valid` is False, so every batch has a static shape and every
process runs the same number of steps.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence

from absl import flags
import grain
import jax
import numpy as np

from moeclip_jax.data import sources, synthetic, transforms


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """Input-pipeline settings.

  Attributes:
    preprocess: preset name, Preprocess, or mapping (transforms.py).
    augment: "moeclip" or "none" (training only; eval never augments).
    batch_size: per-process batch size.
    seed: shuffle and augmentation seed.
    num_epochs: None repeats forever (training).
    drop_remainder: drop the last partial training batch (static shapes).
    worker_count: grain worker processes (0 = in the main process).
    worker_buffer_size: batches each worker prepares ahead.
    synthetic_p: probability of a synthetic defect on a normal image.
  """

  preprocess: Any = "moeclip"
  augment: str = "moeclip"
  batch_size: int = 8
  seed: int = 0
  num_epochs: Optional[int] = None
  drop_remainder: bool = True
  worker_count: int = 0
  worker_buffer_size: int = 1
  synthetic_p: float = 0.0


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class SyntheticDefects(grain.transforms.RandomMap):
  """Turns a normal image into an anomalous one with probability p."""

  def __init__(self, p: float):
    self.p = p

  def random_map(self, element, rng: np.random.Generator):
    if not element.get("valid", True) or int(element["label"]) != 0:
      return element
    if rng.random() >= self.p:
      return element
    image, mask, kind = synthetic.apply(element["image"], rng)
    return dict(element, image=image, mask=mask[..., None], label=1,
                has_mask=True, defect_type=f"synthetic_{kind}")


class Prepare(grain.transforms.Map):
  """Decoded example -> preprocessed, numeric-only example."""

  def __init__(self, preprocess: Any, class_names: Sequence[str]):
    self.cfg = transforms.get_preprocess(preprocess)
    self.class_ids = {name: i for i, name in enumerate(class_names)}

  def _padding(self) -> dict[str, np.ndarray]:
    s = self.cfg.output_size
    return {"image": np.zeros((s, s, 3), np.float32),
            "mask": np.zeros((s, s), np.float32),
            "label": np.int32(0), "class_id": np.int32(0),
            "has_mask": np.bool_(False), "valid": np.bool_(False),
            "index": np.int64(-1)}

  def map(self, element):
    if not element.get("valid", True):
      return self._padding()
    name = _text(element["class_name"])
    if name not in self.class_ids:
      raise KeyError(f"class {name!r} of {_text(element['image_path'])} is "
                     f"not in the class vocabulary {sorted(self.class_ids)}")
    image = transforms.resize_image(element["image"], self.cfg)  # [S, S, 3]
    return {
        "image": transforms.normalize(image, self.cfg),
        "mask": transforms.resize_mask(element["mask"], self.cfg),  # [S, S]
        "label": np.int32(element["label"]),
        "class_id": np.int32(self.class_ids[name]),
        "has_mask": np.bool_(element["has_mask"]),
        "valid": np.bool_(True),
        "index": np.int64(element.get("index", -1)),
    }


class JointAugment(grain.transforms.RandomMap):
  """transforms.Augment on image and mask together."""

  def __init__(self, augment: transforms.Augment):
    self.augment = augment

  def random_map(self, element, rng: np.random.Generator):
    image, mask = self.augment(element["image"], element["mask"], rng)
    return dict(element, image=image, mask=mask)


class Indexed:
  """Adds the source index to each example (eval bookkeeping, per-record
  side data such as component masks)."""

  def __init__(self, source):
    self._source = source

  def __len__(self):
    return len(self._source)

  def __getitem__(self, index):
    return dict(self._source[index], index=index)

  def __repr__(self):  # grain compares it when restoring an iterator state
    return f"Indexed({self._source!r})"


def _ensure_absl_flags_parsed() -> None:
  """grain's worker processes read absl flags; outside an absl app (pytest,
  a notebook, our CLI) they are unparsed, so mark the defaults as parsed."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _loader(source, sampler, operations, cfg, shard_options):
  if cfg.worker_count > 0:
    _ensure_absl_flags_parsed()
  return grain.DataLoader(
      data_source=source, sampler=sampler, operations=operations,
      worker_count=cfg.worker_count,
      worker_buffer_size=cfg.worker_buffer_size, shard_options=shard_options)


def train_loader(
    source: Any, class_names: Sequence[str], cfg: PipelineConfig,
    shard_options: Optional[grain.sharding.ShardOptions] = None,
) -> grain.DataLoader:
  """Shuffled, augmented, repeating (num_epochs=None) training batches.

  Args:
    source: a random-access source of decoded examples.
    class_names: the class vocabulary (class_id = position).
    cfg: pipeline settings.
    shard_options: default: this JAX process's shard (drop_remainder).
  """
  shard_options = shard_options or grain.sharding.ShardByJaxProcess(
      drop_remainder=True)
  sampler = grain.samplers.IndexSampler(
      num_records=len(source), shard_options=shard_options, shuffle=True,
      num_epochs=cfg.num_epochs, seed=cfg.seed)
  ops = []
  if cfg.synthetic_p > 0:
    ops.append(SyntheticDefects(cfg.synthetic_p))
  ops.append(Prepare(cfg.preprocess, class_names))
  augment = transforms.AUGMENTATIONS[cfg.augment]
  if augment is not None:
    ops.append(JointAugment(augment))
  ops.append(grain.transforms.Batch(cfg.batch_size, cfg.drop_remainder))
  return _loader(source, sampler, ops, cfg, shard_options)


def padded_length(num_records: int, batch_size: int, shard_count: int) -> int:
  """Smallest multiple of batch_size * shard_count >= num_records."""
  step = batch_size * shard_count
  return max(1, math.ceil(num_records / step)) * step


def eval_loader(
    source: Any, class_names: Sequence[str], cfg: PipelineConfig,
    shard_options: Optional[grain.sharding.ShardOptions] = None,
) -> grain.DataLoader:
  """One ordered pass, static-shape batches, padding marked `valid=False`."""
  if shard_options is None:
    shard_options = grain.sharding.ShardOptions(
        shard_index=jax.process_index(), shard_count=jax.process_count())
  length = padded_length(len(source), cfg.batch_size,
                         shard_options.shard_count)
  padded = sources.PaddedSource(Indexed(source), length)
  sampler = grain.samplers.IndexSampler(
      num_records=length, shard_options=shard_options, shuffle=False,
      num_epochs=1, seed=cfg.seed)
  ops = [Prepare(cfg.preprocess, class_names),
         grain.transforms.Batch(cfg.batch_size, drop_remainder=False)]
  return _loader(padded, sampler, ops, cfg, shard_options)


def to_global(batch: dict[str, np.ndarray], sharding: jax.sharding.Sharding):
  """Process-local numpy batch -> global jax.Arrays (batch axis sharded)."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def holdout_loader(records: Sequence[Any], class_names: Sequence[str],
                   preprocess: Any, batch_size: int, seed: int):
  """Deterministic, padded eval loader over held-out records."""
  cfg = PipelineConfig(preprocess=preprocess, augment="none",
                       batch_size=batch_size, seed=seed)
  return eval_loader(sources.RecordSource(records), class_names, cfg)


class GrainIteratorData:
  """next / state / restore over a grain iterator held in `self._iter`."""

  _iter: Any

  def next(self) -> dict:
    return next(self._iter)

  def state(self) -> str:
    raw = self._iter.get_state()
    return raw.decode() if isinstance(raw, bytes) else str(raw)

  def restore(self, state: str) -> None:
    self._iter.set_state(state.encode())
