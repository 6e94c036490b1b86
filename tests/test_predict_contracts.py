"""`predict` contracts: honest exit codes, --strict, bounded overlays,
--max-pixels, the calibration-fallback warning, and a resumable
predictions.jsonl after SIGKILL / SIGTERM."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import cli_fixtures
from moeclip_jax.inference import calibration
from moeclip_jax.verbs import predict


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  return cli_fixtures.demo_result(tmp_path_factory)


@pytest.fixture()
def checkpoint(demo, tmp_path):
  return cli_fixtures.uncalibrated_copy(demo, tmp_path / "detector")


def _image(path, h=40, w=40, seed=0):
  rng = np.random.default_rng(seed)
  Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(path)
  return path


def _predict(capsys, *args):
  rc = predict.main([str(a) for a in args])
  return rc, capsys.readouterr()


def _one_error_line(err: str) -> str:
  errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
  assert len(errors) == 1, err
  return errors[0]


def test_typo_empty_folder_and_only_unreadable_exit_2(checkpoint, tmp_path,
                                                      capsys):
  (tmp_path / "empty").mkdir()
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "x.png").write_text("not a png")
  cases = {"nope.png": "nope.png", str(tmp_path / "empty"): "no image files",
           str(tmp_path / "bad"): "x.png"}
  for source, named in cases.items():
    rc, out = _predict(capsys, source, "--checkpoint", checkpoint, "--out",
                       tmp_path / "out")
    assert rc == 2, (source, out.err)
    line = _one_error_line(out.err)
    assert "no image could be predicted" in line and named in line, line


def test_partial_success_exits_0_and_strict_makes_it_fatal(
    checkpoint, tmp_path, capsys):
  good = _image(tmp_path / "good.png")
  bad = tmp_path / "bad.png"
  bad.write_text("not a png")
  rc, out = _predict(capsys, good, bad, "--checkpoint", checkpoint,
                     "--out", tmp_path / "out")
  assert rc == 0, out.err
  assert "bad.png" in (tmp_path / "out" / "unreadable.txt").read_text()
  lines = (tmp_path / "out" / predict.PREDICTIONS_FILE).read_text()
  assert len(lines.splitlines()) == 1
  rc, out = _predict(capsys, good, bad, "--checkpoint", checkpoint,
                     "--out", tmp_path / "strict", "--strict")
  assert rc == 2
  line = _one_error_line(out.err)
  assert "bad.png" in line and "--strict" in line


def _overlay(out):
  line = (out / predict.PREDICTIONS_FILE).read_text().splitlines()[0]
  return json.loads(line)["overlay"]


def test_overlays_are_capped_and_large_inputs_warned_or_refused(
    checkpoint, tmp_path, capsys, monkeypatch, caplog):
  big = _image(tmp_path / "wide.png", h=700, w=2100)
  rc, out = _predict(capsys, big, "--checkpoint", checkpoint, "--out",
                     tmp_path / "a")
  assert rc == 0, out.err
  with Image.open(_overlay(tmp_path / "a")) as im:
    assert max(im.size) <= 1024 and max(im.size) >= 1000, im.size
  rc, _ = _predict(capsys, big, "--checkpoint", checkpoint, "--out",
                   tmp_path / "b", "--overlay-max-side", "300")
  assert rc == 0
  with Image.open(_overlay(tmp_path / "b")) as im:
    assert max(im.size) <= 300, im.size
  monkeypatch.setattr(predict, "LARGE_INPUT_PIXELS", 1_000_000)
  with caplog.at_level(logging.WARNING, "moeclip_jax"):
    _predict(capsys, big, "--checkpoint", checkpoint, "--out", tmp_path / "c")
  assert any("very large" in r.getMessage() and "wide.png" in r.getMessage()
             for r in caplog.records)
  rc, out = _predict(capsys, big, "--checkpoint", checkpoint, "--out",
                     tmp_path / "d", "--max-pixels", "1000000")
  assert rc == 2
  line = _one_error_line(out.err)
  assert "wide.png" in line and "--max-pixels" in line, line


def test_calibration_fallback_names_both_classes(demo, checkpoint, tmp_path,
                                                 capsys, caplog):
  # The demo calibrates its target class "poly" only.
  shutil.copy(demo["detector"] / calibration.FILE, checkpoint)
  assert list(calibration.load(checkpoint)["classes"]) == ["poly"]
  image = _image(tmp_path / "a.png")
  with caplog.at_level(logging.WARNING, "moeclip_jax"):
    rc, out = _predict(capsys, image, "--checkpoint", checkpoint, "--out",
                       tmp_path / "o", "--class-name", "object")
  assert rc == 0, out.err
  warned = [r.getMessage() for r in caplog.records
            if "calibration" in r.getMessage()]
  assert any("'object'" in m and "'poly'" in m for m in warned), warned
  caplog.clear()
  with caplog.at_level(logging.WARNING, "moeclip_jax"):
    _predict(capsys, image, "--checkpoint", checkpoint, "--out",
             tmp_path / "p", "--class-name", "poly")
  assert not [r for r in caplog.records if "calibration of" in r.getMessage()]


# ---- preemption -------------------------------------------------------------
def _folder(tmp_path, n=40):
  folder = tmp_path / "images"
  folder.mkdir()
  for i in range(n):
    _image(folder / f"im{i:02d}.png", 48, 64, seed=i)
  return folder


def _spawn(folder, checkpoint, out, *extra):
  return subprocess.Popen(
      [sys.executable, "-m", "moeclip_jax.cli", "predict", str(folder),
       "--checkpoint", str(checkpoint), "--out", str(out), "--batch-size",
       "1", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)


def _wait_for_lines(path, proc, at_least: int, timeout: float = 240):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline and proc.poll() is None:
    if path.is_file() and path.read_bytes().count(b"\n") >= at_least:
      return
    time.sleep(0.005)
  raise AssertionError(f"predict ended or stalled: {proc.poll()}")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_resume_after_a_kill_equals_an_uninterrupted_run(
    checkpoint, tmp_path, sig):
  folder = _folder(tmp_path)
  out = tmp_path / "out"
  done = _spawn(folder, checkpoint, out)
  assert done.wait(timeout=300) == 0, done.stderr.read()
  reference = (out / predict.PREDICTIONS_FILE).read_bytes()
  assert reference.count(b"\n") == 40
  shutil.rmtree(out)

  proc = _spawn(folder, checkpoint, out)
  _wait_for_lines(out / predict.PREDICTIONS_FILE, proc, 2)
  os.kill(proc.pid, sig)
  rc = proc.wait(timeout=120)
  partial = (out / predict.PREDICTIONS_FILE).read_bytes()
  assert 2 <= partial.count(b"\n") < 40, "the kill came too late"
  if sig == signal.SIGTERM:
    assert rc == 0, proc.stderr.read()
    assert partial.endswith(b"\n")
  else:
    assert rc == -signal.SIGKILL

  resumed = _spawn(folder, checkpoint, out, "--resume")
  assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
  assert (out / predict.PREDICTIONS_FILE).read_bytes() == reference
  names = [json.loads(ln)["path"] for ln in reference.decode().splitlines()]
  assert len(set(names)) == 40


def test_resume_cuts_a_partial_last_line(tmp_path):
  path = tmp_path / predict.PREDICTIONS_FILE
  path.write_text(json.dumps({"path": "a"}) + "\n" + '{"path": "b", "sc')
  assert predict.read_done(path) == [{"path": "a"}]
  assert path.read_text() == json.dumps({"path": "a"}) + "\n"
