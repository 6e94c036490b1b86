"""`moeclip-jax export`: a detector as serialized StableHLO or ONNX.

--format stablehlo (default)
  predict.stablehlo  jax.export serialization of the detector's
                     `export_fn()`: f(params_flat, pixels f32[b, S, S, 3],
                     method inputs) -> (anomaly_map f32[b, S, S],
                     image_score f32[b]) with a symbolic batch `b`;
                     parameters are ARGUMENTS (a ViT-L baked in as
                     constants nears the 2 GiB limit)
  params.npz         the flat parameter leaves p0..pN, in argument order
--format onnx
  predict.onnx       the same function as an ONNX graph (opset 18):
                     pixels f32[batch, S, S, 3] (dynamic batch), method
                     inputs -> anomaly_map, image_score; parameters baked
                     in (predict.onnx.data past 1 GiB)
both
  text.npz | stats.npz  per-class inputs (MoECLIP / InCTRL text matrices,
                     AnomalyMoE map statistics)
  export.json        method, image size, preprocessing, classes, inputs,
                     platforms (StableHLO) / opset and class tables (ONNX)

`moeclip_jax.inference.export.load_exported(OUT)` runs either (StableHLO:
jax + numpy + PIL; ONNX: `onnx_runner.load_onnx`, onnxruntime + numpy +
PIL, no jax); InCTRL exports take the K prompt images at run time
(`set_prompts`). docs/export.md: TensorRT and OpenVINO.
"""

from __future__ import annotations

import logging

from moeclip_jax.inference import calibration, exported
from moeclip_jax.inference import export as export_lib
from moeclip_jax.verbs import common

log = logging.getLogger("moeclip_jax.verbs")

EXAMPLES = """
  moeclip-jax export --checkpoint runs/tiny/detector --out exported/
  moeclip-jax export --checkpoint ckpt --format onnx --out exported_onnx/
  moeclip-jax export --checkpoint ckpt --class-names bottle cable \\
      --platforms cpu cuda --out exported/
  moeclip-jax export --checkpoint ckpt/inctrl_k2 --class-names candle \\
      --format onnx --force --out exported_inctrl/
"""


def _write_onnx(spec, out, platforms):
  del platforms  # checked in `run`: StableHLO only
  from moeclip_jax.inference import export_onnx  # pylint: disable=g-import-not-at-top
  return export_onnx.write_onnx(spec, out)


# --format -> (writer(spec, out, platforms), what it writes)
WRITERS = {
    "stablehlo": (export_lib.write_stablehlo,
                  "predict.stablehlo, params.npz, export.json, ..."),
    "onnx": (_write_onnx, "predict.onnx, export.json, ..."),
}


def build_parser():
  p = common.parser("moeclip-jax export", __doc__.split("\n\n")[0],
                    EXAMPLES)
  p.add_argument("--checkpoint", required=True, help="detector folder")
  p.add_argument("--out", required=True, help="output folder")
  p.add_argument("--format", choices=sorted(WRITERS), default="stablehlo",
                 help="stablehlo (jax.export, default) or onnx "
                      "(onnxruntime, TensorRT, OpenVINO)")
  p.add_argument("--force", action="store_true",
                 help="replace an export already in --out")
  p.add_argument("--class-names", nargs="*",
                 help="classes whose inputs to include (default: the "
                      "calibrated classes, and 'object' where the method "
                      "has a generic class)")
  p.add_argument("--platforms", nargs="*", default=None,
                 help="lowering platforms of --format stablehlo (default: "
                      "this machine's)")
  common.add_method_options(p, "export")
  return p


def export_checkpoint(detector, out, class_names=None, platforms=None,
                      fmt: str = "stablehlo"):
  """Traces `detector.export_fn(...)` and writes the export folder."""
  calib = calibration.load(detector.checkpoint_dir) or {"classes": {}}
  names = class_names or [c for c in calib["classes"]
                          if c != calibration.ANY_CLASS]
  spec = detector.export_fn(names, calib)
  return WRITERS[fmt][0](spec, out, platforms)


def run(args):
  if args.platforms and args.format != "stablehlo":
    raise ValueError(f"--platforms is for --format stablehlo, not "
                     f"{args.format} (ONNX runtimes pick the device)")
  exported.prepare_out(args.out, args.force)
  common.add_log_file(args.out, "export")
  detector = common.load_detector(args.checkpoint, common.method_options(args))
  return export_checkpoint(detector, args.out,
                           common.parse_class_names(args.class_names),
                           args.platforms, args.format)


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  out, code = common.guarded(run, args)
  if code:
    return code
  print(f"wrote {out} ({WRITERS[args.format][1]})")
  return 0
