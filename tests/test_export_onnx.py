"""`moeclip-jax export --format onnx`: each method's tiny detector exported
and run in onnxruntime (CPU). Maps and scores equal the JAX detector's to
<= 1e-4 on the same images, at two batch sizes of one ONNX file (dynamic
batch); the folder's contract (export.json, tables, the metadata inside
the model, a runner without jax); clear errors for bad arguments. The
ViT-L/14@518 round trip is `-m slow`.
"""

import json
import pathlib
import subprocess
import sys

import numpy as np
import onnx
import pytest
from PIL import Image

import cli_fixtures
import train_fixtures
import moeclip_jax
from moeclip_jax import cli
from moeclip_jax.inference import calibration, exported, onnx_runner, runner
from moeclip_jax.inference import export as export_lib

METHODS = ("moeclip", "inctrl", "anomalymoe")
CLASS = "widget"
ATOL = 1e-4


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """Tiny checkpoints of the three methods; AnomalyMoE calibrated on
  'widget' (its export needs the class's map statistics)."""
  root = tmp_path_factory.mktemp("onnx")
  data = cli_fixtures.methods_dataset(root / "data")
  amoe = cli_fixtures.tiny_anomalymoe_checkpoint(root / "anomalymoe")
  assert cli.main(["calibrate", "--checkpoint", str(amoe), "--normal",
                   str(data / CLASS / "train" / "good"), "--class-name",
                   CLASS, "--fpr", "0.5"]) == 0
  return {"data": data, "anomalymoe": amoe,
          "moeclip": cli_fixtures.tiny_moeclip_checkpoint(root / "moeclip"),
          "inctrl": cli_fixtures.tiny_inctrl_checkpoint(root / "inctrl")}


def _export(checkpoint, out, *flags) -> pathlib.Path:
  assert cli.main(["export", "--checkpoint", str(checkpoint), "--format",
                   "onnx", "--class-names", CLASS, "--out", str(out),
                   *flags]) == 0
  return pathlib.Path(out)


def _load(paths) -> list[np.ndarray]:
  return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def _live(world, method):
  """(live detector, uint8 test images, predict kwargs), prompts set."""
  det = moeclip_jax.load_detector(world[method])
  folder = world["data"] / CLASS
  images = _load(sorted((folder / "test").rglob("*.png"))[:3])
  kwargs = {}
  if method == "anomalymoe":
    entry = calibration.load(world[method])["classes"][CLASS]
    kwargs["class_min_max"] = entry["class_min_max"]
  return det, images, kwargs


@pytest.mark.parametrize("method", METHODS)
def test_onnx_export_equals_the_jax_detector(world, tmp_path, method):
  out = _export(world[method], tmp_path / "onnx")
  onnx.checker.check_model(str(out / "predict.onnx"))
  det, images, kwargs = _live(world, method)
  loaded = onnx_runner.load_onnx(out)
  if method == "inctrl":  # K = 2 prompts, a graph input
    prompts = _load(sorted((world["data"] / CLASS / "train" / "good")
                           .glob("*.png"))[:2])
    det.set_prompts(runner.prepare_images(prompts, det.preprocess))
    loaded.set_prompts(np.stack(prompts))
  pixels = runner.prepare_images(images, det.preprocess)
  want = det.predict(pixels, CLASS, **kwargs)
  size = det.image_size
  for batch in (1, 3):  # one file, dynamic batch
    got = loaded.predict(np.stack(images[:batch]), CLASS)  # uint8: its own
    assert got["anomaly_map"].shape == (batch, size, size)  # preprocessing
    assert got["image_score"].shape == (batch,)
    np.testing.assert_allclose(got["anomaly_map"],
                               np.asarray(want["anomaly_map"])[:batch],
                               rtol=0, atol=ATOL)
    np.testing.assert_allclose(got["image_score"],
                               np.asarray(want["image_score"])[:batch],
                               rtol=0, atol=ATOL)
  # class inputs are fed, not baked in: other values, other outputs
  # (InCTRL's text moves the score only)
  loaded.tables["flipped"] = [np.asarray(np.flip(x))
                             for x in loaded.tables[CLASS]]
  other = loaded.predict(np.stack(images), "flipped")
  assert not all(np.allclose(other[k], got[k]) for k in got)


def test_onnx_folder_contract(world, tmp_path):
  out = _export(world["moeclip"], tmp_path / "onnx")
  meta = json.loads((out / "export.json").read_text())
  assert meta["format"] == exported.ONNX_FORMAT
  assert meta["program"] == "predict.onnx" and meta["opset"] == 18
  assert not meta["external_data"] and not (out / "predict.onnx.data").exists()
  assert not (out / "params.npz").exists()  # parameters are initializers
  assert [(i["name"], i["shape"]) for i in meta["inputs"]] == [
      ("pixels", ["batch", 32, 32, 3]), ("text", [32, 2])]
  assert [(o["name"], o["shape"]) for o in meta["outputs"]] == [
      ("anomaly_map", ["batch", 32, 32]), ("image_score", ["batch"])]
  assert meta["classes"] == ["object", CLASS]
  # the normalisation, also inside the model file
  model = onnx.load(str(out / "predict.onnx"))
  inner = json.loads({p.key: p.value for p in model.metadata_props}[
      "moeclip_jax.export"])
  assert inner["preprocess"] == meta["preprocess"]
  assert inner["preprocess"]["mean"] == pytest.approx(
      [0.48145466, 0.4578275, 0.40821073])
  dims = model.graph.input[0].type.tensor_type.shape.dim
  assert dims[0].dim_param == "batch" and dims[1].dim_value == 32
  assert {i.name for i in model.graph.input} == {"pixels", "text"}
  # class tables: the JSON copy equals the table file
  with np.load(out / "text.npz") as z:
    for cls in meta["classes"]:
      entry = meta["class_tables"][cls]["text"]
      table = np.asarray(entry["data"], entry["dtype"]).reshape(
          entry["shape"])
      np.testing.assert_array_equal(table, z[cls])
  # either format through load_exported; the StableHLO runner says where
  assert isinstance(export_lib.load_exported(out), onnx_runner.OnnxDetector)
  with pytest.raises(ValueError, match="load_onnx"):
    export_lib.ExportedDetector(out)


def test_onnx_runs_from_export_json_alone_without_jax(world, tmp_path):
  """What a non-Python deployment does: normalise with export.json's
  mean / std, feed the class table from export.json, run the session."""
  out = _export(world["moeclip"], tmp_path / "onnx")
  det, images, _ = _live(world, "moeclip")
  want = det.predict(runner.prepare_images(images, det.preprocess), CLASS)
  code = f"""
import json, sys
import numpy as np, onnxruntime
from PIL import Image
meta = json.load(open("{out}/export.json"))
pre, s = meta["preprocess"], meta["image_size"]
images = np.load("{tmp_path}/images.npy")
x = np.stack([np.asarray(Image.fromarray(im).resize((s, s), Image.BICUBIC))
              for im in images]).astype(np.float32) / 255.0
x = ((x - np.float32(pre["mean"])) / np.float32(pre["std"])).astype(np.float32)
t = meta["class_tables"]["{CLASS}"]["text"]
text = np.asarray(t["data"], t["dtype"]).reshape(t["shape"])
sess = onnxruntime.InferenceSession("{out}/predict.onnx",
                                    providers=["CPUExecutionProvider"])
amap, score = sess.run(None, {{"pixels": x, "text": text}})
np.save("{tmp_path}/score.npy", score)
from moeclip_jax.inference import onnx_runner
again = onnx_runner.load_onnx("{out}").predict(images, "{CLASS}")
np.save("{tmp_path}/runner.npy", again["image_score"])
assert "jax" not in sys.modules, "the ONNX runner imported jax"
"""
  np.save(tmp_path / "images.npy", np.stack(images))
  done = subprocess.run([sys.executable, "-c", code], capture_output=True,
                        text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr
  for name in ("score", "runner"):
    np.testing.assert_allclose(np.load(tmp_path / f"{name}.npy"),
                               want["image_score"], rtol=0, atol=ATOL)


def test_bad_export_arguments_are_clear_errors(world, tmp_path, capsys):
  ck = str(world["moeclip"])
  with pytest.raises(SystemExit) as exc:
    cli.main(["export", "--checkpoint", ck, "--format", "tflite", "--out",
              str(tmp_path / "x")])
  assert exc.value.code == 2
  err = capsys.readouterr().err
  assert "'tflite'" in err and "onnx" in err and "stablehlo" in err
  out = _export(ck, tmp_path / "onnx")
  before = (out / "predict.onnx").read_bytes()
  for fmt in ("onnx", "stablehlo"):  # an export is never overwritten
    assert cli.main(["export", "--checkpoint", ck, "--format", fmt,
                     "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "already holds an export" in err
    assert "--force" in err
  assert (out / "predict.onnx").read_bytes() == before
  # --force replaces it: a StableHLO export leaves no ONNX file behind
  assert cli.main(["export", "--checkpoint", ck, "--force", "--out",
                   str(out)]) == 0
  assert not (out / "predict.onnx").exists()
  assert (out / "predict.stablehlo").is_file()
  capsys.readouterr()
  afile = tmp_path / "file"
  afile.write_text("")
  assert cli.main(["export", "--checkpoint", ck, "--format", "onnx",
                   "--out", str(afile)]) == 2
  err = capsys.readouterr().err
  assert str(afile) in err and "not a folder" in err
  assert cli.main(["export", "--checkpoint", ck, "--format", "onnx",
                   "--platforms", "cuda", "--out", str(tmp_path / "p")]) == 2
  assert "--platforms is for --format stablehlo" in capsys.readouterr().err


@pytest.mark.slow
def test_vitl_518_onnx_round_trip(tmp_path):
  """ViT-L/14@518 MoECLIP (random weights): the export goes to external
  data (> 1 GiB of initializers) and matches the JAX detector."""
  from moeclip_jax.methods import registry  # pylint: disable=g-import-not-at-top
  method = registry.make_method(
      train_fixtures.load_config("moeclip_vitl14_336.py"))
  assert method.image_size == 518
  ck = cli_fixtures.moeclip_checkpoint(tmp_path / "vitl",
                                       method.clip_config, method.config)
  out = _export(ck, tmp_path / "onnx")
  meta = json.loads((out / "export.json").read_text())
  assert meta["external_data"] and (out / "predict.onnx.data").is_file()
  assert (out / "predict.onnx").stat().st_size < 64 << 20
  onnx.checker.check_model(str(out / "predict.onnx"))
  det = moeclip_jax.load_detector(ck)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2, 518, 518, 3), np.uint8)
  want = det.predict(images, CLASS)
  loaded = onnx_runner.load_onnx(out)
  for batch in (1, 2):
    got = loaded.predict(images[:batch], CLASS)
    np.testing.assert_allclose(got["anomaly_map"],
                               np.asarray(want["anomaly_map"])[:batch],
                               rtol=1e-5, atol=ATOL)
    np.testing.assert_allclose(got["image_score"],
                               np.asarray(want["image_score"])[:batch],
                               rtol=1e-5, atol=ATOL)
    diff = np.abs(got["anomaly_map"] - want["anomaly_map"][:batch]).max()
    print(f"ViT-L/14@518 batch {batch}: max |map diff| {diff:.2e}")
