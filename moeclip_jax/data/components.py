"""Component (part) masks: per-class k-means on backbone patch features.

Used by AnomalyMoE (its component experts); `moeclip-jax data components`
writes them for a dataset (see `write_dataset_masks`).

Official offline step (`segment_image.py`), reimplemented on arrays:
  1. per class, every `train/good` image's patch features [g*g, C] are
     reduced with a greedy coreset (farthest-point sampling, `ratio` = 1 %
     of the patches, on a fixed random 128-d projection) and fed to
     `MiniBatchKMeans(k=5, random_state=0, batch_size=2048, n_init=10)`
     with `partial_fit`;
  2. per image: cosine similarity of every centre to every patch, minus its
     mean over the patches, clamped at 0, bilinearly upsampled
     (align_corners=True) to the image, softmax over the clusters (the
     DenseCRF unary; the CRF refinement itself is not applied — documented
     difference, pydensecrf is unmaintained);
  3. each cluster map (x 255) is binarised with Otsu's threshold;
  4. background filter, computed once per class on the **first training
     image**: keep cluster i when the maximum of its blurred map exceeds 64
     and its mask touches fewer than 3 of the 4 corner 20x20 patches.

The fitted `ComponentModel` (centres + kept clusters) is saved with the
model so `predict` can build masks for new images. Features default to the
DINOv2 backbone's own patch tokens (the official code uses a DINO v1
ViT-S/16 at 448 px; a documented substitution).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import pathlib
from typing import Callable, Iterable, Sequence

import numpy as np

from moeclip_jax.checkpoint import backbones
from moeclip_jax.data import images


def greedy_coreset(feats: np.ndarray, ratio: float, seed: int = 0,
                   proj_dim: int = 128) -> np.ndarray:
  """Farthest-point subset of `feats` [N, C]; returns [max(1, N*ratio), C]."""
  n = feats.shape[0]
  count = max(int(n * ratio), 1)
  if ratio >= 1:
    return feats
  rng = np.random.default_rng(seed)
  reduced = feats
  if feats.shape[1] != proj_dim:
    proj = rng.standard_normal((feats.shape[1], proj_dim)) / np.sqrt(
        feats.shape[1])
    reduced = feats @ proj
  sq = np.sum(reduced**2, axis=1)
  dist = np.sqrt(np.maximum(sq[:, None] + sq[None] - 2 * reduced @ reduced.T,
                            0))
  anchor = np.linalg.norm(dist, axis=1)
  picks = []
  for _ in range(count):
    idx = int(np.argmax(anchor))
    picks.append(idx)
    anchor = np.minimum(anchor, dist[:, idx])
  return feats[np.asarray(picks)]


def fit_centres(feature_maps: Iterable[np.ndarray], k: int = 5,
                ratio: float = 0.01, seed: int = 0) -> np.ndarray:
  """Per-class centres [k, C] from train feature maps [g, g, C] each."""
  from sklearn.cluster import MiniBatchKMeans  # pylint: disable=g-import-not-at-top

  kmeans = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=2048,
                           n_init=10)
  pooled = []
  for fmap in feature_maps:
    flat = np.asarray(fmap, np.float64).reshape(-1, fmap.shape[-1])
    pooled.append(greedy_coreset(flat, ratio, seed))
  # partial_fit needs >= k samples per call: feed the coreset samples in
  # chunks of at least k rows (the official per-image calls use 7+ rows).
  samples = np.concatenate(pooled)
  if samples.shape[0] < k:
    raise ValueError(f"{samples.shape[0]} coreset samples < k={k} clusters")
  step = max(k, min(2048, samples.shape[0]))
  for start in range(0, samples.shape[0], step):
    chunk = samples[start:start + step]
    if chunk.shape[0] >= k:
      kmeans.partial_fit(chunk)
  return kmeans.cluster_centers_.astype(np.float32)


def _align_corners_matrix(in_size: int, out_size: int) -> np.ndarray:
  mat = np.zeros((out_size, in_size), np.float64)
  for i in range(out_size):
    src = i * (in_size - 1) / max(out_size - 1, 1)
    i0 = min(int(np.floor(src)), in_size - 1)
    i1 = min(i0 + 1, in_size - 1)
    mat[i, i0] += 1 - (src - i0)
    mat[i, i1] += src - i0
  return mat


def cluster_probs(fmap: np.ndarray, centres: np.ndarray,
                  size: int) -> np.ndarray:
  """fmap [g, g, C], centres [k, C] -> softmax cluster maps [k, size, size]."""
  g = fmap.shape[0]
  f = fmap.reshape(-1, fmap.shape[-1]).astype(np.float64)
  f /= np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
  c = centres.astype(np.float64)
  c /= np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
  sim = c @ f.T  # [k, g*g]
  sim = np.maximum(sim - sim.mean(axis=1, keepdims=True), 0)
  sim = sim.reshape(-1, g, g)
  mat = _align_corners_matrix(g, size)
  up = np.einsum("ih,khw,jw->kij", mat, sim, mat)
  up = np.exp(up - up.max(axis=0, keepdims=True))
  return up / up.sum(axis=0, keepdims=True)


def otsu_masks(probs: np.ndarray) -> np.ndarray:
  """Binarises each [size, size] map (x 255, uint8) with Otsu: [k, s, s]."""
  from skimage.filters import threshold_otsu  # pylint: disable=g-import-not-at-top

  out = np.zeros(probs.shape, np.uint8)
  for i, p in enumerate(probs):
    grey = np.round(p * 255).astype(np.uint8)
    if grey.min() == grey.max():
      continue
    out[i] = grey > threshold_otsu(grey)
  return out


def background_filter(probs: np.ndarray, masks: np.ndarray,
                      min_peak: float = 64, corner: int = 20) -> list[int]:
  """Clusters kept: blurred peak > min_peak and < 3 corners touched."""
  from scipy.ndimage import gaussian_filter  # pylint: disable=g-import-not-at-top

  keep = []
  for i, (p, m) in enumerate(zip(probs, masks)):
    peak = gaussian_filter(p * 255, sigma=2).max()
    corners = [m[:corner, :corner], m[:corner, -corner:],
               m[-corner:, :corner], m[-corner:, -corner:]]
    touched = sum(int(c.any()) for c in corners)
    if peak > min_peak and touched < 3:
      keep.append(i)
  return keep


@dataclasses.dataclass
class ComponentModel:
  """Per-class centres and kept cluster indices."""

  centres: dict[str, np.ndarray]
  keep: dict[str, list[int]]
  image_size: int = 392

  def masks(self, class_name: str, fmap: np.ndarray) -> np.ndarray:
    """Component masks uint8[n, S, S] (n kept clusters) of one image."""
    probs = cluster_probs(fmap, self.centres[class_name], self.image_size)
    masks = otsu_masks(probs)
    return masks[self.keep[class_name]]

  def save(self, path) -> None:
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    np.savez(path / "component_centres.npz", **self.centres)
    (path / "component_filter.json").write_text(json.dumps(
        {"keep": self.keep, "image_size": self.image_size}, indent=2))

  @classmethod
  def load(cls, path) -> "ComponentModel":
    path = pathlib.Path(path)
    with np.load(path / "component_centres.npz") as data:
      centres = {k: data[k] for k in data.files}
    meta = json.loads((path / "component_filter.json").read_text())
    return cls(centres, meta["keep"], meta["image_size"])


def fit_class(train_maps: list[np.ndarray], image_size: int = 392,
              k: int = 5, ratio: float = 0.01):
  """(centres [k, C], kept clusters) of one class from its train maps."""
  centres = fit_centres(train_maps, k, ratio)
  probs = cluster_probs(train_maps[0], centres, image_size)
  keep = background_filter(probs, otsu_masks(probs))
  if not keep:  # the official fallback when no filter info exists
    keep = list(range(k))
  return centres, keep


# ---- dataset masks on disk ----------------------------------------------------
# OUT/<class>/<image id>.npz  {"masks": packbits uint8, "shape": [n, S, S]}
# OUT/component_centres.npz, OUT/component_filter.json  (the fitted model)
# The image id is the image path relative to the dataset root with '/' ->
# '__', so masks are matched by id, never by a glob order.
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
MASK_SIZE = 392


def image_id(root, path) -> str:
  return os.path.relpath(path, root).replace(os.sep, "__")


def default_out(root) -> str:
  """`<root>_components`: next to the dataset, not inside it."""
  return str(root).rstrip("/\\") + "_components"


def preprocess(rgb: np.ndarray, resize: int = 448, crop: int = MASK_SIZE):
  """uint8[H, W, 3] -> float32[crop, crop, 3]: Resize, CenterCrop, norm."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  img = Image.fromarray(rgb).resize((resize, resize), Image.BILINEAR)
  x = np.asarray(img, np.float32) / 255.0
  top = int(round((resize - crop) / 2.0))
  x = x[top:top + crop, top:top + crop]
  return (x - MEAN) / STD


def save_masks(path, masks: np.ndarray) -> None:
  np.savez_compressed(path, masks=np.packbits(masks),
                      shape=np.array(masks.shape))


def load_masks(path) -> np.ndarray:
  """Reads one saved mask file -> uint8[n, S, S]."""
  with np.load(path) as data:
    shape = tuple(int(s) for s in data["shape"])
    flat = np.unpackbits(data["masks"])[:int(np.prod(shape))]
  return flat.reshape(shape)


def make_featurizer(checkpoint, layers=(2, 3, 4, 5, 6, 7, 8, 9)):
  """Converted DINOv2 checkpoint -> fn(images [B, S, S, 3]) -> [B, g, g, D]
  (mean of the `layers` blocks' patch tokens)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  module, params, config = backbones.load_dinov2(checkpoint)
  prefix = 1 + config.num_registers

  @jax.jit
  def fn(x):
    _, aux = module.apply({"params": params}, x, layers=tuple(layers))
    mean = jnp.mean(jnp.stack([aux["hidden"][i] for i in layers]), 0)
    g = int(round((mean.shape[1] - prefix) ** 0.5))
    return mean[:, prefix:].reshape(x.shape[0], g, g, -1)

  return fn


def _features(fn, records, batch=8):

  out = []
  for start in range(0, len(records), batch):
    chunk = records[start:start + batch]
    x = np.stack([preprocess(images.load_image(r.image_path))
                  for r in chunk])
    out.extend(np.asarray(fn(x)))
  return out


def write_dataset_masks(records: Sequence, featurize: Callable, root, out,
                        k: int = 5, ratio: float = 0.01,
                        say: Callable[[str], None] = print) -> "ComponentModel":
  """Fits each class on its normal train images, writes every image's masks
  and the fitted model under `out`; returns the model."""
  by_class = collections.defaultdict(list)
  for r in records:
    by_class[r.class_name].append(r)
  out = pathlib.Path(out)
  centres, keep = {}, {}
  for name, recs in sorted(by_class.items()):
    train = [r for r in recs if r.split == "train" and r.label == 0]
    if not train:
      say(f"SKIP {name}: no normal training images")
      continue
    centres[name], keep[name] = fit_class(_features(featurize, train),
                                          MASK_SIZE, k, ratio)
    model = ComponentModel({name: centres[name]}, {name: keep[name]},
                           MASK_SIZE)
    (out / name).mkdir(parents=True, exist_ok=True)
    for r, fmap in zip(recs, _features(featurize, recs)):
      save_masks(out / name / f"{image_id(root, r.image_path)}.npz",
                 model.masks(name, fmap))
    say(f"{name}: {len(recs)} images, clusters kept {keep[name]}")
  model = ComponentModel(centres, keep, MASK_SIZE)
  model.save(out)
  return model
