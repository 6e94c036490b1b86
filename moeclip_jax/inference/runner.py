"""Jitted, sharded prediction of any `predict_fn` over dataset records.

Every dataset run of every method goes through one path (static batch
shapes, padding dropped afterwards):

  records -> grain `eval_loader` (pads, marks `valid`) -> `predict_dataset`
  (jit(predict_fn) with the batch sharded over the data mesh axes) ->
  {image_scores, labels, class_ids, has_mask, index, maps, masks}

`predict_fn(params, batch, context)` is the trainer's seam (methods/base.py):
the held-out evaluation during training and the `eval` verb share it.
Loose images (no dataset) go through `batched` with the same static-shape
rule. Nothing here imports methods/, train/ or verbs/.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Callable, Sequence

import jax
import numpy as np

from moeclip_jax.data import pipeline, readers, sources, transforms
from moeclip_jax.data import records as rec
from moeclip_jax.eval import evaluate as eval_lib
from moeclip_jax.eval import reports
from moeclip_jax.inference import overlay
from moeclip_jax.sharding import mesh as mesh_lib
from moeclip_jax.sharding import partition
from moeclip_jax.utils import console, prefetch

log = logging.getLogger("moeclip_jax.inference")
BATCH_KEYS = ("image", "class_id")
HOST_KEYS = ("valid", "label", "class_id", "has_mask", "index", "mask")
READ_AHEAD = 2  # batches read and decoded ahead of the device


# ---- datasets ------------------------------------------------------------------
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


def mesh_and_batch(batch_size: int):
  """A data-parallel mesh over this process's devices and the batch rounded
  up to a multiple of its data shards. A detector runs in one process: in
  a jax.distributed job (`benchmark run --shard auto`) every host predicts
  its own units on its own chips."""
  mesh = mesh_lib.make_mesh({"data": -1}, devices=jax.local_devices())
  per = partition.data_parallel_per_process(mesh)
  return mesh, -(-batch_size // per) * per


@functools.lru_cache(maxsize=8)
def make_predict(method, mesh):
  """jit(predict_fn) with the batch sharded over the data axes.

  Cached per (method, mesh), so periodic evaluations reuse one compiled
  function instead of re-tracing a fresh jit each time.
  """
  repl = partition.replicated(mesh)
  batch_sh = partition.batch_sharding(mesh)
  return jax.jit(method.predict_fn, in_shardings=(None, batch_sh, repl),
                 out_shardings=repl)


def predict_dataset(method, params, context, loader, mesh,
                    map_size: int | None = None, desc: str = "predict"
                    ) -> dict[str, np.ndarray]:
  """Runs `predict_fn` over `loader`; keeps valid items only.

  Returns:
    dict(image_scores [N], labels [N], class_ids [N], has_mask [N], index [N],
    maps [N, h, w], masks [N, h, w]) with maps/masks at `map_size` if given
    (nearest for masks, area-mean for maps) to bound host memory.
  """
  predict = make_predict(method, mesh)
  batch_sh = partition.batch_sharding(mesh)
  context = jax.device_put(context, partition.replicated(mesh))
  parts: dict[str, list] = {}
  pending = None  # (device outputs, host batch) of the batch in flight
  with jax.set_mesh(mesh):
    # Batch i + 1 is dispatched (and i + 2, i + 3 read and decoded by the
    # prefetch thread) before batch i's outputs are fetched.
    for batch in console.progress(prefetch.background(loader, READ_AHEAD),
                                  desc, unit="batch"):
      out = predict(params, partition_batch(batch, batch_sh), context)
      if pending is not None:
        _collect(parts, *pending, map_size)
      pending = (out, batch)
    if pending is not None:
      _collect(parts, *pending, map_size)
  return {k: np.concatenate(v, 0) for k, v in parts.items()}


def _collect(parts: dict[str, list], out, batch, map_size) -> None:
  """Appends one batch's valid rows (outputs fetched from the device)."""
  out = jax.device_get(out)
  batch = partition.gather_rows({k: batch[k] for k in HOST_KEYS})
  valid = np.asarray(batch["valid"], bool)
  fields = {
      "image_scores": out["image_score"], "labels": batch["label"],
      "class_ids": batch["class_id"], "has_mask": batch["has_mask"],
      "index": batch["index"],
      "maps": _shrink(out["anomaly_map"], map_size, "mean"),
      "masks": _shrink(batch["mask"], map_size, "nearest"),
  }
  for key, value in fields.items():
    parts.setdefault(key, []).append(np.asarray(value)[valid])


def partition_batch(batch: dict, sharding) -> dict:
  return pipeline.to_global({k: batch[k] for k in BATCH_KEYS}, sharding)


def _shrink(x: np.ndarray, size: int | None, how: str) -> np.ndarray:
  x = np.asarray(x)
  if size is None or x.shape[-1] == size:
    return x
  factor = x.shape[-1] // size
  if factor * size != x.shape[-1]:
    raise ValueError(f"eval map size {size} must divide {x.shape[-1]}")
  if how == "nearest":
    return x[..., ::factor, ::factor]
  n, h, w = x.shape
  return x.reshape(n, h // factor, factor, w // factor, factor).mean((2, 4))


def evaluate_predictions(pred: dict, class_names: Sequence[str],
                         protocol: str = "raw", domain: str = "industrial",
                         out_dir=None) -> dict[str, Any]:
  """metrics (metrics.json schema) of `predict_dataset` output."""
  names = np.asarray(class_names)[pred["class_ids"]]
  with_masks = bool(pred["has_mask"].any())
  report = eval_lib.evaluate(
      pred["image_scores"], pred["labels"], names,
      anomaly_maps=pred["maps"] if with_masks else None,
      masks=(pred["masks"] > 0.5) if with_masks else None,
      protocol=protocol, domains=domain)
  if out_dir is not None:
    reports.write_reports(report, str(out_dir))
  return report


def run_method(method, params, context, records: Sequence[rec.Record],
               preprocess, batch_size: int = 8, map_size: int | None = None,
               desc: str = "eval") -> dict[str, Any]:
  """Any object with `predict_fn(params, batch, context)` over records.

  The batch is sharded over the `data` mesh axis (static shapes, padding
  dropped); `context` is indexed by the class ids of `rec.class_names(
  records)`, returned as "class_names".
  """
  class_names = rec.class_names(records)
  mesh, batch = mesh_and_batch(batch_size)
  cfg = pipeline.PipelineConfig(preprocess=preprocess, augment="none",
                                batch_size=batch)
  loader = pipeline.eval_loader(sources.RecordSource(records), class_names,
                                cfg)
  repl = partition.replicated(mesh)
  context = jax.device_put(context, repl)
  params = jax.device_put(params, repl)
  pred = predict_dataset(method, params, context, loader, mesh,
                                   map_size=map_size, desc=desc)
  pred["class_names"] = class_names
  return pred


# ---- loose images --------------------------------------------------------------
def map_to_image(amap: np.ndarray, hw, preprocess) -> np.ndarray:
  """float[S, S] on the model input -> float[H, W] on the original image.

  Undoes `transforms.resize_image`: the map is put back at the centre
  crop's place (border = the crop's edge values) and resized.
  """
  cfg = transforms.get_preprocess(preprocess)
  h, w = hw
  if cfg.resize_mode == "square":
    new_h = new_w = cfg.size
  else:
    short, long = min(w, h), max(w, h)
    new_long = int(cfg.size * long / short)
    new_w, new_h = (cfg.size, new_long) if w <= h else (new_long, cfg.size)
  if cfg.crop:
    top = int(round((new_h - cfg.crop) / 2.0))
    left = int(round((new_w - cfg.crop) / 2.0))
    crop = overlay.resize_map(amap, (cfg.crop, cfg.crop))
    amap = np.pad(crop, ((top, new_h - cfg.crop - top),
                         (left, new_w - cfg.crop - left)), mode="edge")
  return overlay.resize_map(amap, (h, w))


def prepare_images(images: Sequence[np.ndarray], preprocess) -> np.ndarray:
  """uint8 images (any sizes) -> normalised float32[N, S, S, 3]."""
  cfg = transforms.get_preprocess(preprocess)
  if not len(images):
    s = cfg.output_size
    return np.zeros((0, s, s, 3), np.float32)
  return np.stack([transforms.normalize(transforms.resize_image(im, cfg), cfg)
                   for im in images])


def chunks(n: int, batch_size: int):
  return range(0, n, batch_size)


def pad_batch(x: np.ndarray, batch_size: int) -> np.ndarray:
  """Pads the leading axis to `batch_size` with zeros (static shapes)."""
  if len(x) == batch_size:
    return x
  pad = np.zeros((batch_size - len(x),) + x.shape[1:], x.dtype)
  return np.concatenate([x, pad])


def batched(images: Sequence[np.ndarray], size: int, batch_size: int,
            predict: Callable[[Sequence[np.ndarray]], dict],
            desc: str | None = "predict") -> tuple[np.ndarray, np.ndarray]:
  """Runs `predict(chunk)` over fixed-size chunks of `images`.

  `predict` gets `batch_size` images (the last chunk padded with zero
  images, so one compiled shape serves every call) and returns
  {"anomaly_map" [B, S, S], "image_score" [B]}; the padding is dropped.

  Returns:
    (maps float32[N, S, S] at the model size, scores float32[N]).
  """
  maps_, scores = [], []
  starts = range(0, len(images), batch_size)
  for start in console.progress(starts, desc, total=len(starts)):
    chunk = list(images[start:start + batch_size])
    n = len(chunk)
    chunk += [np.zeros_like(chunk[0])] * (batch_size - n)
    out = predict(chunk)
    maps_.append(np.asarray(out["anomaly_map"])[:n])
    scores.append(np.asarray(out["image_score"])[:n])
  if not maps_:
    return np.zeros((0, size, size), np.float32), np.zeros((0,), np.float32)
  return np.concatenate(maps_), np.concatenate(scores)
