"""grain pipelines: presets, joint augmentation, resume, eval padding."""

import data_fakes
import grain
import numpy as np
from PIL import Image
import pytest

from moeclip_jax.data import pipeline
from moeclip_jax.data import readers
from moeclip_jax.data import records as rec
from moeclip_jax.data import sources
from moeclip_jax.data import tfds_builders
from moeclip_jax.data import transforms

SMALL = {"preset": "moeclip", "size": 24}


@pytest.fixture(name="mvtec")
def _mvtec(tmp_path):
  data_fakes.make_mvtec(str(tmp_path))
  records = readers.scan("mvtec", str(tmp_path)).records
  return sources.RecordSource(records), rec.class_names(records)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_presets_match_pil_and_torchvision_geometry():
  img = np.random.default_rng(0).integers(0, 256, (30, 50, 3), np.uint8)
  moe = transforms.resize_image(img, transforms.PRESETS["moeclip"])
  ref = np.asarray(Image.fromarray(img).resize((518, 518), Image.BICUBIC))
  np.testing.assert_array_equal(moe, ref)
  inc = transforms.resize_image(img, transforms.PRESETS["inctrl"])
  wide = np.asarray(Image.fromarray(img).resize((400, 240), Image.BICUBIC))
  np.testing.assert_array_equal(inc, wide[:, 80:320])  # round((400-240)/2)
  amoe = transforms.get_preprocess("anomalymoe")
  out = transforms.normalize(transforms.resize_image(img, amoe), amoe)
  assert out.shape == (392, 392, 3) and out.dtype == np.float32
  assert transforms.get_preprocess({"preset": "inctrl", "crop": None}).crop \
      is None


def test_mask_geometry_is_nearest_and_binary():
  mask = np.zeros((30, 50), np.uint8)
  mask[10:20, 5:15] = 255
  for name in transforms.PRESETS:
    out = transforms.resize_mask(mask, transforms.PRESETS[name])
    assert set(np.unique(out)) <= {0.0, 1.0} and out.any()


def test_augmentation_moves_image_and_mask_together():
  rng = np.random.default_rng(1)
  mask = (rng.random((20, 20)) > 0.7).astype(np.float32)
  image = np.repeat(mask[..., None], 3, axis=2) * 2.0 + 1.0  # 1 or 3
  aug = transforms.Augment(p=1.0)
  for seed in range(5):
    img2, mask2 = aug(image, mask, np.random.default_rng(seed))
    inside = img2[..., 0] != 0  # 0 = fill: pixels rotated/shifted in
    np.testing.assert_array_equal(img2[..., 0][inside] == 3.0,
                                  mask2[inside] == 1.0)
    assert set(np.unique(mask2)) <= {0.0, 1.0}


def test_rotation_and_translation_fill_zero():
  x = np.ones((10, 10, 4), np.float32)
  assert transforms.rotate_nearest(x, 30.0)[0, 0, 0] == 0
  np.testing.assert_array_equal(transforms.rotate_nearest(x, 0.0), x)
  shifted = transforms.translate(x, 3, -2)
  assert shifted[:, :3].sum() == 0 and shifted[-2:].sum() == 0
  assert shifted[:8, 3:].min() == 1


def test_train_batches_shapes_and_determinism(mvtec):
  source, names = mvtec
  cfg = pipeline.PipelineConfig(batch_size=4, preprocess=SMALL, seed=3)
  a = _take(iter(pipeline.train_loader(source, names, cfg)), 4)
  b = _take(iter(pipeline.train_loader(source, names, cfg)), 4)
  _same(a, b)
  assert a[0]["image"].shape == (4, 24, 24, 3)
  assert a[0]["mask"].shape == (4, 24, 24)
  other = _take(iter(pipeline.train_loader(
      source, names, pipeline.PipelineConfig(
          batch_size=4, preprocess=SMALL, seed=4))), 4)
  assert any(not np.array_equal(x["image"], y["image"])
             for x, y in zip(a, other))


def test_resumed_iterator_yields_the_same_batches(mvtec):
  source, names = mvtec
  cfg = pipeline.PipelineConfig(batch_size=5, preprocess=SMALL, seed=7,
                                synthetic_p=0.5)
  uninterrupted = _take(iter(pipeline.train_loader(source, names, cfg)), 8)
  first = iter(pipeline.train_loader(source, names, cfg))
  _take(first, 3)  # crosses an epoch boundary later (12 records / 5)
  state = first.get_state()
  resumed = iter(pipeline.train_loader(source, names, cfg))
  resumed.set_state(state)
  _same(_take(resumed, 5), uninterrupted[3:])


def test_eval_padding_never_leaks(mvtec):
  source, names = mvtec  # 12 records, batch 5 -> 15 slots, 3 padded
  cfg = pipeline.PipelineConfig(batch_size=5, preprocess=SMALL)
  batches = list(pipeline.eval_loader(source, names, cfg))
  assert [b["image"].shape[0] for b in batches] == [5, 5, 5]
  valid = np.concatenate([b["valid"] for b in batches])
  index = np.concatenate([b["index"] for b in batches])
  assert valid.sum() == 12 and not valid[12:].any()
  np.testing.assert_array_equal(index[valid], np.arange(12))
  # A metric computed with the validity mask equals the unpadded metric.
  labels = np.concatenate([b["label"] for b in batches])
  scores = np.concatenate([b["image"].mean(axis=(1, 2, 3)) for b in batches])
  masked = np.sum(scores * valid) / valid.sum()
  direct = np.mean([transforms.normalize(transforms.resize_image(
      source[i]["image"], transforms.get_preprocess(SMALL)),
      transforms.get_preprocess(SMALL)).mean() for i in range(12)])
  np.testing.assert_allclose(masked, direct, rtol=1e-5)
  assert labels[valid].sum() == sum(source[i]["label"] for i in range(12))


def test_eval_shards_cover_everything_once(mvtec):
  source, names = mvtec
  cfg = pipeline.PipelineConfig(batch_size=4, preprocess=SMALL)
  seen, steps = [], []
  for shard in range(2):
    opts = grain.sharding.ShardOptions(shard_index=shard, shard_count=2)
    batches = list(pipeline.eval_loader(source, names, cfg, opts))
    steps.append(len(batches))
    for b in batches:
      seen += b["index"][b["valid"]].tolist()
  assert steps[0] == steps[1]  # every process runs the same number of steps
  assert sorted(seen) == list(range(12))


def test_train_shards_are_disjoint(mvtec):
  source, names = mvtec
  cfg = pipeline.PipelineConfig(batch_size=2, preprocess=SMALL, num_epochs=1,
                                augment="none")
  flat = []
  for shard in range(2):
    opts = grain.sharding.ShardOptions(shard_index=shard, shard_count=2,
                                       drop_remainder=True)
    for b in pipeline.train_loader(source, names, cfg, opts):
      flat += [x.tobytes() for x in b["image"]]
  assert len(flat) == 12 and len(set(flat)) == 12


def test_pipeline_reads_a_built_tfds_dataset(tmp_path):
  data_fakes.make_mvtec(str(tmp_path / "raw"))
  tfds_builders.build("mvtec", str(tmp_path / "raw"), str(tmp_path / "o"))
  test = tfds_builders.load(str(tmp_path / "o"), "mvtec")["test"]
  names = tfds_builders.load_class_names(str(tmp_path / "o"), "mvtec")
  cfg = pipeline.PipelineConfig(batch_size=3, preprocess=SMALL)
  batches = list(pipeline.eval_loader(test, names, cfg))
  assert sum(int(b["valid"].sum()) for b in batches) == 8
  assert {int(c) for b in batches for c in b["class_id"]} == {0, 1}
  assert any(b["mask"].any() for b in batches)


def test_unknown_class_is_a_clear_error(mvtec):
  source, _ = mvtec
  cfg = pipeline.PipelineConfig(batch_size=2, preprocess=SMALL)
  with pytest.raises(KeyError, match="not in the class vocabulary"):
    list(pipeline.eval_loader(source, ["bottle"], cfg))


def test_iterator_state_through_an_orbax_checkpoint(mvtec, tmp_path):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  source, names = mvtec
  cfg = pipeline.PipelineConfig(batch_size=4, preprocess=SMALL, seed=2)

  def manager():
    return ocp.CheckpointManager(
        str(tmp_path / "ckpt"), item_names=("data",),
        item_handlers={"data": grain.checkpoint.CheckpointHandler()})

  first = iter(pipeline.train_loader(source, names, cfg))
  _take(first, 2)
  saver = manager()
  saver.save(2, args=ocp.args.Composite(
      data=grain.checkpoint.CheckpointSave(first)))
  saver.wait_until_finished()
  expected = _take(first, 3)
  resumed = iter(pipeline.train_loader(source, names, cfg))
  manager().restore(2, args=ocp.args.Composite(
      data=grain.checkpoint.CheckpointRestore(resumed)))
  _same(_take(resumed, 3), expected)


@pytest.mark.slow
def test_resume_with_two_workers(mvtec):
  source, names = mvtec
  cfg = pipeline.PipelineConfig(batch_size=3, preprocess=SMALL, seed=5,
                                worker_count=2)
  # grain batches inside each worker, so batches depend on worker_count;
  # the reference is an uninterrupted run with the same worker_count.
  reference = _take(iter(pipeline.train_loader(source, names, cfg)), 7)
  first = iter(pipeline.train_loader(source, names, cfg))
  _same(_take(first, 3), reference[:3])
  state = first.get_state()
  resumed = iter(pipeline.train_loader(source, names, cfg))
  resumed.set_state(state)
  _same(_take(resumed, 4), reference[3:])
