"""AnomalyMoE trainer-seam pieces that need no training: in-graph component
masks vs the numpy k-means masks, the per-class calibration EMA, fusion
with per-image statistics, the normal-only data wrapper with masks matched
by image id, and the optimizer labels."""

import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from moeclip_jax.data import components
from moeclip_jax.methods.anomalymoe import components_jax
from moeclip_jax.methods.anomalymoe import data as data_lib
from moeclip_jax.methods.anomalymoe import predictor


def _maps(n=3, g=8, dim=16, seed=0):
  rng = np.random.default_rng(seed)
  parts = rng.standard_normal((3, dim)) * 3
  out = []
  for _ in range(n):
    fmap = np.empty((g, g, dim), np.float32)
    fmap[:, : g // 3] = parts[0]
    fmap[:, g // 3: 2 * g // 3] = parts[1]
    fmap[:, 2 * g // 3:] = parts[2]
    out.append(fmap + 0.3 * rng.standard_normal(fmap.shape))
  return out


def test_in_graph_masks_match_numpy_component_model():
  maps = _maps()
  centres, keep = components.fit_class(maps, image_size=56, k=3, ratio=0.3)
  model = components.ComponentModel({"c": centres}, {"c": keep}, 56)
  arrays = components_jax.model_arrays(model, ["x", "c"], k=4, dim=16)
  assert arrays["keep"][0].sum() == 0  # class without centres
  fmaps = jnp.asarray(np.stack(maps))
  got = components_jax.component_masks(
      fmaps, jnp.asarray(arrays["centres"][[1, 1, 1]]),
      jnp.asarray(arrays["keep"][[1, 1, 1]]), 56)
  for i, fmap in enumerate(maps):
    want = np.zeros((4, 56, 56), np.float32)
    want[keep] = model.masks("c", fmap)
    agree = np.mean(np.asarray(got[i]) == want)
    assert agree > 0.995, agree  # f32 vs f64 rounding at grey-level edges
  none = components_jax.component_masks(
      fmaps[:1], jnp.asarray(arrays["centres"][:1]),
      jnp.asarray(arrays["keep"][:1]), 56)
  assert not np.any(np.asarray(none))


def test_otsu_threshold_matches_skimage():
  from skimage.filters import threshold_otsu  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  for _ in range(5):
    grey = np.concatenate([rng.integers(10, 60, 300),
                           rng.integers(120, 250, 200)]).reshape(20, 25)
    got = int(components_jax.otsu_threshold(jnp.asarray(grey, jnp.int32)))
    assert got == int(threshold_otsu(grey.astype(np.uint8)))


def test_calibration_ema_per_class_and_fusion():
  calib = {"min_max": jnp.zeros((3, 3, 2)), "seen": jnp.zeros((3,))}
  maps = jnp.stack([jnp.full((3, 4, 4), v) for v in (1.0, 2.0)])
  maps = maps.at[1, :, 0, 0].set(5.0)  # [B=2, 3, 4, 4]
  new = predictor.calibration_update(calib, maps, jnp.array([2, 2]), 0.5)
  np.testing.assert_allclose(new["seen"], [0, 0, 1])
  np.testing.assert_allclose(new["min_max"][2, :, 0], 1.0)
  np.testing.assert_allclose(new["min_max"][2, :, 1], 5.0)
  np.testing.assert_allclose(new["min_max"][0], 0.0)
  again = predictor.calibration_update(new, maps * 3, jnp.array([2, 0]), 0.5)
  np.testing.assert_allclose(again["min_max"][2, :, 0], (1.0 + 3.0) / 2)
  np.testing.assert_allclose(again["min_max"][2, :, 1], (5.0 + 3.0) / 2)
  np.testing.assert_allclose(again["min_max"][0, :, 1], 15.0)  # first seen
  params = {"calib": again}
  mm = predictor.image_min_max(params, jnp.array([2, 1]), maps)
  np.testing.assert_allclose(mm[0], again["min_max"][2])
  np.testing.assert_allclose(mm[1, :, 0], 1.0)  # unseen: batch statistics
  np.testing.assert_allclose(mm[1, :, 1], 5.0)
  fused = predictor.fuse(maps, jnp.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.]]),
                         mm)
  np.testing.assert_allclose(fused[0, 1, 1], (1.0 - 2.0) / (4.0 - 2.0),
                             rtol=1e-6)
  np.testing.assert_allclose(fused[1, 0, 0], 1.0, rtol=1e-6)


def _dataset(root):
  from moeclip_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  synthetic.write_mvtec_tree(str(root), class_names=("a", "b"), n_train=3,
                             n_good=2, n_bad=2, size=(32, 32), seed=0)


def _config(root, masks=""):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 2
  c.data = ml_collections.ConfigDict(dict(
      name="mvtec", root=str(root), component_masks=str(masks),
      component_slots=3, holdout_fraction=1.0, eval_batch_size=2,
      worker_count=0))
  return c


PREPROCESS = {"preset": "anomalymoe", "size": 32, "crop": 28}


def test_train_data_normal_only_with_masks_by_id(tmp_path):
  root = tmp_path / "mvtec"
  _dataset(root)
  records = data_lib.scan_records(_config(root).data)
  train = [r for r in records if r.split == "train"]
  out = tmp_path / "masks"
  for i, r in enumerate(train):  # mask i: i + 1 rows set, slot (i % 2)
    masks = np.zeros((2, 28, 28), np.uint8)
    masks[i % 2, : i + 1] = 1
    name = components.image_id(str(root), r.image_path)
    path = out / r.class_name / f"{name}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, masks=np.packbits(masks),
                        shape=np.array(masks.shape))
  data = data_lib.AnomalyMoETrainData(_config(root, out), PREPROCESS, 28)
  assert data.class_names == ["a", "b"]
  assert len(data.holdout) == 8 and {r.split for r in data.holdout} == {
      "test"}
  seen = set()
  for _ in range(6):
    batch = data.next()
    assert batch["image"].shape == (2, 28, 28, 3)
    assert batch["component_masks"].shape == (2, 3, 28, 28)
    assert np.all(batch["label"] == 0)  # normal images only
    for m in batch["component_masks"]:
      rows = int(m.any(-1).sum())
      seen.add(rows)
      assert m[2].sum() == 0 and m[(rows - 1) % 2].sum() == rows * 28
  assert seen == set(range(1, 7))  # every training image's own masks
  state = data.state()
  first = data.next()
  data.restore(state)
  np.testing.assert_array_equal(data.next()["image"], first["image"])
  fresh = data_lib.AnomalyMoETrainData(_config(root, out), PREPROCESS, 28)
  fresh.restore(state)  # a new process resuming from a checkpoint
  np.testing.assert_array_equal(fresh.next()["component_masks"],
                                first["component_masks"])


def test_train_data_missing_mask_file_is_an_error(tmp_path):
  root = tmp_path / "mvtec"
  _dataset(root)
  (tmp_path / "masks").mkdir()
  with pytest.raises(FileNotFoundError, match="no mask file"):
    data_lib.AnomalyMoETrainData(_config(root, tmp_path / "masks"),
                                 PREPROCESS, 28)
  data = data_lib.AnomalyMoETrainData(_config(root), PREPROCESS, 28)
  assert data.next()["component_masks"].shape == (2, 1, 28, 28)


def test_make_tx_labels_estimator_model_frozen_state():
  from moeclip_jax.methods.anomalymoe import method as method_lib  # pylint: disable=g-import-not-at-top
  fake = types.SimpleNamespace(optim=ml_collections.ConfigDict(
      dict(lr=1e-3, warmup_steps=0, grad_clip=0.1)), total_steps=4)
  params = {"model": {"encoder": jnp.ones(2), "gate": jnp.ones(2)},
            "mi_estimator": {"w": jnp.ones(2)},
            "calib": {"seen": jnp.ones(2)}, "components": {"keep": jnp.ones(2)}}
  labels = {"model": {"encoder": "frozen", "gate": "trainable"},
            "mi_estimator": {"w": "trainable"}, "calib": {"seen": "state"},
            "components": {"keep": "frozen"}}
  tx = method_lib.AnomalyMoEMethod.make_tx(fake, labels)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  for path in (("model", "encoder"), ("calib", "seen"),
               ("components", "keep")):
    assert not np.any(np.asarray(updates[path[0]][path[1]])), path
  assert np.all(np.asarray(updates["model"]["gate"]) < 0)
  assert np.all(np.asarray(updates["mi_estimator"]["w"]) < 0)


def test_test_time_jitter_switch_only_changes_the_global_view():
  from moeclip_jax.methods.anomalymoe import model as model_lib  # pylint: disable=g-import-not-at-top
  from moeclip_jax.methods.anomalymoe import ops  # pylint: disable=g-import-not-at-top
  cfg = model_lib.tiny_config()
  module = model_lib.AnomalyMoE(cfg)
  s = cfg.image_size
  x = jax.random.normal(jax.random.key(1), (2, s, s, 3))
  masks = jnp.zeros((2, 1, s, s))
  params = {"model": module.init(jax.random.key(0), x, x, masks)["params"]}
  cid = jnp.zeros((2,), jnp.int32)
  plain = predictor.predict(module, params, x, cid, masks)
  again = predictor.predict(module, params, x, cid, masks)
  np.testing.assert_array_equal(plain["image_score"], again["image_score"])
  key = jax.random.key(3)
  jit_a = predictor.predict(module, params, x, cid, masks, jitter_rng=key)
  jit_b = predictor.predict(module, params, x, cid, masks, jitter_rng=key)
  np.testing.assert_array_equal(jit_a["anomaly_map"], jit_b["anomaly_map"])
  raw, _ = predictor.eval_maps(module, params["model"], x, masks)
  raw_j, _ = predictor.eval_maps(module, params["model"], x, masks,
                                 ops.color_jitter(x, key))
  np.testing.assert_array_equal(raw["map_patch"], raw_j["map_patch"])
  assert not np.allclose(raw["map_global"], raw_j["map_global"])
