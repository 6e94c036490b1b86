"""The one-call decision API: `load_detector(dir).predict(images,
class_name=...)` (methods/base.py, inference/decision.py).

Paths, PIL images and arrays give equal results; the thresholds of
`calibrate` round-trip through the checkpoint; a normals-only pixel
threshold meets its target FPR on held-out normals; `predict --save-masks`
PNGs are the API's masks (the map thresholded). On the reduced demo's
MoECLIP detector, plus a model-free detector for the input forms."""

import json
import logging
import pathlib

import numpy as np
import pytest
from PIL import Image

import cli_fixtures
import moeclip_jax
from moeclip_jax import cli
from moeclip_jax.inference import calibration, tiling
from moeclip_jax.methods import base, registry


# ---- a model-free detector: map = the tile's brightness ---------------------
class BrightDetector(base.DetectorBase):
  """map = mean RGB / 255 on the model grid; score = its max."""

  method = "bright"
  image_size = 8
  preprocess = {"preset": "moeclip", "size": 8}

  def __init__(self, checkpoint_dir):
    self.checkpoint_dir = pathlib.Path(checkpoint_dir)

  def predict_pixels(self, pixels, class_name, entry):
    del class_name, entry
    amap = np.asarray(pixels, np.float32).mean(-1)  # [B, S, S]
    return {"anomaly_map": amap, "image_score": amap.reshape(
        len(amap), -1).max(1)}


def _calibrate(det, images, class_name="thing", pixel_fpr=None):
  maps, scores = det.predict_images(images, class_name, desc=None)
  entry = calibration.calibrate_class(maps, scores, None, "quantile", 0.25,
                                      pixel_fpr=pixel_fpr)
  calibration.save(det.checkpoint_dir, {
      "format": calibration.FORMAT, "domain": None, "method": det.method,
      "classes": {class_name: entry}}, merge=True)
  return entry


def _noise(n, h=20, w=28, seed=0):
  return list(np.random.default_rng(seed).integers(0, 256, (n, h, w, 3),
                                                   np.uint8))


@pytest.fixture()
def bright(tmp_path):
  det = BrightDetector(tmp_path / "ck")
  det.checkpoint_dir.mkdir()
  _calibrate(det, _noise(12, seed=1))
  return det


def test_paths_pil_and_arrays_give_equal_decisions(bright, tmp_path):
  arrays = _noise(3, seed=5)
  grey = arrays[0][..., 0]
  rgba = np.concatenate([arrays[1], np.full((20, 28, 1), 7, np.uint8)], -1)
  paths = []
  for i, im in enumerate([arrays[0], grey, rgba]):
    paths.append(tmp_path / f"{i}.png")
    Image.fromarray(im).save(paths[-1])
  forms = {
      "paths": paths, "str paths": [str(p) for p in paths],
      "pil": [Image.open(p) for p in paths],
      "arrays": [arrays[0], grey, rgba],
  }
  got = {k: bright.predict(v, class_name="thing") for k, v in forms.items()}
  want = got.pop("arrays")
  assert [d.anomaly_map.shape for d in want] == [(20, 28)] * 3
  for name, decisions in got.items():
    assert len(decisions) == 3, name
    for d, w in zip(decisions, want):
      assert d.summary() == w.summary(), name
      np.testing.assert_array_equal(d.anomaly_map, w.anomaly_map)
      np.testing.assert_array_equal(d.mask, w.mask)
  # grey / RGBA arrays are converted like the files (alpha dropped)
  np.testing.assert_array_equal(want[1].raw_map, bright.predict(
      [np.repeat(grey[..., None], 3, -1)], class_name="thing")[0].raw_map)
  one = bright.predict(paths[0], class_name="thing")  # one image: a list
  assert len(one) == 1 and one[0].score == want[0].score
  batch = bright.predict(np.stack(arrays), class_name="thing")
  assert [d.score for d in batch][0] == want[0].score


def test_decision_fields_mask_and_raw_form(bright):
  images = _noise(4, seed=7)
  stored = calibration.load(bright.checkpoint_dir)["classes"]["thing"]
  preds = bright.predict(images, class_name="thing")
  for d in preds:
    assert d.threshold == stored["threshold"]
    assert d.pixel_threshold == stored["map_threshold"]
    assert d.threshold_source == "calibration"
    assert d.is_anomalous == (d.score >= d.threshold)
    assert d.mask.dtype == bool and d.mask.shape == (20, 28)
    np.testing.assert_array_equal(d.mask,
                                  d.anomaly_map >= d.pixel_threshold)
    np.testing.assert_allclose(d.anomaly_map, calibration.normalise_maps(
        d.raw_map, stored), rtol=1e-6)
    json.dumps(d.summary())
  assert 0 < sum(d.mask.sum() for d in preds) < 4 * 20 * 28
  # The earlier raw form is unchanged: Predictions, uncalibrated.
  raw = bright.predict(np.stack(images), "thing")
  assert isinstance(raw, base.Predictions)
  np.testing.assert_allclose(raw["image_score"],
                             [d.raw_score for d in preds])
  np.testing.assert_allclose(raw.anomaly_map[0], preds[0].raw_map)
  with pytest.raises(TypeError, match="load_detector"):
    bright.predict(images, class_name="thing", domain="medical")


def test_uncalibrated_is_an_error_unless_a_threshold_is_given(tmp_path):
  det = BrightDetector(tmp_path / "bare")
  det.checkpoint_dir.mkdir()
  with pytest.raises(ValueError, match="calibration.json.*calibrate"):
    det.predict(_noise(1), class_name="thing")
  d, = det.predict(_noise(1), class_name="thing", threshold=0.5)
  assert d.threshold == 0.5 and d.threshold_source == "user"
  assert d.pixel_threshold == calibration.DEFAULT_MAP_THRESHOLD
  assert 0.0 <= d.anomaly_map.min() < d.anomaly_map.max() <= 1.0
  np.testing.assert_array_equal(d.mask, d.anomaly_map >= 0.5)
  _calibrate(det, _noise(6), "a")
  _calibrate(det, _noise(6, seed=3), "b")
  with pytest.raises(ValueError, match="calibrated classes: a, b"):
    det.predict(_noise(1), class_name="c")


def test_other_class_calibration_warns_naming_both(bright, caplog):
  with caplog.at_level(logging.WARNING, "moeclip_jax"):
    d, = bright.predict(_noise(1), class_name="teapot")
  assert d.calibrated_class == "thing" and d.class_name == "teapot"
  assert any("'teapot'" in r.getMessage() and "'thing'" in r.getMessage()
             for r in caplog.records)


def test_tiled_decisions_are_at_the_image_size(bright):
  image = _noise(1, 40, 52, seed=9)[0]
  d, = bright.predict(image, class_name="thing", tile="16,4")
  assert d.anomaly_map.shape == d.mask.shape == (40, 52)
  direct = tiling.predict_tiled(bright, image, "thing", tiling.TileSpec(16, 4))
  np.testing.assert_array_equal(d.raw_map, direct.anomaly_map)
  assert d.raw_score == pytest.approx(direct.image_score)


def test_no_registered_detector_overrides_the_decision_form():
  for name, cls in registry.DETECTORS.items():
    assert cls.predict is base.DetectorBase.predict, name


# ---- the reduced demo's MoECLIP detector ------------------------------------
@pytest.fixture()
def demo(tmp_path_factory):
  """(the demo run, a private uncalibrated copy of its detector)."""
  run = cli_fixtures.demo_result(tmp_path_factory)  # once per session
  return run, cli_fixtures.uncalibrated_copy(run, tmp_path_factory.mktemp(
      "decide") / "detector")


def _normals(folder, n, seed):
  """`n` normal images: smooth grey noise (one distribution)."""
  folder.mkdir(parents=True)
  rng = np.random.default_rng(seed)
  for i in range(n):
    base_grey = rng.integers(90, 160)
    im = base_grey + rng.normal(0, 12, (32, 32, 1)).repeat(3, -1)
    Image.fromarray(np.clip(im, 0, 255).astype(np.uint8)).save(
        folder / f"n{i:02d}.png")
  return sorted(folder.glob("*.png"))


def test_calibrate_round_trips_and_pixel_fpr_holds_on_held_out(
    demo, tmp_path):
  _, checkpoint = demo
  fit = _normals(tmp_path / "fit", 24, seed=0)
  held = _normals(tmp_path / "held", 24, seed=1)
  target = 0.1
  assert cli.main(["calibrate", "--checkpoint", str(checkpoint), "--normal",
                   str(tmp_path / "fit"), "--class-name", "poly", "--fpr",
                   "0.2", "--pixel-fpr", str(target)]) == 0
  stored = json.loads((checkpoint / calibration.FILE).read_text())
  entry = stored["classes"]["poly"]
  assert stored["pixel_fpr"] == target
  det = moeclip_jax.load_detector(checkpoint)
  preds = det.predict(held, class_name="poly")
  for d in preds:
    assert d.threshold == entry["threshold"]
    assert d.pixel_threshold == entry["map_threshold"]
    assert d.is_anomalous == (d.score >= entry["threshold"])
  in_sample = np.mean([d.mask.mean() for d in det.predict(
      fit, class_name="poly")])
  assert in_sample <= target
  rate = np.mean([d.mask.mean() for d in preds])
  assert abs(rate - target) < 0.5 * target, rate
  image_rate = np.mean([d.is_anomalous for d in preds])
  assert image_rate <= 0.5  # the image threshold keeps its own --fpr


def test_save_masks_pngs_are_the_api_masks(demo, tmp_path):
  demo, checkpoint = demo
  normal = cli_fixtures.target_root(demo) / "poly" / "train" / "good"
  assert cli.main(["calibrate", "--checkpoint", str(checkpoint), "--normal",
                   str(normal), "--class-name", "poly", "--fpr", "0.5"]) == 0
  images = cli_fixtures.target_test_images(demo)[:4]
  out = tmp_path / "pred"
  assert cli.main(["predict", *map(str, images), "--checkpoint",
                   str(checkpoint), "--class-name", "poly",
                   "--save-masks", "--out", str(out)]) == 0
  rows = [json.loads(line) for line in
          (out / "predictions.jsonl").read_text().splitlines()]
  preds = moeclip_jax.load_detector(checkpoint).predict(
      images, class_name="poly")
  marked = 0
  for row, d in zip(rows, preds):
    assert pathlib.Path(row["mask"]).parent.name == "masks"
    assert pathlib.Path(row["overlay"]).stem == pathlib.Path(row["mask"]).stem
    with Image.open(row["mask"]) as im:
      png = np.asarray(im)
    assert set(np.unique(png)) <= {0, 255}
    np.testing.assert_array_equal(png == 255, d.mask)
    np.testing.assert_array_equal(d.mask, d.anomaly_map >= d.pixel_threshold)
    assert row["score"] == pytest.approx(d.score, abs=1e-6)
    assert row["threshold"] == d.threshold
    assert row["is_anomalous"] == d.is_anomalous
    marked += int(d.mask.sum())
  assert marked > 0
