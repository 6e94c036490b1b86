"""`moeclip-jax` verbs on the reduced demo's detector: eval, calibrate ->
predict --threshold auto, export equality, help texts."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import cli_fixtures
from moeclip_jax import cli
from moeclip_jax.inference import calibration
from moeclip_jax.inference import overlay
from moeclip_jax.verbs import predict


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  return cli_fixtures.demo_result(tmp_path_factory)


@pytest.fixture()
def checkpoint(demo, tmp_path):
  return cli_fixtures.uncalibrated_copy(demo, tmp_path / "detector")


def test_top_level_help_lists_every_verb(capsys):
  assert cli.main(["--help"]) == 0
  text = capsys.readouterr().out
  for verb in ("train", "eval", "predict", "calibrate", "convert", "data",
               "embed", "metrics", "export", "demo"):
    assert f"  {verb} " in text, verb
  assert cli.main(["nope"]) == 2


@pytest.mark.parametrize("module", ["eval", "predict", "calibrate",
                                    "export", "demo"])
def test_python_m_entry_points(module):
  """`python -m moeclip_jax.<verb> --help` works in a fresh interpreter."""
  done = subprocess.run([sys.executable, "-m", f"moeclip_jax.{module}",
                         "--help"], capture_output=True, text=True,
                        timeout=120, check=False)
  assert done.returncode == 0, done.stderr
  assert f"moeclip-jax {module}" in done.stdout


@pytest.mark.parametrize("verb", ["eval", "predict", "calibrate", "export",
                                  "demo"])
def test_verb_help_has_examples(verb, capsys):
  with pytest.raises(SystemExit) as exc:
    cli.main([verb, "--help"])
  assert exc.value.code == 0
  text = capsys.readouterr().out
  assert "examples:" in text and f"moeclip-jax {verb}" in text


def test_eval_writes_reports_overlays_log_and_tensorboard(demo, tmp_path):
  out = tmp_path / "eval"
  rc = cli.main(["eval", "--checkpoint", str(demo["detector"]), "--dataset",
                 "mvtec", "--root", str(cli_fixtures.target_root(demo)),
                 "--protocol", "raw", "--overlays", "2", "--out", str(out)])
  assert rc == 0
  metrics = json.loads((out / "metrics.json").read_text())
  assert metrics["protocol"]["name"] == "raw"
  assert metrics["counts"]["num_images"] == demo["opts"].images  # no padding
  assert np.isfinite(metrics["mean"]["pixel_auroc"])
  assert metrics["protocol"]["checkpoint_hash"]
  for name in ("metrics.csv", "protocol.json", "details.json", "eval.log"):
    assert (out / name).is_file(), name
  assert len(list((out / "overlays").rglob("*.png"))) == 2
  assert list((out / "tb").glob("events.out.tfevents.*"))


def test_eval_logs_means_and_heatmaps_to_mlflow(demo, tmp_path, monkeypatch):
  pytest.importorskip("mlflow")
  from mlflow.tracking import MlflowClient  # pylint: disable=g-import-not-at-top
  monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
  out = tmp_path / "eval"
  rc = cli.main(["eval", "--checkpoint", str(demo["detector"]), "--dataset",
                 "mvtec", "--root", str(cli_fixtures.target_root(demo)),
                 "--protocol", "raw", "--overlays", "0", "--out", str(out),
                 "--loggers", "mlflow"])
  assert rc == 0
  means = json.loads((out / "metrics.json").read_text())["mean"]
  client = MlflowClient((out / "mlruns").as_uri())
  (run,) = client.search_runs(
      [client.get_experiment_by_name("moeclip_jax").experiment_id])
  assert run.data.metrics["eval/pixel_auroc"] == pytest.approx(
      means["pixel_auroc"])
  images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
  assert "images/eval_heatmap_0_step0.png" in images
  assert not (out / "tb").exists()


def test_calibrate_then_predict_auto_uses_stored_threshold(
    demo, checkpoint, tmp_path):
  normal = cli_fixtures.target_root(demo) / "poly" / "train" / "good"
  assert cli.main(["calibrate", "--checkpoint", str(checkpoint), "--normal",
                   str(normal), "--class-name", "poly", "--fpr", "0.5"]) == 0
  stored = json.loads((checkpoint / calibration.FILE).read_text())
  entry = stored["classes"]["poly"]
  assert entry["num_images"] == len(list(normal.glob("*.png")))
  assert entry["map_max"] >= entry["map_min"]
  bad = tmp_path / "broken.png"
  bad.write_bytes(b"not an image")
  images = cli_fixtures.target_test_images(demo)[:5]
  out = tmp_path / "pred"
  assert cli.main(["predict", *map(str, images), str(bad), "--checkpoint",
                   str(checkpoint), "--class-name", "poly", "--threshold",
                   "auto", "--save-maps", "--save-masks", "--out",
                   str(out)]) == 0
  rows = [json.loads(l) for l in
          (out / "predictions.jsonl").read_text().splitlines()]
  assert len(rows) == len(images)
  marked = 0
  for row in rows:  # mask PNG == the saved map, normalised, thresholded
    amap = np.load(out / "maps" / (pathlib.Path(row["overlay"]).stem + ".npy"))
    with Image.open(row["mask"]) as im:
      mask = np.asarray(im)
    want = calibration.normalise_maps(amap, entry) >= entry["map_threshold"]
    assert set(np.unique(mask)) <= {0, 255}
    np.testing.assert_array_equal(mask == 255, want)
    marked += int(want.sum())
  assert 0 < marked < want.size * len(rows)  # fpr 0.5: neither empty nor full
  for row in rows:
    assert row["threshold"] == entry["threshold"]
    assert row["threshold_source"] == "calibration"
    assert row["is_anomalous"] == (row["score"] >= entry["threshold"])
  assert "broken.png" in (out / "unreadable.txt").read_text()
  # The overlay differs from the input where the map is high.
  row = rows[0]
  with Image.open(row["overlay"]) as im:
    panel = np.asarray(im.convert("RGB")).astype(int)
  left, heat, _ = (panel[:, s] for s in overlay.panel_slices(panel.shape[1]))
  amap = np.load(out / "maps" / (pathlib.Path(row["overlay"]).stem + ".npy"))
  assert amap.shape == left.shape[:2]
  high = amap >= np.quantile(amap, 0.9)
  assert np.abs(heat - left).sum(-1)[high].mean() > 10


def test_calibrate_f1_on_a_labelled_dataset(demo, checkpoint):
  assert cli.main(["calibrate", "--checkpoint", str(checkpoint), "--dataset",
                   "mvtec", "--root", str(cli_fixtures.target_root(demo)),
                   "--f1"]) == 0
  stored = json.loads((checkpoint / calibration.FILE).read_text())
  assert stored["rule"] == "f1" and stored["fpr"] is None
  entry = stored["classes"]["poly"]
  assert entry["num_images"] == demo["opts"].images
  assert entry["num_anomalous"] == demo["opts"].images // 2
  assert np.isfinite(entry["threshold"]) and np.isfinite(
      entry["map_threshold"])


def test_predict_with_a_user_threshold_and_no_calibration(
    demo, checkpoint, tmp_path):
  image = cli_fixtures.target_test_images(demo)[0]
  out = tmp_path / "pred"
  assert cli.main(["predict", str(image), "--checkpoint", str(checkpoint),
                   "--threshold", "0.25", "--out", str(out)]) == 0
  row = json.loads((out / "predictions.jsonl").read_text())
  assert row["threshold"] == 0.25 and row["threshold_source"] == "user"
  assert row["is_anomalous"] == (row["score"] >= 0.25)
  # Without calibration, `auto` gives no decision (and says why).
  thr, source = predict.resolve_threshold("auto", None)
  assert thr is None and source.startswith("none")


def test_export_output_equals_live_detector(demo, tmp_path):
  import moeclip_jax
  from moeclip_jax.inference import export
  out = tmp_path / "exported"
  assert cli.main(["export", "--checkpoint", str(demo["detector"]),
                   "--class-names", "poly", "--out", str(out)]) == 0
  loaded = export.load_exported(out)
  live = moeclip_jax.load_detector(demo["detector"])
  rng = np.random.default_rng(0)
  size = live.image_size
  images = rng.integers(0, 256, (5, size, size, 3), np.uint8)
  want = live.predict(images, "poly")
  # One serialized function, symbolic batch. Same batch as the live call:
  # equal to float32 rounding; another batch size may fuse differently.
  for batch, atol in ((5, 1e-6), (3, 1e-4)):
    got = loaded.predict(images[:batch], "poly")
    np.testing.assert_allclose(got["anomaly_map"],
                               want["anomaly_map"][:batch], rtol=1e-6,
                               atol=atol)
    np.testing.assert_allclose(got["image_score"],
                               want["image_score"][:batch], rtol=1e-6,
                               atol=atol)
  with pytest.raises(KeyError, match="not exported"):
    loaded.predict(images, "unknown-class")


def test_bad_checkpoint_and_threshold_are_clear_errors(demo, tmp_path,
                                                       capsys):
  image = str(cli_fixtures.target_test_images(demo)[0])
  assert cli.main(["predict", image, "--checkpoint", str(tmp_path),
                   "--out", str(tmp_path / "p")]) == 2
  assert "config.json" in capsys.readouterr().err
  assert cli.main(["predict", image, "--checkpoint", str(demo["detector"]),
                   "--threshold", "high", "--out", str(tmp_path / "p")]) == 2
  assert "--threshold" in capsys.readouterr().err
