"""A real two-process run on localhost: `jax.distributed` with a coordinator
on 127.0.0.1, two CPU processes with 4 fake devices each (8 global), each
feeding only its rows of every global batch. 2 training steps must match the
same run in one process on 8 devices (FSDP preset: parameters, optimizer
state and the batch are all split across the two processes)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import train_fixtures as tf

WORKER = tf.REPO / "tests" / "train_worker.py"
STEPS = 2


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def _cmd(data, workdir, out, *extra):
  return [sys.executable, str(WORKER), "--data", str(data), "--workdir",
          str(workdir), "--steps", str(STEPS), "--out", str(out),
          "--fake_data", "--preset", "fsdp", "--ckpt_every", "1", *extra]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return tf.synthetic_mvtec(tmp_path_factory.mktemp("syn") / "mvtec")


@pytest.mark.slow  # three trainer processes: ~80 CPU-seconds
def test_two_processes_match_one(tmp_path, data_root):
  port = _free_port()
  procs = [
      subprocess.Popen(
          _cmd(data_root, tmp_path / "two", tmp_path / "two.json",
               "--coordinator", f"127.0.0.1:{port}", "--num_processes", "2",
               "--process_id", str(i)),
          env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
          text=True)
      for i in range(2)]
  one = subprocess.run(_cmd(data_root, tmp_path / "one", tmp_path / "one.json"),
                       env=_env(8), capture_output=True, text=True,
                       timeout=900, check=False)
  outs = [p.communicate(timeout=900)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  assert one.returncode == 0, (one.stdout + one.stderr)[-4000:]
  two_hist = json.loads((tmp_path / "two.json").read_text())
  one_hist = json.loads((tmp_path / "one.json").read_text())
  assert [h["step"] for h in two_hist] == [1, 2]
  for key in ("loss", "grad_norm", "update_norm"):
    np.testing.assert_allclose([h[key] for h in two_hist],
                               [h[key] for h in one_hist], rtol=1e-5,
                               err_msg=key)
  # Orbax wrote one multi-host checkpoint; only process 0 wrote the log.
  assert (tmp_path / "two" / "ckpt" / "2").is_dir()
  assert (tmp_path / "two" / "train.log").is_file()
  assert (tmp_path / "two" / "detector" / "config.json").is_file()
