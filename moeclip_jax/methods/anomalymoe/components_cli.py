"""`python -m moeclip_jax.data components ...`: AnomalyMoE component masks.

Registers the `components` verb with `moeclip_jax.data.cli` when imported
(list this module in `cli.COMMAND_MODULES`). For every class of a dataset:
backbone features of the `train/good` images (Resize 448 -> CenterCrop 392,
mean of the target blocks' patch tokens) -> `components.fit_class`; then the
masks of every image, saved as

  OUT/<class>/<image id>.npz   {"masks": packbits uint8, "shape": [n, S, S]}
  OUT/component_centres.npz, OUT/component_filter.json   (the fitted model)

The image id is the image path relative to `--root` with '/' -> '__', so
masks are matched by id, never by a glob order. `--out` defaults to a
folder next to the dataset, `<root>_components`; point the trainer's
`config.data.component_masks` at it. `--layers` names the backbone blocks
whose patch tokens are averaged (the model's `target_layers`: 2..9 for
ViT-B/14, 0..3 for the tiny test config).
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib

import numpy as np

from moeclip_jax.methods.anomalymoe import components

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def image_id(root, path) -> str:
  return os.path.relpath(path, root).replace(os.sep, "__")


def preprocess(rgb: np.ndarray, resize: int = 448, crop: int = 392):
  """uint8[H, W, 3] -> float32[crop, crop, 3]: Resize, CenterCrop, norm."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  img = Image.fromarray(rgb).resize((resize, resize), Image.BILINEAR)
  x = np.asarray(img, np.float32) / 255.0
  top = int(round((resize - crop) / 2.0))
  x = x[top:top + crop, top:top + crop]
  return (x - MEAN) / STD


def make_featurizer(checkpoint, layers=(2, 3, 4, 5, 6, 7, 8, 9)):
  """Converted DINOv2 checkpoint -> fn(images [B, S, S, 3]) -> [B, g, g, D]."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from moeclip_jax.convert import hf_dinov2  # pylint: disable=g-import-not-at-top

  module, params, config = hf_dinov2.load_checkpoint(checkpoint)
  prefix = 1 + config.num_registers

  @jax.jit
  def fn(x):
    _, aux = module.apply({"params": params}, x, layers=tuple(layers))
    mean = jnp.mean(jnp.stack([aux["hidden"][i] for i in layers]), 0)
    g = int(round((mean.shape[1] - prefix) ** 0.5))
    return mean[:, prefix:].reshape(x.shape[0], g, g, -1)

  return fn


def _features(fn, records, batch=8):
  from moeclip_jax.data import images  # pylint: disable=g-import-not-at-top

  out = []
  for start in range(0, len(records), batch):
    chunk = records[start:start + batch]
    x = np.stack([preprocess(images.load_image(r.image_path))
                  for r in chunk])
    out.extend(np.asarray(fn(x)))
  return out


def run(args: argparse.Namespace) -> int:
  from moeclip_jax.data import readers  # pylint: disable=g-import-not-at-top

  scan = readers.scan(args.name, args.root)
  by_class = collections.defaultdict(list)
  for r in scan.records:
    by_class[r.class_name].append(r)
  layers = tuple(int(x) for x in str(args.layers).split(",") if x.strip())
  fn = make_featurizer(args.backbone, layers)
  out = pathlib.Path(args.out or default_out(args.root))
  centres, keep = {}, {}
  for name, recs in sorted(by_class.items()):
    train = [r for r in recs if r.split == "train" and r.label == 0]
    if not train:
      print(f"SKIP {name}: no normal training images")
      continue
    centres[name], keep[name] = components.fit_class(
        _features(fn, train), 392, args.k, args.ratio)
    model = components.ComponentModel({name: centres[name]},
                                      {name: keep[name]}, 392)
    (out / name).mkdir(parents=True, exist_ok=True)
    for r, fmap in zip(recs, _features(fn, recs)):
      masks = model.masks(name, fmap)
      np.savez_compressed(out / name / f"{image_id(args.root, r.image_path)}"
                          ".npz", masks=np.packbits(masks),
                          shape=np.array(masks.shape))
    print(f"{name}: {len(recs)} images, clusters kept {keep[name]}")
  components.ComponentModel(centres, keep, 392).save(out)
  return 0


def default_out(root) -> str:
  """`<root>_components`: next to the dataset, not inside it."""
  return str(root).rstrip("/\\") + "_components"


def load_masks(path) -> np.ndarray:
  """Reads one saved mask file -> uint8[n, S, S]."""
  with np.load(path) as data:
    shape = tuple(int(s) for s in data["shape"])
    flat = np.unpackbits(data["masks"])[:int(np.prod(shape))]
  return flat.reshape(shape)


def add_arguments(parser: argparse.ArgumentParser) -> None:
  from moeclip_jax.data import readers  # pylint: disable=g-import-not-at-top

  parser.add_argument("name", choices=sorted(readers.READERS))
  parser.add_argument("--root", required=True, help="dataset folder")
  parser.add_argument("--backbone", required=True,
                      help="converted DINOv2 checkpoint (convert hf-dinov2)")
  parser.add_argument("--out", default="",
                      help="mask output folder (default <root>_components)")
  parser.add_argument("--layers", default="2,3,4,5,6,7,8,9",
                      help="backbone blocks averaged (model target_layers)")
  parser.add_argument("--k", type=int, default=5, help="clusters per class")
  parser.add_argument("--ratio", type=float, default=0.01,
                      help="coreset fraction per image")


def _register() -> None:
  from moeclip_jax.data import cli  # pylint: disable=g-import-not-at-top

  if "components" not in cli.COMMANDS:
    cli.register("components", "AnomalyMoE per-class k-means part masks",
                 add_arguments, run)


_register()
