"""A fourth method added as CONTRIBUTING.md says: its package, one line in
each registry table, a config; the trainer and every verb then serve it
with no change in verbs/, train/ or eval/."""

import json

import numpy as np
from PIL import Image
import pytest

from moeclip_jax import cli
from moeclip_jax.data import synthetic
from moeclip_jax.methods import registry
from moeclip_jax.train import loop
from tests.example_method import config as example_config
from tests.example_method import detector as example_detector
from tests.example_method import method as example_method


@pytest.fixture
def registered(monkeypatch):
  """The two registry lines of CONTRIBUTING.md's 'Adding a method'."""
  monkeypatch.setitem(registry.METHODS, "contrast",
                      example_method.ContrastMethod)
  monkeypatch.setitem(registry.DETECTORS, "contrast",
                      example_detector.ContrastDetector)


@pytest.fixture
def trained(registered, tmp_path):
  root = tmp_path / "data"
  synthetic.write_mvtec_tree(str(root), class_names=("a", "b"), n_train=2,
                             n_good=6, n_bad=6, size=(32, 32), seed=0)
  config = example_config.get_config()
  config.data.root = str(root)
  loop.train(config, tmp_path / "run")
  return root, tmp_path / "run" / "detector"


def test_trains_and_every_verb_serves_it(trained, tmp_path, capsys):
  root, detector_dir = trained
  assert json.loads((detector_dir / "config.json").read_text())[
      "method"] == "contrast"

  assert cli.main(["eval", "--checkpoint", str(detector_dir), "--dataset",
                   "mvtec", "--root", str(root), "--out",
                   str(tmp_path / "eval")]) == 0
  metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
  assert set(metrics["per_class"]) == {"a", "b"}
  # The learned head separates the synthetic defects from good cells.
  assert metrics["mean"]["pixel_auroc"] > 0.6, metrics["mean"]

  normals = sorted((root / "a" / "train" / "good").glob("*.png"))
  assert cli.main(["calibrate", "--checkpoint", str(detector_dir),
                   "--normal", *map(str, normals), "--class-name", "a"]) == 0
  tests = sorted((root / "a" / "test").rglob("*.png"))[:4]
  assert cli.main(["predict", "--checkpoint", str(detector_dir),
                   "--class-name", "a", "--out", str(tmp_path / "pred"),
                   *map(str, tests)]) == 0
  rows = [json.loads(line) for line in
          (tmp_path / "pred" / "predictions.jsonl").read_text().splitlines()]
  assert len(rows) == len(tests)

  # A flag of another method is an error naming it, as for the built-ins.
  capsys.readouterr()
  assert cli.main(["predict", "--checkpoint", str(detector_dir), "--shots",
                   "2", "--out", str(tmp_path / "x"), *map(str, tests)]) == 2
  assert "--shots not used by contrast detectors" in capsys.readouterr().err


def test_python_api_loads_it(trained):
  import moeclip_jax  # pylint: disable=g-import-not-at-top
  root, detector_dir = trained
  det = moeclip_jax.load_detector(detector_dir)
  image = np.asarray(Image.open(sorted((root / "a" / "test").rglob("*.png"))[0]
                                ).convert("RGB"))
  out = det.predict([image])
  assert out["anomaly_map"].shape == (1, *image.shape[:2])
  assert out["image_score"].shape == (1,)
