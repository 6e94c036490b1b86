"""Preemption safety: a training process killed with SIGKILL mid-run resumes
from its last complete checkpoint and continues exactly (same losses as an
uninterrupted run, data-iterator position included)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

import train_fixtures as tf
from moeclip_jax.train import loop

WORKER = tf.REPO / "tests" / "train_worker.py"
STEPS = 10


def _worker(data, workdir, out, *extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  cmd = [sys.executable, str(WORKER), "--data", str(data), "--workdir",
         str(workdir), "--steps", str(STEPS), "--out", str(out), *extra]
  return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _kill_after_batch(proc, batch: int, timeout: float = 600) -> list[str]:
  lines, deadline = [], time.time() + timeout
  for line in proc.stdout:
    lines.append(line)
    if line.startswith(f"batch {batch}"):
      proc.send_signal(signal.SIGKILL)
      break
    assert time.time() < deadline, "".join(lines[-30:])
  proc.wait()
  return lines


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
  data = tf.synthetic_mvtec(tmp_path / "mvtec")
  work = tmp_path / "killed"
  proc = _worker(data, work, tmp_path / "unused.json", "--sleep", "0.4")
  lines = _kill_after_batch(proc, 8)
  assert proc.returncode == -signal.SIGKILL, "".join(lines[-30:])
  steps = sorted(int(p.name) for p in (work / "ckpt").iterdir()
                 if p.name.isdigit())
  assert steps and max(steps) < STEPS, steps

  resumed = _worker(data, work, tmp_path / "resumed.json")
  out, _ = resumed.communicate(timeout=900)
  assert resumed.returncode == 0, out[-3000:]
  history = json.loads((tmp_path / "resumed.json").read_text())
  first = history[0]["step"]
  assert 2 < first <= 9, first  # resumed from a checkpoint past step 2

  full = loop.train(tf.tiny_config(data, total_steps=STEPS, log_every=1,
                                   ckpt_every=2), tmp_path / "full")
  want = {h["step"]: h["loss"] for h in full.history}
  got = {h["step"]: h["loss"] for h in history}
  assert sorted(got) == list(range(first, STEPS + 1))
  np.testing.assert_allclose([got[s] for s in sorted(got)],
                             [want[s] for s in sorted(got)], rtol=1e-6)
