"""Tiled inference (inference/tiling.py) on synthetic detectors: stitching,
seamless blending, streaming in bounded chunks, and the verbs' --tile."""

import numpy as np
import pytest
from scipy import ndimage

from moeclip_jax.inference import overlay, tiling

S = 16  # model input side of the synthetic detectors


class PixelDetector:
  """map = a per-pixel function of the tile at the model size; records the
  size of every call (streaming) and the tiles it saw."""

  image_size = S

  def __init__(self, fn=None, radius=0):
    self.fn = fn or (lambda x: x.mean(-1) / 255.0)
    self.radius = radius
    self.calls = []

  def map_of(self, image):
    amap = self.fn(image.astype(np.float32))
    if self.radius:  # a local receptive field, zero outside the input
      k = 2 * self.radius + 1
      amap = ndimage.uniform_filter(amap, k, mode="constant")
    return amap.astype(np.float32)

  def predict_images(self, images, class_name, batch_size=8, entry=None,
                     desc=None):
    del class_name, entry, desc
    self.calls.append(len(images))
    maps = np.stack([self.map_of(overlay.resize_map(
        im.astype(np.float32).mean(-1), (S, S))[..., None].repeat(3, -1))
        if im.shape[0] != S else self.map_of(im) for im in images])
    return maps, maps.reshape(len(images), -1).max(1)

  def map_to_image(self, amap, hw):
    return overlay.resize_map(amap, hw)

  def begin_predict(self, paths, class_name, entry, out=None):
    return {}


def _image(h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


def test_grid_covers_the_image_and_ends_at_the_border():
  assert tiling.positions(40, 16, 0) == [0, 16, 24]
  assert tiling.positions(40, 16, 4) == [0, 12, 24]
  assert tiling.positions(10, 16, 4) == [0]
  assert tiling.parse("512,64") == tiling.TileSpec(512, 64)
  assert tiling.parse(None) is None
  for bad in ("x", "16,16", "0", "1,2,3"):
    with pytest.raises(ValueError, match="--tile"):
      tiling.parse(bad)


def test_stitched_map_equals_untiled_map_away_from_tile_borders():
  det = PixelDetector(radius=2)
  image = _image(48, 64)
  full = det.map_of(image)  # the untiled map of a model that sees it all
  p = tiling.predict_tiled(det, image, "x", tiling.TileSpec(S, 0))
  assert p.anomaly_map.shape == (48, 64) and p.grid == (3, 4)
  inner = np.ones((48, 64), bool)  # pixels >= radius from any tile edge
  for edge in range(0, 65, S):
    inner[:, max(edge - 2, 0):edge + 2] = False
  for edge in range(0, 49, S):
    inner[max(edge - 2, 0):edge + 2, :] = False
  np.testing.assert_allclose(p.anomaly_map[inner], full[inner], atol=1e-5)
  assert not np.allclose(p.anomaly_map, full)  # the borders do differ


def test_overlap_blending_of_a_pixel_model_is_exact_everywhere():
  det = PixelDetector()
  image = _image(45, 70, seed=1)
  p = tiling.predict_tiled(det, image, "x", tiling.TileSpec(S, 6))
  np.testing.assert_allclose(p.anomaly_map, det.map_of(image), atol=1e-5)


@pytest.mark.parametrize("overlap", [0, 3, 8, 15])
def test_a_constant_map_stays_constant_no_seams(overlap):
  det = PixelDetector(fn=lambda x: np.full(x.shape[:2], 0.37, np.float32))
  p = tiling.predict_tiled(det, _image(50, 83), "x",
                           tiling.TileSpec(S, overlap))
  np.testing.assert_allclose(p.anomaly_map, 0.37, atol=1e-6)


def test_tiles_stream_in_bounded_chunks_and_score_is_configurable():
  det = PixelDetector()
  image = _image(16 * 10, 16 * 9, seed=2)
  spec = tiling.TileSpec(S, 0)
  p = tiling.predict_tiled(det, image, "x", spec, batch_size=2)
  assert sum(det.calls) == 90
  assert max(det.calls) == 2 * tiling.CHUNK_BATCHES
  assert p.image_score == pytest.approx(p.tile_scores.max())
  mean = tiling.predict_tiled(det, image, "x", tiling.TileSpec(S, 0, "mean"))
  assert mean.image_score == pytest.approx(p.tile_scores.mean())
  top = tiling.predict_tiled(det, image, "x",
                             tiling.TileSpec(S, 0, "map_max"))
  assert top.image_score == pytest.approx(p.anomaly_map.max())


def test_small_images_are_padded_and_cropped_back():
  det = PixelDetector()
  image = _image(9, 30, seed=3)
  p = tiling.predict_tiled(det, image, "x", tiling.TileSpec(S, 4))
  assert p.anomaly_map.shape == (9, 30)
  np.testing.assert_allclose(p.anomaly_map, det.map_of(image), atol=1e-5)


def test_tiled_eval_runs_bring_maps_and_masks_to_one_size(tmp_path):
  import data_fakes  # pylint: disable=g-import-not-at-top

  from moeclip_jax.data import readers  # pylint: disable=g-import-not-at-top
  data_fakes.make_mvtec(str(tmp_path), classes=("bottle",))
  records = [r for r in readers.scan("mvtec", str(tmp_path)).records
             if r.split == "test"]
  (pred, facts), = tiling.eval_runs(PixelDetector(), records,
                                    tiling.TileSpec(8, 2), map_size=8)
  assert pred["maps"].shape == (4, 8, 8) and pred["masks"].shape == (4, 8, 8)
  assert list(pred["labels"]) == [r.label for r in records]
  assert pred["masks"][pred["labels"] == 1].sum() > 0
  assert facts == {"tile": {"size": 8, "overlap": 2, "score": "max"}}


class VerbDetector(PixelDetector):
  """What the predict / eval bodies need besides the forward."""

  method = "synthetic"
  score_fusion = None
  domain = "industrial"
  default_protocol = "raw"

  def __init__(self, checkpoint_dir):
    super().__init__()
    self.checkpoint_dir = checkpoint_dir

  def run_facts(self):
    return {"method": self.method}


def test_predict_paths_with_tile_writes_maps_at_image_size(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top

  from moeclip_jax.verbs import predict  # pylint: disable=g-import-not-at-top
  image = _image(37, 53, seed=4)
  (tmp_path / "in").mkdir()
  Image.fromarray(image).save(tmp_path / "in" / "a.png")
  (tmp_path / "ck").mkdir()
  det = VerbDetector(tmp_path / "ck")
  summary = predict.predict_paths(
      det, [str(tmp_path / "in")], tmp_path / "out", "x", "0.5",
      save_maps=True, tile=tiling.TileSpec(S, 4))
  row, = summary["predictions"]
  amap = np.load(tmp_path / "out" / "maps" / "in_a.npy")
  np.testing.assert_allclose(amap, det.map_of(image), atol=1e-5)
  assert row["raw_score"] == pytest.approx(amap.max(), abs=1e-5)
  assert row["is_anomalous"] == (row["score"] >= 0.5)


def test_evaluate_detector_with_tile_writes_reports(tmp_path):
  import data_fakes  # pylint: disable=g-import-not-at-top

  from moeclip_jax.inference import evaluation, runner  # pylint: disable=g-import-not-at-top
  data_fakes.make_mvtec(str(tmp_path / "data"))
  (tmp_path / "ck").mkdir()
  (tmp_path / "ck" / "config.json").write_text("{}")
  report = evaluation.evaluate_detector(
      VerbDetector(tmp_path / "ck"),
      runner.DatasetSpec("mvtec", str(tmp_path / "data")), tmp_path / "ev",
      map_size=8, overlays_per_class=2, tile=tiling.TileSpec(8, 2))
  assert report["counts"]["num_images"] == 8
  assert (tmp_path / "ev" / "metrics.json").is_file()
  assert len(list((tmp_path / "ev" / "overlays").rglob("*.png"))) == 4
