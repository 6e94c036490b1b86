"""`moeclip-jax` eval / predict / calibrate / export on InCTRL and
AnomalyMoE checkpoints (tiny random models, a synthetic MVTec tree).

The method comes from the checkpoint's config.json (`load_detector`); the
verbs go through each method's `Detector` (methods/<m>/detector.py).
"""

import json
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

import cli_fixtures
from moeclip_jax import cli
from moeclip_jax.inference import runner
from moeclip_jax.methods import registry
from moeclip_jax.inference import calibration

STANDARD_KEYS = {"per_class", "mean", "counts", "protocol"}
NUM_TEST = 2 * 4  # classes x (2 good + 2 bad)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  root = tmp_path_factory.mktemp("methods")
  return {"data": cli_fixtures.methods_dataset(root / "data"),
          "inctrl": cli_fixtures.tiny_inctrl_checkpoint(root / "inctrl"),
          "amoe": cli_fixtures.tiny_anomalymoe_checkpoint(root / "amoe"),
          "root": root}


def _metrics(out):
  return json.loads((pathlib.Path(out) / "metrics.json").read_text())


def _rows(out):
  text = (pathlib.Path(out) / "predictions.jsonl").read_text()
  return [json.loads(line) for line in text.splitlines()]


def test_inctrl_eval_prompt_draws_mean_and_std(world, tmp_path):
  out, saved = tmp_path / "eval", tmp_path / "prompts"
  assert cli.main(["eval", "--checkpoint", str(world["inctrl"]),
                   "--dataset", "mvtec", "--root", str(world["data"]),
                   "--prompt-draws", "2", "--prompt-seed", "5",
                   "--save-prompts", str(saved), "--overlays", "2",
                   "--out", str(out)]) == 0
  metrics = _metrics(out)
  assert STANDARD_KEYS <= set(metrics)
  assert metrics["protocol"]["name"] == "raw"  # InCTRL's score as given
  assert metrics["protocol"]["method"] == "inctrl"
  assert metrics["counts"]["num_images"] == NUM_TEST
  draws = metrics["prompt_draws"]
  assert draws["num_draws"] == 2 and draws["shots"] == 2  # config.json
  assert draws["seeds"] == [5, 6]
  per_draw = [_metrics(out / "draws" / f"draw_{i}")["mean"] for i in (0, 1)]
  for key in ("image_auroc", "pixel_auroc"):
    values = [d[key] for d in per_draw]
    np.testing.assert_allclose(metrics["mean"][key], np.mean(values))
    np.testing.assert_allclose(metrics["std"]["mean"][key], np.std(values))
  # Prompts: K of the class's normal TRAIN images, saved per class/draw.
  for draw in draws["draws"]:
    for name, facts in draw["prompts"].items():
      assert len(facts["paths"]) == 2
      assert all(f"/{name}/train/good/" in p for p in facts["paths"])
  assert len(list(saved.glob("*.npz"))) == 2 * 2
  assert len(list((out / "overlays").rglob("*.png"))) == 2 * 2


def test_inctrl_dataset_seam_equals_detector_predict(world):
  """Mixed-class jitted batches score like set_prompts + predict."""
  import moeclip_jax
  det = moeclip_jax.load_detector(world["inctrl"])
  spec = runner.DatasetSpec("mvtec", str(world["data"]))
  everything = runner.scan_all(spec)
  records = runner.scan_records(spec, everything)
  pred, _ = next(det.eval_runs(records, everything, batch_size=3))
  for cid, name in enumerate(pred["class_names"]):
    sel = np.flatnonzero(pred["class_ids"] == cid)
    ps = pred["prompt_sets"][name]
    det.set_prompts(ps.images)
    pixels = runner.prepare_images(
        [np.asarray(Image.open(records[int(pred["index"][i])].image_path)
                    .convert("RGB")) for i in sel], det.preprocess)
    want = det.predict(pixels, name)
    np.testing.assert_allclose(pred["image_scores"][sel],
                               want["image_score"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pred["maps"][sel], want["anomaly_map"],
                               rtol=1e-4, atol=1e-5)


def test_inctrl_calibrate_then_predict_with_prompts(world, tmp_path):
  ck = tmp_path / "inctrl"
  shutil.copytree(world["inctrl"], ck)  # calibration.json is written there
  data = world["data"] / "widget"
  prompts = str(data / "train" / "good")
  assert cli.main(["calibrate", "--checkpoint", str(ck), "--normal",
                   str(data / "test" / "good"), "--class-name", "widget",
                   "--prompts", prompts, "--fpr", "0.5"]) == 0
  stored = json.loads((ck / calibration.FILE).read_text())
  assert stored["method"] == "inctrl"
  assert stored["score_rule"] == "image_score"
  entry = stored["classes"]["widget"]
  assert len(entry["prompts"]["paths"]) == 2
  out = tmp_path / "pred"
  assert cli.main(["predict", str(data / "test"), "--checkpoint", str(ck),
                   "--class-name", "widget", "--prompts", prompts,
                   "--save-maps", "--out", str(out)]) == 0
  rows = _rows(out)
  assert len(rows) == 4
  for row in rows:
    assert row["threshold_source"] == "calibration"
    assert row["score"] == row["raw_score"]  # no MoECLIP fusion
    assert row["is_anomalous"] == (row["score"] >= entry["threshold"])
    stem = pathlib.Path(row["overlay"]).stem
    amap = np.load(out / "maps" / f"{stem}.npy")
    assert amap.shape == (48, 48)  # the input size
  assert (out / "prompt_set.npz").is_file()
  _check_inctrl_export(ck, tmp_path / "exported", data)


def _live_and_exported(ck, out, images, class_name, prompts=None, **kw):
  import moeclip_jax
  from moeclip_jax.inference import export
  from moeclip_jax.inference import runner
  assert cli.main(["export", "--checkpoint", str(ck), "--out", str(out)]) == 0
  loaded = export.load_exported(out)
  detector = moeclip_jax.load_detector(ck)
  x = runner.prepare_images(images, detector.preprocess)
  if prompts is not None:
    detector.set_prompts(runner.prepare_images(prompts, detector.preprocess))
    loaded.set_prompts(np.stack(prompts))
  want = detector.predict(x, class_name, **kw)
  return loaded, np.stack(images), want


def _check_inctrl_export(ck, out, data):
  """The exported InCTRL (calibrated class 'widget', K=2) = live model."""
  load = lambda p: np.asarray(Image.open(p).convert("RGB"))
  images = [load(p) for p in sorted((data / "test").rglob("*.png"))]
  prompts = [load(p) for p in sorted((data / "train" / "good").glob("*"))]
  loaded, images, want = _live_and_exported(ck, out, images, "widget",
                                            prompts[:2])
  for batch in (4, 3):  # symbolic batch
    got = loaded.predict(images[:batch], "widget")
    np.testing.assert_allclose(got["image_score"], want["image_score"][:batch],
                               rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(got["anomaly_map"], want["anomaly_map"][:batch],
                               rtol=1e-6, atol=1e-5)
  with pytest.raises(ValueError, match="K=2"):
    loaded.set_prompts(np.stack(prompts[:3]))


def test_inctrl_predict_without_prompts_is_a_clear_error(world, tmp_path,
                                                         capsys):
  image = next((world["data"] / "widget" / "test" / "good").glob("*.png"))
  assert cli.main(["predict", str(image), "--checkpoint",
                   str(world["inctrl"]), "--out", str(tmp_path / "p")]) == 2
  err = capsys.readouterr().err
  assert "InCTRL needs --prompts" in err


def test_flags_of_other_methods_are_errors(world, tmp_path, capsys):
  image = next((world["data"] / "widget" / "test" / "good").glob("*.png"))
  assert cli.main(["predict", str(image), "--checkpoint", str(world["amoe"]),
                   "--prompts", str(image), "--out", str(tmp_path)]) == 2
  assert "--prompts not used by anomalymoe" in capsys.readouterr().err
  assert cli.main(["eval", "--checkpoint", str(world["inctrl"]), "--dataset",
                   "mvtec", "--root", str(world["data"]), "--domain",
                   "medical", "--out", str(tmp_path)]) == 2
  assert "--domain not used by inctrl" in capsys.readouterr().err
  with pytest.raises(ValueError, match="--prompt-draws not used by moeclip"):
    registry.DETECTORS["moeclip"].check_options("ck", {"prompt_draws": 2})


def test_anomalymoe_eval_writes_standard_metrics(world, tmp_path):
  out = tmp_path / "eval"
  assert cli.main(["eval", "--checkpoint", str(world["amoe"]), "--dataset",
                   "mvtec", "--root", str(world["data"]), "--minmax", "test",
                   "--overlays", "2", "--out", str(out)]) == 0
  metrics = _metrics(out)
  assert set(metrics) == STANDARD_KEYS
  assert metrics["counts"]["num_images"] == NUM_TEST
  assert np.isfinite(metrics["mean"]["pixel_auroc"])
  assert metrics["protocol"]["minmax_source"] == {"gadget": "test set",
                                                  "widget": "test set"}
  for png in (out / "overlays").rglob("*.png"):
    with Image.open(png) as im:
      assert im.size[1] == 48  # overlays at the input size


def test_anomalymoe_calibrate_then_predict(world, tmp_path):
  ck = tmp_path / "amoe"
  shutil.copytree(world["amoe"], ck)
  data = world["data"] / "widget"
  assert cli.main(["calibrate", "--checkpoint", str(ck), "--normal",
                   str(data / "train" / "good"), "--class-name", "widget",
                   "--fpr", "0.5"]) == 0
  entry = json.loads((ck / calibration.FILE).read_text())["classes"][
      "widget"]
  out = tmp_path / "pred"
  assert cli.main(["predict", str(data / "test"), "--checkpoint", str(ck),
                   "--class-name", "widget", "--save-maps", "--out",
                   str(out)]) == 0
  mm = np.asarray(entry["class_min_max"])
  assert mm.shape == (3, 2) and np.all(mm[:, 0] <= mm[:, 1])
  rows = _rows(out)
  assert len(rows) == 4
  for row in rows:
    assert row["threshold"] == entry["threshold"]
    assert np.isfinite(row["score"])
    stem = pathlib.Path(row["overlay"]).stem
    assert np.load(out / "maps" / f"{stem}.npy").shape == (48, 48)
  # export: the calibrated class's statistics travel with it.
  images = [np.asarray(Image.open(r["path"]).convert("RGB")) for r in rows]
  loaded, images, want = _live_and_exported(
      ck, tmp_path / "exported", images, "widget",
      class_min_max=entry["class_min_max"])
  got = loaded.predict(images, "widget")
  np.testing.assert_allclose(got["image_score"], want["image_score"],
                             rtol=1e-6, atol=1e-5)
  np.testing.assert_allclose(got["anomaly_map"], want["anomaly_map"],
                             rtol=1e-6, atol=1e-5)
  with pytest.raises(KeyError, match="not exported"):
    loaded.predict(images, "gadget")


def test_anomalymoe_export_needs_statistics(world, tmp_path, capsys):
  assert cli.main(["export", "--checkpoint", str(world["amoe"]),
                   "--class-names", "gadget", "--out", str(tmp_path)]) == 2
  assert "run `moeclip-jax calibrate" in capsys.readouterr().err


def test_map_to_image_undoes_resize_and_centre_crop():
  pre = {"preset": "anomalymoe", "size": 448, "crop": 392}
  amap = np.zeros((392, 392), np.float32)
  amap[:, 196:] = 1.0  # right half of the crop
  full = runner.map_to_image(amap, (64, 64), pre)
  assert full.shape == (64, 64)
  assert full[:, :28].max() == 0.0 and full[:, 36:].min() == 1.0
  square = runner.map_to_image(np.ones((32, 32)), (20, 50),
                                 {"preset": "inctrl", "size": 32,
                                  "crop": 32})
  assert square.shape == (20, 50)
