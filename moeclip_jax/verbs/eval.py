"""`moeclip-jax eval`: a detector checkpoint on a labelled dataset.

Jitted, batched forward (static batch shapes; padding dropped via
`valid`), the chosen protocol of the metrics engine (default
`moeclip-released`: per-class min-max and MoECLIP's fusion), a per-class
table with means, OUT/metrics.json, metrics.csv, protocol.json,
details.json, a sample of overlays in OUT/overlays/, TensorBoard scalars
in OUT/tb/ and a log file OUT/eval.log.
"""

from __future__ import annotations

import json
import logging
import pathlib
import sys
from typing import Any

from moeclip_jax.eval import protocols, reports
from moeclip_jax.inference import evaluation, runner
from moeclip_jax.verbs import common

log = logging.getLogger("moeclip_jax.verbs")

EXAMPLES = """
  moeclip-jax eval --checkpoint runs/visa/detector --dataset mvtec \\
      --root /data/mvtec --out results/mvtec
  moeclip-jax eval --checkpoint ckpt --dataset visa --root /data/VisA \\
      --class-names candle pcb1 --protocol raw --out results/visa
  python -m moeclip_jax.eval --checkpoint ckpt --dataset elpv --out res/
  moeclip-jax eval --checkpoint ckpt/inctrl_k2 --dataset visa \\
      --root /data/VisA --shots 4 --prompt-draws 5 --out results/inctrl
"""


def build_parser():
  p = common.parser("moeclip-jax eval", __doc__.split("\n\n")[0], EXAMPLES)
  p.add_argument("--checkpoint", required=True, help="detector folder")
  p.add_argument("--dataset", required=True,
                 help="dataset layout (mvtec, visa, btad, elpv, folder, ...)")
  p.add_argument("--root", default=None, help="dataset root folder")
  p.add_argument("--split", default="test", help="split to evaluate ('all')")
  p.add_argument("--class-names", nargs="*", help="classes to evaluate")
  p.add_argument("--protocol", default=None,
                 help=f"one of {sorted(protocols.PROTOCOLS)} (+ ':opt=v'); "
                      "; default: the method's (moeclip-released for "
                      "MoECLIP, raw for InCTRL / AnomalyMoE)")
  p.add_argument("--batch-size", type=int, default=8)
  p.add_argument("--map-size", type=int, default=None,
                 help="evaluate maps at this size (must divide the model "
                      "size; bounds memory)")
  p.add_argument("--overlays", type=int, default=4,
                 help="overlays per class (half anomalous, half normal)")
  p.add_argument("--out", required=True, help="output folder")
  common.add_method_options(p, "eval")
  return p


def run(args) -> dict[str, Any]:
  out = pathlib.Path(args.out)
  common.add_log_file(out, "eval")
  detector = common.load_detector(args.checkpoint, common.method_options(
      args))
  spec = runner.DatasetSpec(args.dataset, args.root, args.split,
                            common.parse_class_names(args.class_names))
  report = evaluation.evaluate_detector(
      detector, spec, out, args.protocol, batch_size=args.batch_size,
      map_size=args.map_size, overlays_per_class=args.overlays)
  common.console().print(reports.rich_table(report))
  if "std" in report:
    _print_draws(report)
  log.info("eval means %s", json.dumps(report["mean"]))
  print(f"wrote {out / reports.METRICS_FILE}")
  return report


def _print_draws(report) -> None:
  draws_ = report["prompt_draws"]
  parts = [f"{k} {v:.4f} +- {report['std']['mean'][k]:.4f}"
           for k, v in report["mean"].items() if v is not None]
  common.console().print(f"K={draws_['shots']} over {draws_['num_draws']} "
                         f"prompt draw(s): " + ", ".join(parts))


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  try:
    run(args)
  except (ValueError, FileNotFoundError, KeyError) as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  return 0
