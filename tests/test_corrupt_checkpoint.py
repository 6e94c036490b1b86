"""Damaged checkpoints: every verb that loads one prints exactly one line,
`error: <dir>: checkpoint is damaged or incomplete (<param>: <cause>)`,
exits 2 and shows no traceback (unless --debug)."""

import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import cli_fixtures
from moeclip_jax.convert import clip_cli
from moeclip_jax.tools import tiny_hf_clip


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
  """A real tiny InCTRL checkpoint, a converted CLIP, an image, a dataset."""
  tmp = tmp_path_factory.mktemp("corrupt")
  inctrl = cli_fixtures.tiny_inctrl_checkpoint(tmp / "inctrl")
  hf = tiny_hf_clip.write_tiny_hf_clip(tmp / "hf", seed=0, image_size=32)
  clip = clip_cli.convert_hf_clip(hf, tmp / "clip", overwrite=True)
  image = tmp / "a.png"
  Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(image)
  np.save(tmp / "x.npy", np.zeros((1, 32, 32, 3), np.float32))
  data = cli_fixtures.methods_dataset(tmp / "data")
  return {"tmp": tmp, "inctrl": pathlib.Path(inctrl),
          "clip": pathlib.Path(clip), "image": image, "data": data}


def _largest_blob(ckpt: pathlib.Path) -> pathlib.Path:
  blobs = [p for p in (ckpt / "params").rglob("*")
           if p.is_file() and p.parent.name == "d"]
  return max(blobs, key=lambda p: p.stat().st_size)


def _damaged_copy(src: pathlib.Path, dst: pathlib.Path, how: str):
  shutil.copytree(src, dst)
  blob = _largest_blob(dst)
  if how == "truncate":
    os.truncate(blob, blob.stat().st_size // 2)
  elif how == "delete":
    blob.unlink()
  elif how == "garbage":
    data = bytearray(blob.read_bytes())
    data[: len(data) // 2] = bytes(len(data) // 2)
    blob.write_bytes(bytes(data))
  return dst


def _run(*args) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "moeclip_jax.cli", *map(
      str, args)], capture_output=True, text=True, timeout=300, check=False)


def _assert_one_line(done, ckpt, param: bool = True):
  lines = done.stderr.strip().splitlines()
  assert done.returncode == 2, done.stderr
  assert len(lines) == 1, done.stderr
  assert "Traceback" not in done.stderr
  assert lines[0].startswith(f"error: {ckpt.absolute()}: checkpoint is "
                             "damaged or incomplete ("), lines[0]
  if param:  # the parameter is named: "(<group>.<name>...: <cause>)"
    inner = lines[0].split("incomplete (", 1)[1]
    name, cause = inner.split(": ", 1)
    assert "." in name and " " not in name, lines[0]
    assert cause.strip(")"), lines[0]


def _verb_args(verb, ckpt, tree, out):
  return {
      "predict": ["predict", tree["image"], "--checkpoint", ckpt,
                  "--out", out, "--class-name", "widget"],
      "eval": ["eval", "--checkpoint", ckpt, "--dataset", "mvtec",
               "--root", tree["data"], "--out", out],
      "calibrate": ["calibrate", "--checkpoint", ckpt, "--normal",
                    tree["image"], "--class-name", "widget"],
      "export": ["export", "--checkpoint", ckpt, "--out", out],
  }[verb]


@pytest.mark.parametrize("verb", ["predict", "eval", "calibrate", "export"])
def test_truncated_blob_is_one_line_for_every_detector_verb(
    tree, tmp_path, verb):
  ckpt = _damaged_copy(tree["inctrl"], tmp_path / "ckpt", "truncate")
  done = _run(*_verb_args(verb, ckpt, tree, tmp_path / "out"))
  _assert_one_line(done, ckpt)


@pytest.mark.parametrize("how", ["delete", "garbage"])
def test_deleted_or_overwritten_blob(tree, tmp_path, how):
  ckpt = _damaged_copy(tree["inctrl"], tmp_path / "ckpt", how)
  done = _run(*_verb_args("predict", ckpt, tree, tmp_path / "out"))
  _assert_one_line(done, ckpt)


def test_embed_on_a_damaged_backbone(tree, tmp_path):
  ckpt = _damaged_copy(tree["clip"], tmp_path / "clip", "truncate")
  done = _run("embed", "--checkpoint", ckpt, "--pixels", tree["tmp"] /
              "x.npy", "--out", tmp_path / "e.npz")
  _assert_one_line(done, ckpt)
  assert not (tmp_path / "e.npz").exists()


def test_debug_shows_the_traceback(tree, tmp_path):
  ckpt = _damaged_copy(tree["inctrl"], tmp_path / "ckpt", "truncate")
  done = _run("--debug", *_verb_args("predict", ckpt, tree, tmp_path / "o"))
  assert done.returncode == 2
  assert "Traceback" in done.stderr
  assert any(line.startswith(f"error: {ckpt.absolute()}: checkpoint is "
                             "damaged") for line in done.stderr.splitlines())


def test_truncated_config_json_names_the_file(tree, tmp_path):
  ckpt = tmp_path / "ckpt"
  shutil.copytree(tree["inctrl"], ckpt)
  text = (ckpt / "config.json").read_text()
  (ckpt / "config.json").write_text(text[: len(text) // 2])
  for verb in ("predict", "export"):
    done = _run(*_verb_args(verb, ckpt, tree, tmp_path / "out"))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "config.json" in lines[0] and "not valid JSON" in lines[0]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  return cli_fixtures.demo_result(tmp_path_factory)


@pytest.mark.parametrize("verb", ["predict", "eval"])
def test_deleted_blob_of_a_trained_detector_names_the_file(demo, tmp_path,
                                                           verb):
  """A data file of a trained MoECLIP detector deleted: tensorstore reads
  it as an empty ('Truncated Zstd-compressed') stream; the line says the
  file is missing instead."""
  ckpt = _damaged_copy(demo["detector"], tmp_path / "ckpt", "delete")
  missing = _largest_blob(demo["detector"]).relative_to(demo["detector"])
  image = cli_fixtures.target_test_images(demo)[0]
  args = {"predict": ["predict", image, "--checkpoint", ckpt, "--out",
                      tmp_path / "out", "--class-name", "poly"],
          "eval": ["eval", "--checkpoint", ckpt, "--dataset", "mvtec",
                   "--root", cli_fixtures.target_root(demo), "--out",
                   tmp_path / "out"]}[verb]
  done = _run(*args)
  _assert_one_line(done, ckpt)
  assert f"missing file {missing.as_posix()})" in done.stderr, done.stderr
  assert "Truncated" not in done.stderr


def test_deleted_array_metadata_names_the_parameter(tree, tmp_path):
  """params/d/ holds the arrays' zarr metadata: the parameter and the
  missing file are named, not tensorstore's spec dump, and orbax's other
  reads (which find its event loop closed) print nothing. Run 3 times:
  those reports raced the exit."""
  ckpt = tmp_path / "ckpt"
  shutil.copytree(tree["inctrl"], ckpt)
  for blob in (ckpt / "params" / "d").iterdir():
    blob.unlink()
  for _ in range(3):
    done = _run(*_verb_args("predict", ckpt, tree, tmp_path / "out"))
    _assert_one_line(done, ckpt)
    last = done.stderr.strip()
    name, cause = last.split("incomplete (", 1)[1].split(": ", 1)
    assert "." in name and cause.startswith("missing file params/d/"), last
  assert "tensorstore_spec" not in done.stderr
