"""The generic training loop, in big_vision's section order.

setup -> mesh -> data -> method + params -> optimizer + state -> restore ->
evaluator -> loop (log, NaN guard, eval, checkpoint, SIGTERM) -> final save.
Every section is a small function; `train(config, workdir)` strings them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import pathlib
import signal
from typing import Any

import jax
import jax.numpy as jnp
import tqdm

from moeclip_jax.checkpoint import manager as ckpt_lib
from moeclip_jax.checkpoint import paths
from moeclip_jax.methods import registry
from moeclip_jax.optim import masks
from moeclip_jax.sharding import multihost, partition, presets
from moeclip_jax.train import aot, evaluator
from moeclip_jax.train import data as data_lib
from moeclip_jax.train import state as state_lib
from moeclip_jax.utils import io, tracking

log = logging.getLogger("moeclip_jax.train")
STEP_KEYS = aot.STEP_KEYS


class NonFiniteLossError(FloatingPointError):
  """Raised by the NaN/inf guard; the message names the step."""


@dataclasses.dataclass
class Run:
  """Everything the loop sections share."""

  config: Any
  workdir: pathlib.Path
  mesh: Any = None
  method: Any = None
  data: Any = None
  labels: Any = None
  tx: Any = None
  state: Any = None
  context: Any = None
  manager: Any = None
  loggers: Any = dataclasses.field(default_factory=tracking.Loggers)
  history: list = dataclasses.field(default_factory=list)


# ---- setup ---------------------------------------------------------------------
def setup(config, workdir) -> Run:
  workdir = paths.local_workdir(workdir)  # gs://: local staging + sync_up
  workdir.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    handler = logging.FileHandler(workdir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("moeclip_jax").addHandler(handler)
    logging.getLogger("moeclip_jax").setLevel(logging.INFO)
    io.write_text(workdir / "config.json", config.to_json_best_effort(indent=2))
  run = Run(config=config, workdir=workdir)
  run.mesh = presets.configure(config)  # mesh, logical rules, compile cache
  log.info("mesh %s on %d devices", dict(run.mesh.shape), jax.device_count())
  if jax.process_index() == 0:
    run.loggers = tracking.make(logger_names(config), workdir,
                                config=config.to_dict(), name=workdir.name)
  return run


def logger_names(config) -> str:
  """`config.loggers` ("tensorboard,wandb,mlflow"); legacy `tensorboard`."""
  if "loggers" in config:
    return config.loggers
  return "tensorboard" if config.get("tensorboard", True) else ""


# ---- model, optimizer, state -----------------------------------------------------
def build_state(run: Run) -> None:
  config = run.config
  run.method = registry.make_method(config)
  rng = jax.random.key(config.seed)
  params, _ = partition.sharded_init(run.method.init_fn, rng, run.mesh)
  params = run.method.load_pretrained(params)
  table = masks.label_table(params, run.method.trainable_patterns,
                            run.method.frozen_patterns, _state_patterns(run))
  for path, label, pattern in table:
    log.info("param %-60s %-9s %s", path, label, pattern)
  run.labels = aot.param_labels(run.method, params)
  run.tx = aot.make_tx(run.method, run.config.optim, run.labels)
  opt_state = jax.jit(run.tx.init)(params)
  state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                               opt_state=opt_state)
  run.state = _on_mesh(state, run.mesh)


def _state_patterns(run: Run) -> tuple[str, ...]:
  return tuple(getattr(run.method, "state_patterns", ()))


def make_data(run: Run):
  """The method's training data if it brings its own, else `TrainData`."""
  multiple = data_parallel_per_process(run.mesh)
  if hasattr(run.method, "make_train_data"):
    return run.method.make_train_data(run.config, multiple)
  return data_lib.TrainData(run.config, run.method, multiple)


def batch_keys(run: Run) -> tuple[str, ...]:
  return aot.batch_keys(run.method)


def _on_mesh(tree, mesh):
  """Leaves not yet sharded on `mesh` (scalars, counts) become replicated."""
  repl = partition.replicated(mesh)

  def place(x):
    sharding = getattr(x, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding) and sharding.mesh == mesh:
      return x
    return jax.device_put(x, repl)

  return jax.tree.map(place, tree)


def _abstract_item(run: Run):
  item = state_lib.checkpoint_item(run.state, run.labels)
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      item)


def restore(run: Run) -> str:
  """Resume order: latest in workdir -> config.resume -> pretrained init."""
  run.manager = ckpt_lib.make_manager(
      run.workdir, save_interval_steps=run.config.ckpt_every,
      max_to_keep=run.config.get("keep_ckpts", 3))
  sources = [("workdir", run.manager)]
  if run.config.get("resume"):
    sources.append(("config.resume", ckpt_lib.make_manager(
        run.config.resume, async_save=False)))
  for name, manager in sources:
    found = ckpt_lib.restore(manager, _abstract_item(run))
    if found is not None:
      item, meta = found
      run.state = _on_mesh(state_lib.restore_from_item(run.state, item),
                           run.mesh)
      if meta.get("data_iter") and run.data is not None:
        run.data.restore(multihost.this_process(meta["data_iter"]))
      log.info("resumed from %s at step %d", name, int(run.state.step))
      return name
  return "init"


# ---- the loop --------------------------------------------------------------------
def _jit_step(run: Run):
  return aot.jit_train_step(run.method, run.tx, run.labels, run.state,
                            run.mesh)


def _check_finite(step: int, scalars: dict) -> None:
  bad = {k: v for k, v in scalars.items() if not math.isfinite(v)}
  if bad:
    raise NonFiniteLossError(f"non-finite values at step {step}: {bad}")


def _log(run: Run, step: int, scalars: dict) -> None:
  run.history.append({"step": step, **scalars})
  log.info("step %d %s", step, " ".join(f"{k}={v:.5g}" for k, v in
                                         sorted(scalars.items())))
  run.loggers.scalars({f"train/{k}": v for k, v in scalars.items()}, step)


def _save(run: Run, step: int, force: bool = False) -> None:
  meta = {"step": step, "config": run.config.to_dict(),
          "checkpoint_config": run.method.checkpoint_config(),
          "data_iter": multihost.per_process(run.data.state())}
  ckpt_lib.save(run.manager, step,
                state_lib.checkpoint_item(run.state, run.labels), meta,
                force=force)


def loop(run: Run) -> None:
  config = run.config
  step_fn = _jit_step(run)
  rng = jax.random.key(config.seed + 1)
  batch_sh = partition.batch_sharding(run.mesh)
  keys = batch_keys(run)
  stop = {"flag": False}
  previous = signal.signal(signal.SIGTERM,
                           lambda *_: stop.__setitem__("flag", True))
  start = int(run.state.step)
  try:
    with jax.set_mesh(run.mesh), tqdm.tqdm(total=config.total_steps, initial=start,
                             desc="train", unit="step", disable=None) as bar:
      for step in range(start + 1, config.total_steps + 1):
        batch = {k: v for k, v in run.data.next().items() if k in keys}
        batch = data_lib.to_global(batch, batch_sh)
        run.state, scalars = step_fn(run.state, batch, run.context, rng)
        bar.update(1)
        if step % config.log_every == 0 or step == config.total_steps:
          scalars = {k: float(v) for k, v in jax.device_get(scalars).items()}
          _check_finite(step, scalars)
          _log(run, step, scalars)
          bar.set_postfix(loss=f"{scalars['loss']:.4f}")
        if config.eval_every and step % config.eval_every == 0:
          evaluator.evaluate_holdout(run, step)
          evaluator.evaluate_target(run, step)
        if step % config.ckpt_every == 0 or stop["flag"]:
          _save(run, step, force=stop["flag"])
        if stop["flag"]:
          log.warning("SIGTERM: saved step %d and stopping", step)
          break
  finally:
    signal.signal(signal.SIGTERM, previous)


data_parallel_per_process = partition.data_parallel_per_process


def train(config, workdir) -> Run:
  """Runs (or resumes) training; returns the Run (history, state)."""
  run = setup(config, workdir)
  build_state(run)
  run.data = make_data(run)
  run.context = run.method.make_context(run.state.params, run.data.class_names)
  run.context = jax.device_put(run.context, partition.replicated(run.mesh))
  restore(run)
  loop(run)
  final = int(run.state.step)
  if run.manager.latest_step() != final:
    _save(run, final, force=True)
  run.manager.wait_until_finished()
  if config.eval_every and final % config.eval_every:  # else done in loop
    evaluator.evaluate_holdout(run, final)
  evaluator.export_detector(run)
  run.loggers.close()
  paths.sync_up(run.workdir)
  return run
