"""AnomalyMoE learns, end to end through the generic trainer.

An MVTec-layout set of two synthetic texture classes (normal training
images only) with salient colour-square defects on held-out test images;
a tiny random DINOv2-reg backbone written as a converted checkpoint; the
`python -m moeclip_jax.data components` verb makes the component masks
(keyed by image id, next to the dataset); `loop.train` trains on the normal
images with those masks, evaluates the test split (held-out evaluation via
`predict_fn`: per-class min-max statistics and in-graph component masks
from the saved centres) and exports a detector that `load_detector` serves.
"""

import json
import pathlib

import jax
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

import train_fixtures as tf
from moeclip_jax.verbs import data as data_cli
from moeclip_jax.methods.anomalymoe import model as model_lib
from moeclip_jax.models import dinov2
from moeclip_jax.train import loop
from moeclip_jax.checkpoint import params as ckpt_params

SIZE = 448  # the preset resizes to 448 and centre-crops 392
CLASSES = ("stripes", "rings")
STEPS = 80


def _texture(rng, name):
  """Smooth texture of one class, random phase: float[SIZE, SIZE, 3]."""
  yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
  phase = rng.uniform(0, 2 * np.pi)
  if name == "stripes":
    base = 0.5 + 0.4 * np.sin(2 * np.pi * 6 * yy + phase)
    colour = np.array([0.8, 0.4, 0.2])
  else:
    r = np.hypot(yy - 0.5, xx - 0.5)
    base = 0.5 + 0.4 * np.sin(2 * np.pi * 8 * r + phase)
    colour = np.array([0.2, 0.5, 0.8])
  img = base[..., None] * colour + 0.02 * rng.standard_normal((SIZE, SIZE, 3))
  return np.clip(img, 0, 1)


def _square(rng, img):
  """A salient colour square inside the 392-px centre crop."""
  side = int(rng.integers(90, 140))
  lo, hi = 40, SIZE - 40 - side
  r0, c0 = rng.integers(lo, hi, size=2)
  # Not black: the dark stripes are near-black after normalisation.
  colours = [[0.95, 0.05, 0.05], [0.05, 0.9, 0.1], [0.9, 0.1, 0.9],
             [1.0, 1.0, 1.0]]
  img = img.copy()
  img[r0:r0 + side, c0:c0 + side] = colours[int(rng.integers(len(colours)))]
  mask = np.zeros((SIZE, SIZE), np.uint8)
  mask[r0:r0 + side, c0:c0 + side] = 255
  return img, mask


def _write_dataset(root: pathlib.Path, n_train=8, n_good=4, n_bad=4):
  rng = np.random.default_rng(0)

  def save(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    if arr.dtype != np.uint8:
      arr = np.round(arr * 255).astype(np.uint8)
    Image.fromarray(arr).save(path)

  for name in CLASSES:
    for i in range(n_train):
      save(root / name / "train" / "good" / f"{i:03d}.png",
           _texture(rng, name))
    for i in range(n_good):
      save(root / name / "test" / "good" / f"{i:03d}.png", _texture(rng, name))
    for i in range(n_bad):
      img, mask = _square(rng, _texture(rng, name))
      save(root / name / "test" / "square" / f"{i:03d}.png", img)
      save(root / name / "ground_truth" / "square" / f"{i:03d}_mask.png",
           mask)


def _write_backbone(dst: pathlib.Path):
  """The tiny config's random DINOv2-reg, as `convert hf-dinov2` writes."""
  config = model_lib.tiny_config().backbone
  params = jax.jit(lambda k: dinov2.DinoV2(config).init(
      k, np.zeros((1, 392, 392, 3), np.float32)))(jax.random.key(7))
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  ckpt_params.write_params_checkpoint(
      dst, nn.unbox(params)["params"], {"model": "dinov2", **config.to_dict()},
      {"model": "dinov2", "source_format": "test"})


def _config(root, masks, backbone, steps):
  config = _tiny_config()
  config.data.name = "mvtec"
  config.data.root = str(root)
  config.data.component_masks = str(masks)
  config.data.component_slots = 3
  config.backbone.checkpoint = str(backbone)
  # The random tiny backbone's CLS token is image-independent (LayerScale
  # 1e-5), so the gate cannot route per image; with top-3 the weighted
  # losses drive all routing onto the lowest-loss group within ~25 steps
  # and the patch / global maps get zero fusion weight (chance-level
  # detection). Routing over all 18 experts keeps every group in the map.
  config.model.top_k = 18
  # 8 fake devices: batch 4 over data 4, experts split over expert 2.
  config.mesh.data, config.mesh.expert = 4, 2
  config.total_steps = steps
  config.log_every = 25
  config.ckpt_every = steps
  config.eval_every = steps
  return config


def _tiny_config():
  import importlib.util  # pylint: disable=g-import-not-at-top
  path = tf.REPO / "configs" / "anomalymoe_dinov2_b14.py"
  spec = importlib.util.spec_from_file_location("anomalymoe_cfg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("tiny")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """(dataset root, component mask folder, backbone checkpoint)."""
  base = tmp_path_factory.mktemp("amoe_learn")
  root = base / "mvtec"
  _write_dataset(root)
  _write_backbone(base / "backbone")
  rc = data_cli.main(["components", "mvtec", "--root", str(root),
                      "--backbone", str(base / "backbone"), "--k", "3",
                      "--ratio", "0.05", "--layers", "0,1,2,3"])
  assert rc == 0
  masks = pathlib.Path(str(root) + "_components")  # next to the dataset
  return root, masks, base / "backbone"


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory):
  root, masks, backbone = prepared
  workdir = tmp_path_factory.mktemp("amoe_run") / "run"
  config = _config(root, masks, backbone, STEPS)
  return config, workdir, loop.train(config, workdir)


@pytest.mark.slow
def test_trains_through_loop_and_detects_defects(prepared, trained):
  root, masks, _ = prepared
  stored = sorted(masks.glob("*/*.npz"))
  assert len(stored) == len(CLASSES) * 16  # every image, keyed by id
  assert (masks / "component_centres.npz").is_file()
  _, workdir, run = trained
  held = [h for h in run.history if "holdout/image_auroc" in h][-1]
  steps = [h for h in run.history if "loss_patch" in h]
  print("train", [(h["step"], round(h["loss_patch"], 4),
                   round(h["loss_component"], 4)) for h in steps])
  print("holdout", held)
  assert steps[-1]["loss_patch"] < steps[0]["loss_patch"]
  assert any(h["loss_component"] > 0 for h in steps)  # masks reached it
  assert held["holdout/image_auroc"] > 0.7, held
  assert held["holdout/pixel_auroc"] > 0.7, held

  # The exported detector serves new images with the saved class
  # statistics and component centres.
  import moeclip_jax  # pylint: disable=g-import-not-at-top
  det = moeclip_jax.load_detector(workdir / "detector")
  assert det.class_names == sorted(CLASSES)
  scores, labels = [], []
  for name in CLASSES:
    for kind, label in (("good", 0), ("square", 1)):
      for path in sorted((root / name / "test" / kind).glob("*.png")):
        img = np.asarray(Image.open(path).convert("RGB"))
        out = det.predict(img[None], name)
        assert out["anomaly_map"].shape == (1, SIZE, SIZE)
        assert out["component_masks"].any()  # from the saved centres
        scores.append(float(out["image_score"][0]))
        labels.append(label)
  auroc = roc_auc_score(labels, scores)
  print("detector image AUROC", auroc)
  assert auroc > 0.7
  cfg = json.loads((workdir / "detector" / "config.json").read_text())
  assert cfg["method"] == "anomalymoe"
  assert cfg["class_names"] == sorted(CLASSES)


@pytest.mark.slow
def test_resume_restores_estimator_and_calibration(trained):
  """A new run in the same workdir restores every trained / state leaf
  (experts, gate, CLUB estimator, per-class min-max) and the step."""
  config, workdir, run = trained
  again = loop.setup(config, workdir)
  loop.build_state(again)
  again.data = loop.make_data(again)
  assert loop.restore(again) == "workdir"
  assert int(again.state.step) == STEPS
  for group in ("mi_estimator", "calib"):
    want = jax.device_get(run.state.params[group])
    got = jax.device_get(again.state.params[group])
    jax.tree.map(np.testing.assert_array_equal, got, want)
  assert np.all(np.asarray(again.state.params["calib"]["seen"]) == 1)
  np.testing.assert_array_equal(
      jax.device_get(again.state.params["components"]["centres"]),
      jax.device_get(run.state.params["components"]["centres"]))
  again.manager.wait_until_finished()
