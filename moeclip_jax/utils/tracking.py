"""Experiment tracking: one small logger interface, three backends.

  loggers = tracking.make("tensorboard,wandb,mlflow", workdir, config=cfg)
  loggers.scalars({"train/loss": 0.3}, step=5)
  loggers.image("holdout/heatmap_0", heatmap_uint8_hw3, step=5)
  loggers.close()

Backends (all offline):
  tensorboard  tensorboardX (never TensorFlow) -> `<workdir>/tb`
  wandb        W&B in offline mode (unless WANDB_MODE is set) -> `<workdir>/wandb`
  mlflow       MLflow file store (`file:<workdir>/mlruns` unless
               MLFLOW_TRACKING_URI is set; MLFLOW_ALLOW_FILE_STORE is set
               for it), experiment "moeclip_jax" (MLFLOW_EXPERIMENT_NAME)
wandb and mlflow (mlflow-skinny is enough) are the optional `[tracking]`
extra; they are imported only when named.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Iterable, Mapping

import numpy as np

from moeclip_jax.utils import tree as tree_utils

BACKENDS = ("tensorboard", "wandb", "mlflow")


def parse_names(names) -> tuple[str, ...]:
  """"a,b" or a sequence -> validated backend names (empty: none)."""
  if names is None:
    return ()
  if isinstance(names, str):
    names = names.split(",")
  out = tuple(n.strip().lower() for n in names if n and n.strip())
  bad = [n for n in out if n not in BACKENDS]
  if bad:
    raise ValueError(f"unknown logger(s) {bad}; choose from "
                     f"{','.join(BACKENDS)}")
  return out


def _params(config: Mapping[str, Any]) -> dict[str, str]:
  """Nested config -> {"a.b.c": str(leaf)} (tuples as a.0, a.1; None out)."""
  return {name.replace("/", "."): str(value)
          for name, value in tree_utils.flatten_with_names(dict(config))}


def as_image(image) -> np.ndarray:
  """uint8 [H,W,3] from uint8/float [H,W] (float min-max scaled) or [H,W,3]."""
  arr = np.asarray(image)
  if arr.dtype != np.uint8:
    arr = arr.astype(np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    arr = ((arr - lo) / (hi - lo if hi > lo else 1.0) * 255).round()
    arr = arr.astype(np.uint8)
  if arr.ndim == 2:
    arr = np.repeat(arr[..., None], 3, axis=-1)
  if arr.ndim != 3 or arr.shape[-1] != 3:
    raise ValueError(f"image must be [H,W] or [H,W,3], got {arr.shape}")
  return arr


class TensorBoardLogger:
  """tensorboardX event files under `<workdir>/tb`."""

  def __init__(self, workdir: pathlib.Path, config: Mapping | None):
    import tensorboardX  # pylint: disable=g-import-not-at-top
    self.writer = tensorboardX.SummaryWriter(str(workdir / "tb"))
    if config is not None:
      self.writer.add_text("config", json.dumps(config, indent=2,
                                                default=str), 0)

  def scalars(self, values: Mapping[str, float], step: int) -> None:
    for key, value in values.items():
      self.writer.add_scalar(key, float(value), step)

  def image(self, tag: str, image: np.ndarray, step: int) -> None:
    self.writer.add_image(tag, image, step, dataformats="HWC")

  def close(self) -> None:
    self.writer.close()


class WandbLogger:
  """A W&B run, offline unless WANDB_MODE says otherwise."""

  def __init__(self, workdir: pathlib.Path, config: Mapping | None,
               name: str | None):
    import wandb  # pylint: disable=g-import-not-at-top
    self.wandb = wandb
    self.run = wandb.init(
        dir=str(workdir), mode=os.environ.get("WANDB_MODE", "offline"),
        project=os.environ.get("WANDB_PROJECT", "moeclip_jax"), name=name,
        config=dict(config or {}), reinit="create_new",
        settings=wandb.Settings(silent=True, console="off"))

  def scalars(self, values: Mapping[str, float], step: int) -> None:
    self.run.log({k: float(v) for k, v in values.items()}, step=step)

  def image(self, tag: str, image: np.ndarray, step: int) -> None:
    self.run.log({tag: self.wandb.Image(image)}, step=step)

  def close(self) -> None:
    self.run.finish()


class MlflowLogger:
  """An MLflow run in a file store (`file:<workdir>/mlruns` by default)."""

  def __init__(self, workdir: pathlib.Path, config: Mapping | None,
               name: str | None):
    import mlflow  # pylint: disable=g-import-not-at-top
    uri = os.environ.get("MLFLOW_TRACKING_URI") or (
        (workdir / "mlruns").resolve().as_uri())
    if uri.startswith("file:"):  # mlflow>=3.x gates the file store
      os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    self.client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", "moeclip_jax")
    found = self.client.get_experiment_by_name(experiment)
    exp_id = (found.experiment_id if found is not None
              else self.client.create_experiment(experiment))
    self.run_id = self.client.create_run(exp_id, run_name=name).info.run_id
    if config:
      for key, value in _params(config).items():
        self.client.log_param(self.run_id, key[:250], value[:6000])
      self.client.log_dict(self.run_id, dict(config), "config.json")

  def scalars(self, values: Mapping[str, float], step: int) -> None:
    for key, value in values.items():
      self.client.log_metric(self.run_id, key, float(value), step=step)

  def image(self, tag: str, image: np.ndarray, step: int) -> None:
    self.client.log_image(self.run_id, image,
                          f"images/{tag.replace('/', '_')}_step{step}.png")

  def close(self) -> None:
    self.client.set_terminated(self.run_id)


class Loggers:
  """Fans each call out to the chosen backends; non-finite scalars dropped."""

  def __init__(self, backends: Iterable[Any] = ()):
    self.backends = list(backends)

  def __bool__(self) -> bool:
    return bool(self.backends)

  def scalars(self, values: Mapping[str, Any], step: int) -> None:
    finite = {k: float(v) for k, v in values.items()
              if v is not None and np.isfinite(float(v))}
    if finite:
      for backend in self.backends:
        backend.scalars(finite, step)

  def image(self, tag: str, image, step: int) -> None:
    if self.backends:
      image = as_image(image)
      for backend in self.backends:
        backend.image(tag, image, step)

  def close(self) -> None:
    for backend in self.backends:
      backend.close()


def log_heatmaps(loggers: Loggers, pred: Mapping[str, Any], prefix: str,
                 step: int, count: int = 4) -> None:
  """`count` anomaly maps of a prediction dict (`maps`, `labels`) as images,
  anomalous images first."""
  if not loggers or not len(pred["maps"]):
    return
  order = np.argsort(-np.asarray(pred["labels"]), kind="stable")[:count]
  for rank, i in enumerate(order):
    loggers.image(f"{prefix}/heatmap_{rank}", pred["maps"][i], step)


def make(names, workdir, config: Mapping | None = None,
         name: str | None = None) -> Loggers:
  """Loggers for `names` ("tensorboard,wandb,mlflow") writing under workdir."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  backends = []
  for backend in parse_names(names):
    if backend == "tensorboard":
      backends.append(TensorBoardLogger(workdir, config))
    elif backend == "wandb":
      backends.append(WandbLogger(workdir, config, name))
    else:
      backends.append(MlflowLogger(workdir, config, name))
  return Loggers(backends)
