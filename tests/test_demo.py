"""The offline demo end to end (reduced setting) and the overlay PNGs."""

import json
import math

import numpy as np
import pytest
from PIL import Image

import cli_fixtures
from moeclip_jax.inference import overlay


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  return cli_fixtures.demo_result(tmp_path_factory)


def test_demo_writes_every_artefact(demo):
  out = demo["out"]
  report = (out / "report.md").read_text()
  assert "random" in report and "zero-shot" in report.lower()
  metrics = json.loads((out / "metrics.json").read_text())
  assert set(metrics) == {"per_class", "mean", "counts", "protocol"}
  assert list(metrics["per_class"]) == ["poly"]  # the held-out class only
  for key in ("image_auroc", "pixel_auroc"):
    assert math.isfinite(metrics["mean"][key]), key
  for name in ("metrics.csv", "protocol.json", "demo.log",
               "train/train.log", "train/detector/calibration.json"):
    assert (out / name).is_file(), name
  assert list((out / "train" / "tb").glob("events.out.tfevents.*"))
  assert list((out / "tb").glob("events.out.tfevents.*"))


def test_demo_pngs_decode_and_jsonl_has_one_line_per_image(demo):
  out = demo["out"]
  pngs = sorted(out.glob("overlays/**/*.png")) + sorted(
      out.glob("predictions/overlays/*.png"))
  assert len(pngs) >= 4
  for path in pngs:
    with Image.open(path) as im:
      im.load()
      assert im.mode == "RGB" and im.width > 3 * im.height - 1
  lines = (out / "predictions" / "predictions.jsonl").read_text().splitlines()
  images = cli_fixtures.target_test_images(demo)
  assert len(lines) == len(images) == demo["opts"].images
  rows = [json.loads(line) for line in lines]
  assert {r["path"] for r in rows} == {str(p) for p in images}
  assert all(r["threshold_source"] == "calibration" for r in rows)
  assert all(set(r) >= {"path", "score", "is_anomalous", "threshold",
                        "threshold_source"} for r in rows)


def test_heatmap_png_is_a_real_overlay(tmp_path):
  rng = np.random.default_rng(0)
  image = rng.integers(90, 160, (60, 80, 3), np.uint8)
  amap = np.zeros((15, 20), np.float32)
  amap[5:10, 8:14] = 1.0  # hot block
  path = overlay.save_png(tmp_path / "o.png", overlay.panels(image, amap,
                                                             0.5))
  with Image.open(path) as im:
    decoded = np.asarray(im.convert("RGB")).astype(int)
  left, heat, contour = (decoded[:, s] for s in
                         overlay.panel_slices(decoded.shape[1]))
  np.testing.assert_array_equal(left, image)
  full = overlay.resize_map(amap, image.shape[:2])
  hot, cold = full > 0.9, full < 0.05
  diff = np.abs(heat - image.astype(int)).sum(-1)
  assert diff[hot].mean() > 60  # visibly changed where the map is high
  assert heat[hot][:, 0].mean() > heat[hot][:, 2].mean() + 60  # red-ish
  assert heat[cold][:, 2].mean() > heat[cold][:, 0].mean()  # blue-ish
  red = np.all(contour == overlay.CONTOUR_RGB, -1)
  assert red.any() and not red[cold].any()  # outline only around hot area


def test_demo_refuses_to_overwrite(tmp_path):
  from moeclip_jax.verbs import demo as demo_lib
  (tmp_path / "x").mkdir()
  (tmp_path / "x" / "keep.txt").write_text("user data")
  assert demo_lib.main(["--out", str(tmp_path / "x"), "--steps", "1"]) == 2
  assert (tmp_path / "x" / "keep.txt").read_text() == "user data"


@pytest.mark.slow
def test_demo_default_setting_runs(tmp_path, monkeypatch):
  """The README's `moeclip-jax demo` as written (default sizes)."""
  from moeclip_jax import cli
  monkeypatch.chdir(tmp_path)
  assert cli.main(["demo"]) == 0
  out = tmp_path / "moeclip_demo"
  metrics = json.loads((out / "metrics.json").read_text())
  assert math.isfinite(metrics["mean"]["image_auroc"])
  assert "untrained adapters (step 0)" in (out / "report.md").read_text()
