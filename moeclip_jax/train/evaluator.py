"""Jitted batched prediction over a dataset, periodic held-out evaluation,
and the export of a trained detector folder (what `load_detector` reads)."""

from __future__ import annotations

import functools
import logging
from typing import Any, Sequence

import jax
import numpy as np
import tqdm

from moeclip_jax.eval import evaluate as eval_lib
from moeclip_jax.eval import reports
from moeclip_jax.sharding import partition

log = logging.getLogger("moeclip_jax.train")
BATCH_KEYS = ("image", "class_id")
HOST_KEYS = ("valid", "label", "class_id", "has_mask", "index", "mask")


class _JitKey:
  """Hashes and compares by a method's `jit_key`; carries the method."""

  def __init__(self, key, method):
    self.key, self.method = key, method

  def __hash__(self):
    return hash(self.key)

  def __eq__(self, other):
    return isinstance(other, _JitKey) and self.key == other.key


def make_predict(method, mesh):
  """jit(predict_fn) with the batch sharded over the data axes.

  Cached per (method, mesh), so periodic evaluations reuse one compiled
  function instead of re-tracing a fresh jit each time. A method with a
  `jit_key` attribute (a hashable naming what its `predict_fn` computes,
  e.g. (kind, detector)) shares the jitted function of every method with
  an equal key: per-class and per-draw wrappers of one detector compile
  once per input shape.
  """
  key = getattr(method, "jit_key", None)
  return _make_predict(method if key is None else _JitKey(key, method), mesh)


@functools.lru_cache(maxsize=8)
def _make_predict(owner, mesh):
  method = owner.method if isinstance(owner, _JitKey) else owner
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
  with jax.set_mesh(mesh):
    for batch in tqdm.tqdm(loader, desc=desc, unit="batch", disable=None):
      inputs = partition_batch(batch, batch_sh)
      out = jax.device_get(predict(params, inputs, context))
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
  return {k: np.concatenate(v, 0) for k, v in parts.items()}


def partition_batch(batch: dict, sharding) -> dict:
  from moeclip_jax.data import pipeline  # pylint: disable=g-import-not-at-top
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


def evaluate_holdout(run, step: int) -> dict | None:
  """Held-out split of the *source* data (never the target set)."""
  if not run.data.holdout:
    return None
  cfg = run.config.get("eval", {})
  pred = predict_dataset(run.method, run.state.params, run.context,
                         run.data.holdout_loader(), run.mesh,
                         map_size=cfg.get("map_size"), desc="holdout")
  out_dir = run.workdir / "eval" / f"step_{step}" if jax.process_index() == 0 else None
  report = evaluate_predictions(pred, run.data.class_names,
                                cfg.get("protocol", "raw"), getattr(run.method, "domain", "industrial"),
                                out_dir)
  means = {k: v for k, v in report["mean"].items() if v is not None}
  log.info("holdout step %d %s", step, means)
  run.history.append({"step": step, **{f"holdout/{k}": v for k, v in means.items()}})
  if run.writer is not None:
    for key, value in means.items():
      run.writer.add_scalar(f"holdout/{key}", value, step)
  return report


def export_detector(run) -> None:
  """Writes `<workdir>/detector/`: a self-contained checkpoint folder."""
  from moeclip_jax.convert import common  # pylint: disable=g-import-not-at-top
  from moeclip_jax.models import tokenize  # pylint: disable=g-import-not-at-top

  params = partition.to_host(run.state.params)  # all processes (collective)
  if jax.process_index() != 0:
    return
  meta = {"source_format": "moeclip_jax.train", "step": int(run.state.step),
          "workdir": str(run.workdir.absolute())}
  common.write_params_checkpoint(
      run.workdir / "detector", params, run.method.checkpoint_config(), meta,
      tokenizer_dir=tokenize.packaged_tokenizer_dir(), overwrite=True)
  log.info("exported detector to %s", run.workdir / "detector")


def evaluate_target(run, step: int) -> dict | None:
  """The *target* set, only behind `eval.select_on_target=True` (logged).

  Choosing checkpoints on the target set makes results no longer zero-shot;
  the default never looks at it during training.
  """
  from moeclip_jax.data import pipeline, records, sources  # pylint: disable=g-import-not-at-top
  from moeclip_jax.train import data as data_lib  # pylint: disable=g-import-not-at-top

  cfg = run.config.get("eval", {})
  target = cfg.get("target") or {}
  if not cfg.get("select_on_target", False) or not target.get("name"):
    return None
  log.warning("eval.select_on_target=True: evaluating on the TARGET set %r "
              "at step %d; checkpoints chosen this way are not zero-shot",
              target.get("name"), step)
  recs = data_lib.scan_records(target)
  names = records.class_names(recs)
  context = run.method.make_context(run.state.params, names)
  loader = pipeline.eval_loader(
      sources.RecordSource(recs), names,
      pipeline.PipelineConfig(preprocess=run.method.preprocess, augment="none",
                              batch_size=run.data.eval_batch_size))
  pred = predict_dataset(run.method, run.state.params, context, loader,
                         run.mesh, map_size=cfg.get("map_size"), desc="target")
  out_dir = (run.workdir / "eval_target" / f"step_{step}"
             if jax.process_index() == 0 else None)
  report = evaluate_predictions(pred, names, cfg.get("protocol", "raw"),
                                getattr(run.method, "domain", "industrial"), out_dir)
  means = {k: v for k, v in report["mean"].items() if v is not None}
  log.warning("TARGET step %d %s", step, means)
  run.history.append({"step": step, **{f"target/{k}": v for k, v in means.items()}})
  return report
