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
          "recipes/8xH100.sh", "recipes/benchmark_pod.sh",
          "slurm_benchmark_array.sbatch"} <= names


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


def _fake(bin_dir, name):
  """A `name` on PATH that records its arguments, one call per line."""
  path = bin_dir / name
  path.write_text(f'#!/bin/sh\necho "$*" >> "{bin_dir}/{name}.calls"\n')
  path.chmod(0o755)
  return bin_dir / f"{name}.calls"


def test_pod_benchmark_recipe_runs_one_shard_per_host(tmp_path):
  calls = _fake(tmp_path, "gcloud")
  env = dict(os.environ, PATH=f"{tmp_path}:/usr/bin:/bin")
  subprocess.run(["bash", str(LAUNCH / "recipes" / "benchmark_pod.sh"),
                  "my-v5e", "zone-a", "--suite", "moeclip_zsad13", "--out",
                  "/tmp/b/shard_{shard}"], env=env, check=True, timeout=60)
  scp, ssh = calls.read_text().splitlines()
  assert scp.startswith("compute tpus tpu-vm scp") and "--worker=all" in scp
  assert "--worker=all" in ssh and "my-v5e" in ssh
  assert ("-m moeclip_jax.benchmark run --shard auto --distributed on "
          "--suite moeclip_zsad13 --out /tmp/b/shard_\\{shard\\}") in ssh


def test_slurm_array_benchmark_passes_auto_shard(tmp_path):
  calls = _fake(tmp_path, "python")
  env = dict(os.environ, PATH=f"{tmp_path}:/usr/bin:/bin")
  subprocess.run(["bash", str(LAUNCH / "slurm_benchmark_array.sbatch"),
                  "--suite", "inctrl_fewshot", "--out", "/s/b"], env=env,
                 check=True, timeout=60)
  assert calls.read_text().split() == [
      "-m", "moeclip_jax.benchmark", "run", "--shard", "auto",
      "--distributed", "off", "--suite", "inctrl_fewshot", "--out", "/s/b"]


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
