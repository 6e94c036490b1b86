"""Launch scripts: `bash -n` on each, `--help` prints the documented usage
without running anything, the train CLI documents --distributed, and the
SLURM/TPU auto-detection of `--distributed auto`."""

import os
import subprocess
import sys

import pytest

import train_fixtures as tf

LAUNCH = tf.REPO / "launch"
SCRIPTS = sorted(p for p in LAUNCH.rglob("*")
                 if p.suffix in (".sh", ".sbatch"))


def test_every_launch_script_is_listed():
  names = {p.relative_to(LAUNCH).as_posix() for p in SCRIPTS}
  assert {"tpu_vm_setup.sh", "tpu_vm_run.sh", "slurm_gpu.sbatch",
          "recipes/v4-8.sh", "recipes/v5e-32.sh",
          "recipes/8xH100.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
  subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help_documents_usage(script):
  env = dict(os.environ, PATH="/usr/bin:/bin")  # no gcloud, srun, python
  out = subprocess.run(["bash", str(script), "--help"], capture_output=True,
                       text=True, env=env, timeout=30, check=True).stdout
  assert "Usage" in out or "Command:" in out, out
  assert "moeclip" in out.lower() or "launch/" in out, out
  if script.parent.name == "recipes":
    assert "Throughput:" in out


def test_train_cli_help_lists_distributed():
  out = subprocess.run(
      [sys.executable, "-m", "moeclip_jax.train", "--helpfull"],
      capture_output=True, text=True, timeout=120, cwd=tf.REPO,
      env=dict(os.environ, JAX_PLATFORMS="cpu"), check=False)
  text = out.stdout + out.stderr
  assert "--distributed" in text and "auto" in text, text[-2000:]


def test_distributed_auto_detects_cluster_variables(monkeypatch):
  from moeclip_jax.sharding import multihost as cli  # pylint: disable=g-import-not-at-top
  calls = []
  monkeypatch.setattr("jax.distributed.initialize",
                      lambda *a, **k: calls.append(1))
  for var in cli.CLUSTER_VARS:
    monkeypatch.delenv(var, raising=False)
  assert not cli.maybe_initialize_distributed("auto")
  assert not cli.maybe_initialize_distributed("off")
  monkeypatch.setenv("SLURM_JOB_ID", "1")
  assert cli.maybe_initialize_distributed("auto") and calls == [1]
