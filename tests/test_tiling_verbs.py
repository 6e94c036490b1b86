"""`predict --tile` and `eval --tile` on a tiny random InCTRL checkpoint:
the tiled path runs through the real jitted forward and writes maps at
each image's size (slow: the tiny checkpoint's init and two jitted runs
take about a minute on the 2-core box)."""

import json

import cli_fixtures
import numpy as np
from PIL import Image
import pytest

import moeclip_jax
from moeclip_jax import cli
from moeclip_jax.inference import tiling

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  root = tmp_path_factory.mktemp("tiling")
  return {"data": cli_fixtures.methods_dataset(root / "data"),
          "inctrl": cli_fixtures.tiny_inctrl_checkpoint(root / "inctrl")}


def test_predict_tile_writes_image_size_maps(world, tmp_path):
  big = np.random.default_rng(0).integers(0, 256, (70, 101, 3), np.uint8)
  path = tmp_path / "in" / "big.png"
  path.parent.mkdir()
  Image.fromarray(big).save(path)
  prompts = str(world["data"] / "widget" / "train" / "good")
  out = tmp_path / "pred"
  assert cli.main(["predict", str(path), "--checkpoint",
                   str(world["inctrl"]), "--class-name", "widget",
                   "--prompts", prompts, "--tile", "32,8", "--save-maps",
                   "--out", str(out)]) == 0
  row = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
  amap = np.load(out / "maps" / "in_big.npy")
  assert amap.shape == (70, 101) and np.isfinite(amap).all()
  det = moeclip_jax.load_detector(world["inctrl"], prompts=[prompts])
  det.begin_predict(None, "widget", None)
  direct = tiling.predict_tiled(det, big, "widget", tiling.TileSpec(32, 8))
  np.testing.assert_allclose(amap, direct.anomaly_map, rtol=1e-4, atol=1e-5)
  assert row["raw_score"] == pytest.approx(direct.image_score, rel=1e-5)
  assert row["raw_score"] == pytest.approx(direct.tile_scores.max(), rel=1e-5)


def test_eval_tile_writes_metrics(world, tmp_path, capsys):
  prompts = str(world["data"] / "widget" / "train" / "good")
  out = tmp_path / "eval"
  assert cli.main(["eval", "--checkpoint", str(world["inctrl"]),
                   "--dataset", "mvtec", "--root", str(world["data"]),
                   "--class-names", "widget", "--prompts", prompts,
                   "--tile", "32,8", "--overlays", "2",
                   "--out", str(out)]) == 0
  metrics = json.loads((out / "metrics.json").read_text())
  assert metrics["counts"]["num_images"] == 4
  assert metrics["mean"]["image_auroc"] is not None
  assert cli.main(["eval", "--checkpoint", str(world["inctrl"]),
                   "--dataset", "mvtec", "--root", str(world["data"]),
                   "--tile", "32,32", "--out", str(out)]) == 2
  assert "--tile 32,32" in capsys.readouterr().err
