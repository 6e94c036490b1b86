"""Batched, jitted inference of a loaded detector over datasets and images.

Two paths, both with static batch shapes (padding dropped afterwards):
  * `predict_records`: dataset records -> grain eval_loader (pads, `valid`)
    -> `train.evaluator.predict_dataset` (sharded over the data mesh axis),
    many classes in one pass via a per-class text table;
  * `predict_images`: uint8 images of any size for one class -> resized to
    the model size, fixed-size batches -> `detector.predict`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from moeclip_jax.data import pipeline
from moeclip_jax.data import readers
from moeclip_jax.data import records as rec
from moeclip_jax.data import sources
from moeclip_jax.methods.moeclip import maps
from moeclip_jax.verbs import common

log = logging.getLogger("moeclip_jax.verbs")


class DetectorMethod:
  """Adapts a loaded detector to the trainer's `predict_fn` seam.

  context = {"text": float[C, D, 2]}: one text matrix per class id.
  """

  def __init__(self, detector, domain: str):
    self.detector = detector
    self.domain = maps.canonical_domain(domain)
    # predict_fn depends on the detector and domain only: one jit for all
    # wrappers of them (train.evaluator.make_predict).
    self.jit_key = ("moeclip", detector, self.domain)

  def make_context(self, class_names: Sequence[str], dataset=None) -> dict:
    text = [self.detector.text_features(c, dataset) for c in class_names]
    return {"text": jnp.stack(text)}  # [C, D, 2]

  def predict_fn(self, params, batch, context):
    """The detector's own forward, with one text matrix per image."""
    text = context["text"][batch["class_id"]]  # [B, D, 2]
    amap, score = self.detector._forward_impl(  # pylint: disable=protected-access
        params, batch["image"], text, self.domain)
    return {"anomaly_map": amap, "image_score": score}


@dataclasses.dataclass
class DatasetSpec:
  """Which records to read: reader name, root, split, classes, options."""

  name: str
  root: str | None
  split: str = "test"
  class_names: Sequence[str] | None = None
  options: dict = dataclasses.field(default_factory=dict)


def scan_all(spec: DatasetSpec) -> list[rec.Record]:
  """Every record of the dataset (all splits); reader issues are logged."""
  result = readers.scan(spec.name, spec.root, **spec.options)
  for issue in result.issues:
    log.warning("data: %s", issue)
  return list(result.records)


def scan_records(spec: DatasetSpec,
                 all_records: Sequence[rec.Record] | None = None
                 ) -> list[rec.Record]:
  """Records of the split (and classes) of `scan_all(spec)`."""
  if all_records is None:
    all_records = scan_all(spec)
  records = [r for r in all_records
             if spec.split == "all" or r.split == spec.split]
  if spec.class_names:
    known = set(r.class_name for r in records)
    missing = [c for c in spec.class_names if c not in known]
    if missing:
      raise ValueError(f"{spec.name} at {spec.root}: classes {missing} have "
                       f"no {spec.split!r} images (found {sorted(known)})")
    records = [r for r in records if r.class_name in spec.class_names]
  if not records:
    raise ValueError(f"{spec.name} at {spec.root}: no records in split "
                     f"{spec.split!r}")
  return records


def _mesh_and_batch(batch_size: int):
  from moeclip_jax.sharding import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from moeclip_jax.train import loop  # pylint: disable=g-import-not-at-top
  mesh = mesh_lib.make_mesh({"data": -1})
  per = loop.data_parallel_per_process(mesh)
  return mesh, -(-batch_size // per) * per


def predict_records(detector, records: Sequence[rec.Record], domain: str,
                    batch_size: int = 8, dataset_prompts: str | None = None,
                    map_size: int | None = None) -> dict[str, Any]:
  """`predict_dataset` output (scores, labels, maps, masks, index, ...)
  plus "class_names" (the class vocabulary of `class_ids`)."""
  method = DetectorMethod(detector, domain)
  class_names = rec.class_names(records)
  context = method.make_context(class_names, dataset_prompts)
  return run_method(method, detector.params, context, records,
                    {"preset": "moeclip", "size": detector.image_size},
                    batch_size, map_size)


def run_method(method, params, context, records: Sequence[rec.Record],
               preprocess, batch_size: int = 8, map_size: int | None = None,
               desc: str = "eval") -> dict[str, Any]:
  """Any object with `predict_fn(params, batch, context)` over records.

  The batch is sharded over the `data` mesh axis (static shapes, padding
  dropped); `context` is indexed by the class ids of `rec.class_names(
  records)`, returned as "class_names".
  """
  from moeclip_jax.sharding import partition  # pylint: disable=g-import-not-at-top
  from moeclip_jax.train import evaluator  # pylint: disable=g-import-not-at-top
  class_names = rec.class_names(records)
  mesh, batch = _mesh_and_batch(batch_size)
  cfg = pipeline.PipelineConfig(preprocess=preprocess, augment="none",
                                batch_size=batch)
  loader = pipeline.eval_loader(sources.RecordSource(records), class_names,
                                cfg)
  repl = partition.replicated(mesh)
  context = jax.device_put(context, repl)
  params = jax.device_put(params, repl)
  pred = evaluator.predict_dataset(method, params, context, loader, mesh,
                                   map_size=map_size, desc=desc)
  pred["class_names"] = class_names
  return pred


def resize_uint8(image: np.ndarray, size: int) -> np.ndarray:
  """uint8[H, W, 3] -> uint8[size, size, 3] (bicubic, as the detector)."""
  if image.shape[:2] == (size, size):
    return image
  return np.asarray(Image.fromarray(image).resize((size, size),
                                                  Image.BICUBIC))


def predict_images(detector, images: Sequence[np.ndarray], class_name: str,
                   domain: str | None = None, dataset: str | None = None,
                   batch_size: int = 8, desc: str | None = "predict"
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Raw maps float[N, S, S] (model size) and image scores float[N]."""
  size = detector.image_size
  maps_, scores = [], []
  starts = range(0, len(images), batch_size)
  for start in common.progress(starts, desc, total=len(starts)):
    chunk = [resize_uint8(im, size) for im in images[start:start + batch_size]]
    n = len(chunk)
    chunk += [np.zeros_like(chunk[0])] * (batch_size - n)  # static shape
    out = detector.predict(np.stack(chunk), class_name, domain=domain,
                           dataset=dataset)
    maps_.append(out["anomaly_map"][:n])
    scores.append(out["image_score"][:n])
  if not maps_:
    return np.zeros((0, size, size), np.float32), np.zeros((0,), np.float32)
  return np.concatenate(maps_), np.concatenate(scores)
