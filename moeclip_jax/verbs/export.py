"""`moeclip-jax export`: a detector as serialized StableHLO (jax.export).

OUT/
  predict.stablehlo  jax.export serialization of the detector's
                     `export_fn()`: f(params_flat, pixels f32[b, S, S, 3],
                     method inputs) -> (anomaly_map f32[b, S, S],
                     image_score f32[b]) with a symbolic batch `b`;
                     parameters are ARGUMENTS (a ViT-L baked in as
                     constants nears the 2 GiB limit)
  params.npz         the flat parameter leaves p0..pN, in argument order
  text.npz | stats.npz  per-class inputs (MoECLIP / InCTRL text matrices,
                     AnomalyMoE map statistics)
  export.json        method, image size, preprocessing, classes, inputs,
                     platforms

`moeclip_jax.inference.export.load_exported(OUT)` runs it with jax + numpy
+ PIL only (no model code); InCTRL exports take the K prompt images at run
time (`set_prompts`).
"""

from __future__ import annotations

import logging
import sys

from moeclip_jax.inference import calibration
from moeclip_jax.inference import export as export_lib
from moeclip_jax.verbs import common

log = logging.getLogger("moeclip_jax.verbs")

EXAMPLES = """
  moeclip-jax export --checkpoint runs/tiny/detector --out exported/
  moeclip-jax export --checkpoint ckpt --class-names bottle cable \\
      --platforms cpu cuda --out exported/
  moeclip-jax export --checkpoint ckpt/inctrl_k2 --class-names candle \\
      --out exported_inctrl/
"""


def build_parser():
  p = common.parser("moeclip-jax export", __doc__.split("\n\n")[0],
                    EXAMPLES)
  p.add_argument("--checkpoint", required=True, help="detector folder")
  p.add_argument("--out", required=True, help="output folder")
  p.add_argument("--class-names", nargs="*",
                 help="classes whose inputs to include (default: the "
                      "calibrated classes, and 'object' where the method "
                      "has a generic class)")
  p.add_argument("--platforms", nargs="*", default=None,
                 help="lowering platforms (default: this machine's)")
  common.add_method_options(p, "export")
  return p


def export_checkpoint(detector, out, class_names=None, platforms=None):
  """Lowers `detector.export_fn(...)` and writes the export folder."""
  calib = calibration.load(detector.checkpoint_dir) or {"classes": {}}
  names = class_names or [c for c in calib["classes"]
                          if c != calibration.ANY_CLASS]
  spec = detector.export_fn(names, calib)
  return export_lib.write_stablehlo(spec, out, platforms)


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  try:
    common.add_log_file(args.out, "export")
    detector = common.load_detector(args.checkpoint,
                                    common.method_options(args))
    out = export_checkpoint(detector, args.out,
                            common.parse_class_names(args.class_names),
                            args.platforms)
  except (ValueError, FileNotFoundError, KeyError) as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  print(f"wrote {out} (predict.stablehlo, params.npz, export.json, ...)")
  return 0
