"""TFDS builders: build every layout, read back pixel-exact, no TensorFlow."""

import os
import subprocess
import sys
import textwrap

import data_fakes
import numpy as np
import pytest

from moeclip_jax.data import images
from moeclip_jax.data import readers
from moeclip_jax.data import tfds_builders

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _assert_pixel_exact(records, data_dir, config_name):
  sources = tfds_builders.load(data_dir, config_name)
  by_split = {}
  for r in records:
    by_split.setdefault(r.split, []).append(r)
  assert sorted(sources) == sorted(by_split)
  for split, expected in by_split.items():
    source = sources[split]
    assert len(source) == len(expected)
    for i, r in enumerate(expected):  # builder keeps the reader's order
      ex = source[i]
      assert ex["image_path"].decode() == r.image_path
      image, mask = images.load_pair(r.image_path, r.mask_path, r.crop)
      np.testing.assert_array_equal(ex["image"], image)
      np.testing.assert_array_equal(ex["mask"][..., 0], mask)
      assert int(ex["label"]) == r.label
      assert ex["class_name"].decode() == r.class_name
      assert bool(ex["has_mask"]) == (r.mask_path is not None)
      assert tuple(ex["crop"]) == (r.crop or (0, 0, 0, 0))
      if r.mask_path is None:
        assert not ex["mask"].any()


@pytest.mark.parametrize("name", sorted(data_fakes.MAKERS))
def test_build_and_read_back_pixel_exact(tmp_path, name):
  root, out = str(tmp_path / "raw"), str(tmp_path / "tfds")
  data_fakes.MAKERS[name](root)
  tfds_builders.build(name, root, out)  # scans manual_dir itself
  records = readers.scan(name, root).records
  _assert_pixel_exact(records, out, name)
  assert tfds_builders.load_class_names(out, name) == sorted(
      {r.class_name for r in records})
  assert "tensorflow" not in sys.modules


def test_elpv_real_subset_pixel_exact(tmp_path):
  scan = readers.scan("elpv", None)
  subset = [r for r in scan.records if r.split == "train"][:6] + [
      r for r in scan.records if r.split == "test"][:6]
  tfds_builders.build("elpv", None, str(tmp_path), records=subset)
  _assert_pixel_exact(subset, str(tmp_path), "elpv")
  ex = tfds_builders.load(str(tmp_path), "elpv")["test"][0]
  assert ex["image"].shape == (300, 300, 3)  # grayscale cells -> RGB


def test_sliced_ksdd_pixel_exact(tmp_path):
  data_fakes.make_ksdd(str(tmp_path / "raw"))
  opts = {"slices": 3, "split_normals": True}
  tfds_builders.build("ksdd", str(tmp_path / "raw"), str(tmp_path / "o"),
                      config_name="ksdd_inctrl", reader_options=opts)
  records = readers.scan("ksdd", str(tmp_path / "raw"), **opts).records
  assert len(records) == 12
  _assert_pixel_exact(records, str(tmp_path / "o"), "ksdd_inctrl")


def test_custom_config_name_for_a_folder(tmp_path):
  root = str(tmp_path / "widgets")
  data_fakes.make_folder(root)
  tfds_builders.build("folder", root, str(tmp_path / "o"),
                      config_name="widgets")
  assert len(tfds_builders.load(str(tmp_path / "o"), "widgets")["test"]) == 6


def test_builder_refuses_bad_inputs_unless_skip_bad(tmp_path):
  root = str(tmp_path / "raw")
  data_fakes.make_folder(root)
  with open(os.path.join(root, "good", "broken.png"), "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n not really")
  with pytest.raises(tfds_builders.BadInputsError, match="broken.png"):
    tfds_builders.build("folder", root, str(tmp_path / "a"))
  tfds_builders.build("folder", root, str(tmp_path / "b"), skip_bad=True)
  assert len(tfds_builders.load(str(tmp_path / "b"), "folder")["test"]) == 6


def test_no_tensorflow_import_in_a_fresh_process(tmp_path):
  code = textwrap.dedent(f"""
      import sys
      sys.path.insert(0, {os.path.join(REPO, 'tests')!r})
      import data_fakes
      from moeclip_jax.data import tfds_builders
      data_fakes.make_mvtec({str(tmp_path / 'raw')!r})
      tfds_builders.build('mvtec', {str(tmp_path / 'raw')!r},
                          {str(tmp_path / 'out')!r})
      src = tfds_builders.load({str(tmp_path / 'out')!r}, 'mvtec')
      assert src['test'][0]['image'].shape == (12, 16, 3)
      assert 'tensorflow' not in sys.modules, 'tensorflow was imported'
      print('NO_TF_OK')
  """)
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, text=True,
                       capture_output=True, timeout=120, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "NO_TF_OK" in out.stdout


@pytest.mark.slow
def test_elpv_full_build_via_cli(tmp_path, capsys):
  from moeclip_jax.verbs import data as cli  # pylint: disable=g-import-not-at-top
  assert cli.main(["prepare", "elpv", "--data-dir", str(tmp_path)]) == 0
  assert "items in: 2223, written: 2223, skipped: 0" in capsys.readouterr().out
  sources = tfds_builders.load(str(tmp_path), "elpv")
  assert {k: len(v) for k, v in sources.items()} == {"train": 1131,
                                                    "test": 1092}
  assert "tensorflow" not in sys.modules
