"""Periodic held-out (and opt-in target) evaluation through the shared
inference runner, and the export of a trained detector folder (what
`load_detector` reads)."""

from __future__ import annotations

import logging

import jax

from moeclip_jax.checkpoint import params as ckpt_params
from moeclip_jax.data import pipeline, records, sources
from moeclip_jax.inference import runner
from moeclip_jax.models import tokenize
from moeclip_jax.sharding import partition
from moeclip_jax.train import data as data_lib

log = logging.getLogger("moeclip_jax.train")


def evaluate_holdout(run, step: int) -> dict | None:
  """Held-out split of the *source* data (never the target set)."""
  if not run.data.holdout:
    return None
  cfg = run.config.get("eval", {})
  pred = runner.predict_dataset(run.method, run.state.params, run.context,
                         run.data.holdout_loader(), run.mesh,
                         map_size=cfg.get("map_size"), desc="holdout")
  out_dir = run.workdir / "eval" / f"step_{step}" if jax.process_index() == 0 else None
  report = runner.evaluate_predictions(pred, run.data.class_names,
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

  params = partition.to_host(run.state.params)  # all processes (collective)
  if jax.process_index() != 0:
    return
  meta = {"source_format": "moeclip_jax.train", "step": int(run.state.step),
          "workdir": str(run.workdir.absolute())}
  ckpt_params.write_params_checkpoint(
      run.workdir / "detector", params, run.method.checkpoint_config(), meta,
      tokenizer_dir=tokenize.packaged_tokenizer_dir(), overwrite=True)
  log.info("exported detector to %s", run.workdir / "detector")


def evaluate_target(run, step: int) -> dict | None:
  """The *target* set, only behind `eval.select_on_target=True` (logged).

  Choosing checkpoints on the target set makes results no longer zero-shot;
  the default never looks at it during training.
  """

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
  pred = runner.predict_dataset(run.method, run.state.params, context, loader,
                         run.mesh, map_size=cfg.get("map_size"), desc="target")
  out_dir = (run.workdir / "eval_target" / f"step_{step}"
             if jax.process_index() == 0 else None)
  report = runner.evaluate_predictions(pred, names, cfg.get("protocol", "raw"),
                                getattr(run.method, "domain", "industrial"), out_dir)
  means = {k: v for k, v in report["mean"].items() if v is not None}
  log.warning("TARGET step %d %s", step, means)
  run.history.append({"step": step, **{f"target/{k}": v for k, v in means.items()}})
  return report
