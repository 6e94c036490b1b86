"""Experiment tracking: a 5-step tiny run logs to W&B (offline) and MLflow.

Read back with each library's own readers: mlflow.tracking.MlflowClient on
the file store; the W&B run's transaction log (`run-<id>.wandb`) decoded
with wandb's own protobuf `Record` (wandb>=0.19 ships no Python datastore
reader; its block framing is the LevelDB log format, read below).
"""

import json
import pathlib
import struct

import numpy as np
import pytest

import train_fixtures as tf
from moeclip_jax.train import loop
from moeclip_jax.utils import tracking

pytest.importorskip("wandb")
pytest.importorskip("mlflow")

_BLOCK = 32768


def _wandb_records(path: pathlib.Path):
  """wandb's transaction log -> wandb_internal_pb2.Record messages."""
  from wandb.proto import wandb_internal_pb2  # pylint: disable=g-import-not-at-top
  data = path.read_bytes()
  assert data[:4] == b":W&B", path
  pos, chunks = 7, []
  while pos + 7 <= len(data):
    left = _BLOCK - pos % _BLOCK
    if left < 7:  # block trailer padding
      pos += left
      continue
    _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
    if kind == 0 and length == 0:
      pos += left
      continue
    chunks.append(data[pos + 7:pos + 7 + length])
    pos += 7 + length
    if kind in (1, 4):  # FULL or LAST
      record = wandb_internal_pb2.Record()
      record.ParseFromString(b"".join(chunks))
      chunks = []
      yield record


def _wandb_history(run_dir: pathlib.Path):
  history, config = [], {}
  (log_file,) = run_dir.glob("run-*.wandb")
  for record in _wandb_records(log_file):
    kind = record.WhichOneof("record_type")
    if kind == "history":
      row = {}
      for item in record.history.item:
        *parents, leaf = list(item.nested_key) or [item.key]
        node = row
        for key in parents:
          node = node.setdefault(key, {})
        node[leaf] = json.loads(item.value_json)
      history.append(row)
    elif kind in ("run", "config"):
      update = (record.run.config if kind == "run" else record.config).update
      for item in update:
        config[item.key] = json.loads(item.value_json)
  return history, config


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
  mp = pytest.MonkeyPatch()
  mp.setenv("WANDB_MODE", "offline")
  mp.delenv("MLFLOW_TRACKING_URI", raising=False)
  mp.delenv("WANDB_PROJECT", raising=False)
  root = tf.synthetic_mvtec(tmp_path_factory.mktemp("syn") / "mvtec")
  config = tf.tiny_config(root, total_steps=5, log_every=1, ckpt_every=5,
                          eval_every=5, loggers="wandb,mlflow")
  workdir = tmp_path_factory.mktemp("run")
  run = loop.train(config, workdir)
  yield run
  mp.undo()


def test_mlflow_file_store_has_scalars_config_and_heatmaps(tracked_run):
  from mlflow.tracking import MlflowClient  # pylint: disable=g-import-not-at-top
  client = MlflowClient((tracked_run.workdir / "mlruns").as_uri())
  (run,) = client.search_runs(
      [client.get_experiment_by_name("moeclip_jax").experiment_id])
  loss = client.get_metric_history(run.info.run_id, "train/loss")
  assert [m.step for m in loss] == [1, 2, 3, 4, 5]
  expected = {h["step"]: h["loss"] for h in tracked_run.history if "loss" in h}
  np.testing.assert_allclose([m.value for m in loss],
                             [expected[s] for s in range(1, 6)], rtol=1e-6)
  assert "holdout/image_auroc" in run.data.metrics
  assert run.data.params["total_steps"] == "5"
  assert run.data.params["backbone.variant"] == "tiny-test"
  assert run.info.status == "FINISHED"
  names = {a.path for a in client.list_artifacts(run.info.run_id)}
  assert "config.json" in names
  images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
  assert "images/holdout_heatmap_0_step5.png" in images
  local = client.download_artifacts(run.info.run_id,
                                    "images/holdout_heatmap_0_step5.png")
  from PIL import Image  # pylint: disable=g-import-not-at-top
  assert np.asarray(Image.open(local)).ndim == 3


def test_wandb_offline_run_has_scalars_config_and_heatmaps(tracked_run):
  (run_dir,) = (tracked_run.workdir / "wandb").glob("offline-run-*")
  history, config = _wandb_history(run_dir)
  steps = [h["_step"] for h in history if "train/loss" in h]
  assert steps == [1, 2, 3, 4, 5]
  expected = {h["step"]: h["loss"] for h in tracked_run.history if "loss" in h}
  np.testing.assert_allclose(
      [h["train/loss"] for h in history if "train/loss" in h],
      [expected[s] for s in range(1, 6)], rtol=1e-6)
  assert any("holdout/image_auroc" in h for h in history)
  images = [h["holdout/heatmap_0"] for h in history if "holdout/heatmap_0" in h]
  assert images and images[0]["_type"] == "image-file"
  assert (run_dir / "files" / images[0]["path"]).is_file()
  assert config["total_steps"] == 5
  assert config["backbone"]["variant"] == "tiny-test"


def test_unknown_logger_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="unknown logger.*tensorboard,wandb"):
    tracking.make("tensorboard,neptune", tmp_path)


def _tb_events(path: pathlib.Path):
  """TFRecord framing of an event file -> tensorboardX Event messages."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  data, pos = path.read_bytes(), 0
  while pos < len(data):
    (length,) = struct.unpack("<Q", data[pos:pos + 8])
    event = event_pb2.Event()
    event.ParseFromString(data[pos + 12:pos + 12 + length])
    pos += 12 + length + 4
    yield event


def test_tensorboard_backend_writes_scalars_and_images(tmp_path):
  loggers = tracking.make("tensorboard", tmp_path, config={"a": 1})
  loggers.scalars({"eval/x": 0.5, "eval/skip": float("nan")}, 3)
  loggers.image("eval/heatmap_0", np.random.rand(8, 8), 3)
  loggers.close()
  (events,) = (tmp_path / "tb").glob("events.out.tfevents.*")
  values = [(e.step, v) for e in _tb_events(events) for v in e.summary.value]
  scalars = {v.tag: (step, v.simple_value) for step, v in values
             if v.HasField("simple_value")}
  assert scalars == {"eval/x": (3, 0.5)}
  images = [v for _, v in values if v.HasField("image")]
  assert [v.tag for v in images] == ["eval/heatmap_0"]
  assert (images[0].image.height, images[0].image.width) == (8, 8)
