"""Tiled inference for large images, for any detector (`--tile SIZE[,OVERLAP]`).

An image is cut into SIZE x SIZE tiles on a grid with stride SIZE - OVERLAP
(the last row / column moved in to end at the border; an image smaller than
a tile is edge-padded). Tiles stream through the detector's jitted
`predict_images` a few batches at a time, each tile map is put back on the
tile's pixels (`detector.map_to_image`) and accumulated with a separable
weight window; the sum is divided by the summed weights at the end:

  map[y, x] = sum_t w_t(y, x) m_t(y, x) / sum_t w_t(y, x),
  w_t(y, x) = r(y - top_t) r(x - left_t),

where r is 1 inside the tile and ramps linearly over the OVERLAP pixels at
each edge (never 0). Any convex blend of equal values is that value, so a
constant map stays constant and there are no seams; the weight sum is an
outer product of two 1-D sums, so memory is one float32[H, W] accumulator
plus one chunk of tiles, whatever the tile count. Image score: "max" (of
the tile scores, default), "mean" (of the tile scores) or "map_max" (of the
stitched map).

Entry points: `predict_tiled` (one image), `predict_images` (the
`predict` verb, `serve --tile` and the Python API's `tile=`, through
`inference/decision.py` `run_images`), `eval_runs` (the `eval` verb: one
run with the loose-image semantics of each detector: InCTRL scores against
--prompts, AnomalyMoE with the stored or first-chunk min-max).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image

from moeclip_jax.data import images as image_io
from moeclip_jax.data import records as rec
from moeclip_jax.inference import overlay
from moeclip_jax.utils import console

SCORES = ("max", "mean", "map_max")
CHUNK_BATCHES = 4  # tiles predicted per detector call = batches x batch size


@dataclasses.dataclass(frozen=True)
class TileSpec:
  """SIZE x SIZE tiles (image pixels) sharing OVERLAP pixels; image score."""

  size: int
  overlap: int = 0
  score: str = "max"

  def __post_init__(self):
    if self.size < 1 or not 0 <= self.overlap < self.size:
      raise ValueError(f"--tile {self.size},{self.overlap}: need SIZE >= 1 "
                       "and 0 <= OVERLAP < SIZE")
    if self.score not in SCORES:
      raise ValueError(f"tile score must be one of {SCORES}, got "
                       f"{self.score!r}")

  def describe(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def parse(text: str | None, score: str = "max") -> TileSpec | None:
  """'SIZE' or 'SIZE,OVERLAP' (the --tile flag) -> TileSpec; None -> None."""
  if text is None or text == "":
    return None
  parts = str(text).split(",")
  try:
    numbers = [int(p) for p in parts]
  except ValueError:
    raise ValueError(f"--tile expects SIZE[,OVERLAP] in pixels, got "
                     f"{text!r}") from None
  if len(numbers) not in (1, 2):
    raise ValueError(f"--tile expects SIZE[,OVERLAP], got {text!r}")
  return TileSpec(numbers[0], numbers[1] if len(numbers) == 2 else 0, score)


def positions(length: int, size: int, overlap: int) -> list[int]:
  """Tile starts along one axis covering [0, length)."""
  if length <= size:
    return [0]
  stride = size - overlap
  out = list(range(0, length - size + 1, stride))
  if out[-1] + size < length:
    out.append(length - size)
  return out


def grid(hw, spec: TileSpec) -> tuple[list[int], list[int]]:
  """(tile tops, tile lefts) of an image of size `hw` (edge-padded to at
  least one tile)."""
  h, w = max(int(hw[0]), spec.size), max(int(hw[1]), spec.size)
  return (positions(h, spec.size, spec.overlap),
          positions(w, spec.size, spec.overlap))


def ramp(size: int, overlap: int) -> np.ndarray:
  """float64[size]: 1 inside, linear over `overlap` pixels at both ends."""
  w = np.ones(size, np.float64)
  if overlap:
    edge = (np.arange(overlap) + 0.5) / overlap  # (0, 1)
    w[:overlap] = np.minimum(w[:overlap], edge)
    w[-overlap:] = np.minimum(w[-overlap:], edge[::-1])
  return w


def _coverage(length: int, starts: Sequence[int], r: np.ndarray):
  """Summed 1-D weights of the tiles along one axis, float64[length]."""
  total = np.zeros(length, np.float64)
  for s in starts:
    total[s:s + len(r)] += r
  return total


@dataclasses.dataclass
class TiledPrediction:
  """anomaly_map float32[H, W], image_score, tile_scores float32[T], grid
  (rows, columns)."""

  anomaly_map: np.ndarray
  image_score: float
  tile_scores: np.ndarray
  grid: tuple[int, int]


def _padded(image: np.ndarray, size: int) -> np.ndarray:
  h, w = image.shape[:2]
  if h >= size and w >= size:
    return image
  return np.pad(image, ((0, max(size - h, 0)), (0, max(size - w, 0)),
                        (0, 0)), mode="edge")


def predict_tiled(detector, image: np.ndarray, class_name: str,
                  spec: TileSpec, batch_size: int = 8,
                  entry: dict | None = None,
                  desc: str | None = None) -> TiledPrediction:
  """One uint8[H, W, 3] image -> stitched map at [H, W] and image score."""
  h, w = image.shape[:2]
  image = _padded(image, spec.size)
  ph, pw = image.shape[:2]
  tops, lefts = grid((ph, pw), spec)
  r = ramp(spec.size, spec.overlap)
  window = np.outer(r, r).astype(np.float32)  # [size, size]
  acc = np.zeros((ph, pw), np.float32)  # [H, W]
  corners = [(t, left) for t in tops for left in lefts]
  chunk = max(1, CHUNK_BATCHES * batch_size)
  scores = []
  starts = range(0, len(corners), chunk)
  for start in console.progress(starts, desc, total=len(starts)):
    where = corners[start:start + chunk]
    tiles = [image[t:t + spec.size, left:left + spec.size]
             for t, left in where]
    maps, tile_scores = detector.predict_images(
        tiles, class_name, batch_size, entry, desc=None)
    for (t, left), amap in zip(where, maps):
      tile_map = detector.map_to_image(np.asarray(amap, np.float32),
                                       (spec.size, spec.size))
      acc[t:t + spec.size, left:left + spec.size] += tile_map * window
    scores.append(np.asarray(tile_scores, np.float32))
  acc /= _coverage(ph, tops, r).astype(np.float32)[:, None]
  acc /= _coverage(pw, lefts, r).astype(np.float32)[None, :]
  amap = acc[:h, :w]
  tile_scores = np.concatenate(scores)
  return TiledPrediction(amap, _score(spec.score, tile_scores, amap),
                         tile_scores, (len(tops), len(lefts)))


def _score(how: str, tile_scores: np.ndarray, amap: np.ndarray) -> float:
  if how == "max":
    return float(tile_scores.max())
  if how == "mean":
    return float(tile_scores.mean())
  return float(amap.max())


def predict_images(detector, images: Sequence[np.ndarray], class_name: str,
                   spec: TileSpec, batch_size: int = 8,
                   entry: dict | None = None
                   ) -> tuple[list[np.ndarray], np.ndarray]:
  """Tiled `predict_images`: (maps at each image's size, scores [N])."""
  maps, scores = [], []
  for image in images:
    p = predict_tiled(detector, image, class_name, spec, batch_size, entry)
    maps.append(p.anomaly_map)
    scores.append(p.image_score)
  return maps, np.asarray(scores, np.float32)


def _nearest(mask: np.ndarray, size: int) -> np.ndarray:
  return np.asarray(Image.fromarray(mask).resize(
      (size, size), Image.Resampling.NEAREST)) > 0


def eval_runs(detector, records: Sequence[rec.Record], spec: TileSpec,
              batch_size: int = 8, map_size: int | None = None
              ) -> Iterator[tuple[dict, dict]]:
  """One eval run of tiled predictions (the `Detector.eval_runs` contract):
  maps and masks are brought to `map_size` (default the model size)."""
  names = rec.class_names(records)
  size = map_size or detector.image_size
  out: dict[str, list] = {k: [] for k in (
      "image_scores", "labels", "class_ids", "has_mask", "index", "maps",
      "masks")}
  for cid, name in enumerate(names):
    sel = [i for i, r in enumerate(records) if r.class_name == name]
    # No paths: a detector must not load every whole (large) image here;
    # AnomalyMoE then takes its min-max from the first chunk of tiles.
    detector.begin_predict(None, name, None)
    for i in console.progress(sel, f"eval tiled {name}", total=len(sel)):
      r = records[i]
      image, mask = image_io.load_pair(r.image_path, r.mask_path, r.crop)
      p = predict_tiled(detector, image, name, spec, batch_size)
      out["maps"].append(overlay.resize_map(p.anomaly_map, (size, size)))
      out["masks"].append(_nearest(mask, size).astype(np.float32))
      out["image_scores"].append(p.image_score)
      out["labels"].append(r.label)
      out["class_ids"].append(cid)
      out["has_mask"].append(r.mask_path is not None)
      out["index"].append(i)
  pred = {k: np.asarray(v) for k, v in out.items()}
  pred["image_scores"] = pred["image_scores"].astype(np.float32)
  pred["class_names"] = names
  yield pred, {"tile": spec.describe()}
