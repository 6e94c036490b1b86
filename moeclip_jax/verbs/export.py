"""`moeclip-jax export`: a detector as serialized StableHLO (jax.export).

OUT/
  predict.stablehlo  jax.export serialization of
                     f(params_flat, pixels f32[b, S, S, 3], text f32[D, 2])
                       -> (anomaly_map f32[b, S, S], image_score f32[b])
                     with a symbolic batch `b`; parameters are ARGUMENTS
                     (a ViT-L baked in as constants nears the 2 GiB limit)
  params.npz         the flat parameter leaves p0..pN, in argument order
  text.npz           text matrices [D, 2] per exported class ("object" too)
  export.json        image size, domain, normalisation, classes, platforms

`load_exported(OUT)` runs it with jax + numpy + PIL only (no model code).
InCTRL and AnomalyMoE exports (their own inputs: K prompt images / per-class
map statistics) are described in export_methods.py.
"""

from __future__ import annotations

import json
import logging
import pathlib
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from moeclip_jax.utils import images as image_utils
from moeclip_jax.utils import io

log = logging.getLogger("moeclip_jax.verbs")
FORMAT = "moeclip_jax.export/1"
GENERIC_CLASS = "object"

EXAMPLES = """
  moeclip-jax export --checkpoint runs/tiny/detector --out exported/
  moeclip-jax export --checkpoint ckpt --class-names bottle cable \\
      --platforms cpu cuda --out exported/
  moeclip-jax export --checkpoint ckpt/inctrl_k2 --class-names candle \\
      --out exported_inctrl/
"""


def build_parser():
  from moeclip_jax.verbs import common  # pylint: disable=g-import-not-at-top
  p = common.parser("moeclip-jax export", __doc__.split("\n\n")[0],
                    EXAMPLES)
  p.add_argument("--checkpoint", required=True, help="detector folder")
  p.add_argument("--out", required=True, help="output folder")
  p.add_argument("--class-names", nargs="*",
                 help="classes whose text matrices to include (default: "
                      "calibrated classes and 'object')")
  p.add_argument("--domain", default=None,
                 help="industrial | medical (MoECLIP)")
  p.add_argument("--dataset-prompts", default=None, help="(MoECLIP)")
  p.add_argument("--platforms", nargs="*", default=None,
                 help="lowering platforms (default: this machine's)")
  p.add_argument("--shots", type=int, default=None,
                 help="InCTRL: K prompt images the export takes (default: "
                      "the checkpoint's `shots`, else 2)")
  return p


def _predict_fn(detector, treedef, domain):
  """The live detector's forward with the parameters as a flat list."""

  def fn(flat_params, pixels, text):
    params = jax.tree.unflatten(treedef, flat_params)
    return detector._forward_impl(params, pixels, text, domain)  # pylint: disable=protected-access
  return fn


def export_detector(detector, out, class_names: Sequence[str] = (),
                    domain: str | None = None, dataset: str | None = None,
                    platforms: Sequence[str] | None = None) -> pathlib.Path:
  """Serialises the jitted predict function and its arguments to `out`."""
  from moeclip_jax.methods.moeclip import maps  # pylint: disable=g-import-not-at-top
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  domain = maps.canonical_domain(domain or detector.default_domain)
  flat, treedef = jax.tree.flatten(detector.params)
  names = list(dict.fromkeys([GENERIC_CLASS, *class_names]))
  texts = {n: np.asarray(detector.text_features(n, dataset)) for n in names}
  size = detector.image_size
  (batch,) = jax.export.symbolic_shape("b")
  args = ([jax.ShapeDtypeStruct(x.shape, x.dtype) for x in flat],
          jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32),
          jax.ShapeDtypeStruct(texts[GENERIC_CLASS].shape, jnp.float32))
  exported = jax.export.export(
      jax.jit(_predict_fn(detector, treedef, domain)),
      platforms=platforms or (jax.default_backend(),))(*args)
  (out / "predict.stablehlo").write_bytes(exported.serialize())
  io.write_npz(out / "params.npz",
               **{f"p{i}": np.asarray(x) for i, x in enumerate(flat)})
  io.write_npz(out / "text.npz", **texts)
  io.write_json(out / "export.json", {
      "format": FORMAT, "image_size": size, "domain": domain,
      "classes": names, "num_params": len(flat),
      "platforms": list(exported.platforms), "jax_version": jax.__version__,
      "mean": image_utils.CLIP_MEAN.tolist(),
      "std": image_utils.CLIP_STD.tolist(),
      "checkpoint": str(detector.checkpoint_dir)})
  return out


class ExportedDetector:
  """Runs an exported detector: `.predict(images, class_name)`."""

  def __init__(self, folder):
    folder = pathlib.Path(folder)
    meta_path = folder / "export.json"
    if not meta_path.is_file():
      raise FileNotFoundError(f"{meta_path}: missing (not an export folder?)")
    self.meta = json.loads(meta_path.read_text())
    if self.meta.get("format") != FORMAT:
      raise ValueError(f"{meta_path}: format {self.meta.get('format')!r}")
    self.image_size = int(self.meta["image_size"])
    self.exported = jax.export.deserialize(
        (folder / "predict.stablehlo").read_bytes())
    with np.load(folder / "params.npz") as z:
      self.params = [jnp.asarray(z[f"p{i}"])
                     for i in range(self.meta["num_params"])]
    with np.load(folder / "text.npz") as z:
      self.texts = {k: jnp.asarray(z[k]) for k in z.files}

  def _pixels(self, images) -> np.ndarray:
    x = np.asarray(images)
    x = x[None] if x.ndim == 3 else x
    if x.dtype == np.uint8:
      from PIL import Image  # pylint: disable=g-import-not-at-top
      s = self.image_size
      x = np.stack([np.asarray(Image.fromarray(im).resize((s, s),
                                                          Image.BICUBIC))
                    for im in x])
      return image_utils.normalize(x)
    return x.astype(np.float32)

  def predict(self, images, class_name: str = GENERIC_CLASS) -> dict:
    """Like the live detector's predict (maps at the model size)."""
    if class_name not in self.texts:
      raise KeyError(f"class {class_name!r} was not exported; exported: "
                     f"{sorted(self.texts)} (re-export with --class-names)")
    amap, score = self.exported.call(self.params, self._pixels(images),
                                     self.texts[class_name])
    return {"anomaly_map": np.asarray(amap), "image_score": np.asarray(score)}


def export_method(adapter, out, class_names: Sequence[str] = (),
                  platforms: Sequence[str] | None = None) -> pathlib.Path:
  """Exports an InCTRL / AnomalyMoE adapter (see export_methods.py)."""
  from moeclip_jax.verbs import calibration  # pylint: disable=g-import-not-at-top
  from moeclip_jax.verbs import export_methods  # pylint: disable=g-import-not-at-top
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  if adapter.name == "inctrl":
    meta = export_methods.export_inctrl(adapter, out, class_names, platforms,
                                        GENERIC_CLASS)
  else:
    meta = export_methods.export_anomalymoe(
        adapter, out, class_names, calibration.load(adapter.checkpoint_dir),
        platforms)
  io.write_json(out / "export.json", {"format": FORMAT, **meta})
  return out


def load_exported(folder):
  """`ExportedDetector` (MoECLIP) or `export_methods.ExportedMethod`."""
  meta_path = pathlib.Path(folder) / "export.json"
  if meta_path.is_file():
    meta = json.loads(meta_path.read_text())
    if meta.get("method", "moeclip") != "moeclip":
      return _load_method(folder, meta)
  return ExportedDetector(folder)


def _load_method(folder, meta):
  from moeclip_jax.verbs import export_methods  # pylint: disable=g-import-not-at-top
  folder = pathlib.Path(folder)
  if meta.get("format") != FORMAT:
    raise ValueError(f"{folder / 'export.json'}: format "
                     f"{meta.get('format')!r}")
  exported = jax.export.deserialize(
      (folder / "predict.stablehlo").read_bytes())
  with np.load(folder / "params.npz") as z:
    params = [jnp.asarray(z[f"p{i}"]) for i in range(meta["num_params"])]
  return export_methods.ExportedMethod(folder, meta, exported, params)


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  from moeclip_jax.verbs import adapters  # pylint: disable=g-import-not-at-top
  from moeclip_jax.verbs import calibration  # pylint: disable=g-import-not-at-top
  from moeclip_jax.verbs import common  # pylint: disable=g-import-not-at-top
  try:
    common.add_log_file(args.out, "export")
    options = adapters.Options(domain=args.domain,
                               dataset_prompts=args.dataset_prompts,
                               shots=args.shots)
    adapter = common.load_adapter(args.checkpoint, options)
    calib = calibration.load(args.checkpoint) or {"classes": {}}
    names = common.parse_class_names(args.class_names) or [
        c for c in calib["classes"] if c != calibration.ANY_CLASS]
    if adapter.name == "moeclip":
      out = export_detector(adapter.detector, args.out, names, args.domain,
                            args.dataset_prompts, args.platforms)
    else:
      out = export_method(adapter, args.out, names, args.platforms)
  except (ValueError, FileNotFoundError, KeyError) as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  print(f"wrote {out} (predict.stablehlo, params.npz, export.json, ...)")
  return 0
