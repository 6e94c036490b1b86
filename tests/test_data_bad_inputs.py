"""Bad inputs through `python -m moeclip_jax.data prepare` (issue #5 item 5)."""

import json
import os

import data_fakes
import numpy as np
from PIL import Image

from moeclip_jax.verbs import data as cli
from moeclip_jax.data import images
from moeclip_jax.data import tfds_builders


def _bad_folder(root: str) -> dict[str, list[str]]:
  """A folder dataset with convertible and broken files; returns the paths."""
  for i in range(2):
    data_fakes.image(f"{root}/good/n{i}.png", i)
  data_fakes.image(f"{root}/good/gray.png", 5, mode="L")
  rgba = np.random.default_rng(6).integers(0, 256, (12, 16, 4), np.uint8)
  Image.fromarray(rgba, "RGBA").save(f"{root}/good/rgba.png")
  deep = (np.arange(12 * 16).reshape(12, 16) * 300).astype(np.uint16)
  Image.fromarray(deep).save(f"{root}/good/deep16.png")
  data_fakes.image(f"{root}/good/trunc.png", 7)
  with open(f"{root}/good/trunc.png", "rb") as f:
    head = f.read()[:60]
  with open(f"{root}/good/trunc.png", "wb") as f:
    f.write(head)
  data_fakes.image(f"{root}/abnormal/ok.png", 8)
  data_fakes.mask(f"{root}/masks/ok.png", 1)
  data_fakes.image(f"{root}/abnormal/nomask.png", 9)
  data_fakes.image(f"{root}/abnormal/half.png", 10)
  data_fakes.mask(f"{root}/masks/half.png", 2, size=(6, 8))  # same aspect
  data_fakes.image(f"{root}/abnormal/odd.png", 11)
  data_fakes.mask(f"{root}/masks/odd.png", 3, size=(12, 12))  # other aspect
  return {
      "bad": [f"{root}/good/trunc.png", f"{root}/abnormal/nomask.png",
              f"{root}/masks/odd.png"],
      "converted": [f"{root}/good/gray.png", f"{root}/good/rgba.png",
                    f"{root}/good/deep16.png", f"{root}/masks/half.png"],
  }


def test_default_stops_and_lists_every_bad_file(tmp_path, capsys):
  root = str(tmp_path / "raw")
  paths = _bad_folder(root)
  rc = cli.main(["prepare", "folder", "--root", root,
                 "--data-dir", str(tmp_path / "out")])
  out = capsys.readouterr().out
  assert rc == 1
  for path in paths["bad"]:
    assert f"BAD {path}:" in out
  for path in paths["converted"]:
    assert f"NOTE {path}: " in out
  assert "missing mask" in out and "does not match image size" in out
  assert "unreadable or truncated" in out
  assert not os.path.exists(tmp_path / "out" / "moeclip_ad")


def test_skip_bad_writes_the_rest_and_accounts_for_everything(tmp_path,
                                                              capsys):
  root, out_dir = str(tmp_path / "raw"), str(tmp_path / "out")
  paths = _bad_folder(root)
  rc = cli.main(["prepare", "folder", "--root", root, "--data-dir", out_dir,
                 "--skip-bad"])
  out = capsys.readouterr().out
  assert rc == 0
  for path in paths["bad"]:
    assert f"SKIPPED {path}:" in out
  assert "items in: 10, written: 7, skipped: 3" in out
  test = tfds_builders.load(out_dir, "folder")["test"]
  assert len(test) == 7
  by_path = {test[i]["image_path"].decode(): test[i] for i in range(7)}
  gray = by_path[f"{root}/good/gray.png"]["image"]
  assert gray.shape == (12, 16, 3)
  np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
  deep = by_path[f"{root}/good/deep16.png"]["image"][..., 0]
  expected = np.rint((np.arange(12 * 16).reshape(12, 16) * 300) * 255 / 65535)
  np.testing.assert_array_equal(deep, expected.astype(np.uint8))
  half = by_path[f"{root}/abnormal/half.png"]["mask"]
  assert half.shape == (12, 16, 1)


def test_empty_class_and_duplicates(tmp_path, capsys):
  root = str(tmp_path / "raw")
  data_fakes.make_moeclip_jsonl(root)
  with open(os.path.join(root, "full-shot.jsonl"), "a") as f:
    f.write("\n" + json.dumps({"image_path": "bottle/test/good/000.png",
                               "label": 0, "class_name": "bottle"}))
  rc = cli.main(["prepare", "moeclip_jsonl", "--root", root, "--data-dir",
                 str(tmp_path / "o"), "--skip-bad"])
  out = capsys.readouterr().out
  assert rc == 0 and "duplicate path" in out
  assert "items in: 5, written: 4, skipped: 1" in out
  mv = str(tmp_path / "mv")
  data_fakes.make_mvtec(mv)
  os.makedirs(os.path.join(mv, "zipper", "train", "good"))
  rc = cli.main(["prepare", "mvtec", "--root", mv, "--data-dir",
                 str(tmp_path / "o2")])
  out = capsys.readouterr().out
  assert rc == 1 and f"BAD {os.path.join(mv, 'zipper')}: empty class" in out


def test_inspect_counts(tmp_path, capsys):
  data_fakes.make_mvtec(str(tmp_path))
  assert cli.main(["inspect", "mvtec", "--root", str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert "test: 8 images, 4 normal, 4 anomalous, masks 4/4" in out
  assert "  bottle: 4" in out


def test_cli_errors_and_registry(tmp_path, capsys):
  assert cli.main(["inspect", "visa", "--root", str(tmp_path / "none")]) == 2
  assert "not a folder" in capsys.readouterr().err
  assert {"prepare", "inspect"} <= set(cli.COMMANDS)


def test_image_conversions_directly(tmp_path):
  path = str(tmp_path / "la.png")
  Image.fromarray(np.zeros((4, 5, 2), np.uint8), "LA").save(path)
  notes = []
  assert images.load_image(path, notes).shape == (4, 5, 3) and notes


def test_overwrite_rebuilds_after_a_fix(tmp_path, capsys):
  root, out_dir = str(tmp_path / "raw"), str(tmp_path / "out")
  data_fakes.make_folder(root)
  args = ["prepare", "folder", "--root", root, "--data-dir", out_dir]
  assert cli.main(args) == 0
  data_fakes.image(f"{root}/good/extra.png", 99)
  assert cli.main(args + ["--overwrite"]) == 0
  assert "items in: 7, written: 7, skipped: 0" in capsys.readouterr().out
  assert len(tfds_builders.load(out_dir, "folder")["test"]) == 7
