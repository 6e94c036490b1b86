"""Shared helpers for trainer tests: tiny configs and synthetic datasets."""

from __future__ import annotations

import importlib.util
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent


def load_config(name: str = "moeclip_tiny.py"):
  path = REPO / "configs" / name
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def synthetic_mvtec(root, classes=("a", "b"), n_good=6, n_bad=6, size=48,
                    seed=0) -> str:
  from moeclip_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  synthetic.write_mvtec_tree(str(root), class_names=classes, n_train=2,
                             n_good=n_good, n_bad=n_bad, size=(size, size),
                             seed=seed)
  return str(root)


def tiny_config(data_root, **overrides):
  config = load_config()
  config.data.root = str(data_root)
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def square_defects_mvtec(root, classes=("a", "b", "c"), n_good=8, n_bad=12,
                         size=64, seed=0) -> str:
  """MVTec-layout set of noisy grey images; defects are saturated squares.

  Easy on purpose: a random tiny backbone carries colour per patch, so the
  trainable heads can learn it; the point is to test that the loop learns.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  root = pathlib.Path(root)

  def base():
    grey = rng.integers(90, 160)
    noise = rng.normal(0, 12, (size, size, 3))
    return np.clip(grey + noise, 0, 255).astype(np.uint8)

  def save(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)

  for name in classes:
    for i in range(2):
      save(root / name / "train" / "good" / f"{i:03d}.png", base())
    for i in range(n_good):
      save(root / name / "test" / "good" / f"{i:03d}.png", base())
    for i in range(n_bad):
      img, mask = base(), np.zeros((size, size), np.uint8)
      side = int(rng.integers(size // 5, size // 3))
      y, x = rng.integers(0, size - side, 2)
      img[y:y + side, x:x + side] = rng.choice([[230, 40, 40], [40, 220, 60],
                                               [30, 30, 30]])
      mask[y:y + side, x:x + side] = 255
      save(root / name / "test" / "square" / f"{i:03d}.png", img)
      save(root / name / "ground_truth" / "square" / f"{i:03d}_mask.png", mask)
  return str(root)
