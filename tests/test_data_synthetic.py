"""Synthetic defects: deterministic, masks mark exactly what changed."""

import os
import subprocess
import sys

import numpy as np
import pytest

from moeclip_jax.data import checks
from moeclip_jax.data import readers
from moeclip_jax.data import synthetic


@pytest.mark.parametrize("kind", sorted(synthetic.DEFECTS))
def test_defect_is_deterministic_and_masked(kind):
  image = synthetic.base_image((40, 48), seed=1)
  a, mask_a = synthetic.DEFECTS[kind](image, np.random.default_rng(5))
  b, mask_b = synthetic.DEFECTS[kind](image, np.random.default_rng(5))
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(mask_a, mask_b)
  assert a.shape == image.shape and a.dtype == np.uint8
  assert set(np.unique(mask_a)) <= {0, 255} and mask_a.any()
  changed = np.any(a != image, axis=-1)
  assert not changed[mask_a == 0].any()  # nothing changes outside the mask
  assert changed[mask_a > 0].mean() > 0.9


def test_defects_on_a_real_elpv_cell():
  from moeclip_jax.data import images  # pylint: disable=g-import-not-at-top
  scan = readers.scan("elpv", None)
  cell = images.load_image(scan.records[0].image_path)
  out, mask, _ = synthetic.apply(cell, np.random.default_rng(0))
  assert out.shape == cell.shape and mask.any()


def test_mvtec_tree_reads_back_clean(tmp_path):
  n = synthetic.write_mvtec_tree(str(tmp_path), ("a", "b"), n_train=2,
                                 n_good=1, n_bad=3, size=(20, 24), seed=3)
  report = checks.check(readers.scan("mvtec", str(tmp_path)))
  assert n == 12 and len(report.kept) == 12 and not report.issues


def test_python_dash_m_entry_point(tmp_path):
  synthetic.write_mvtec_tree(str(tmp_path), n_train=1, n_good=1, n_bad=1,
                             size=(8, 8))
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run(
      [sys.executable, "-m", "moeclip_jax.data", "inspect", "mvtec",
       "--root", str(tmp_path)], cwd=repo, capture_output=True, text=True,
      timeout=60, check=False)
  assert out.returncode == 0, out.stderr
  assert "test: 2 images, 1 normal, 1 anomalous, masks 1/1" in out.stdout
