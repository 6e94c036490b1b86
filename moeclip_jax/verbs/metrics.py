"""`moeclip-jax metrics`: AUROC, AP, F1-max and AUPRO of any model's saved
predictions (PRED.npz).

  moeclip-jax metrics --pred PRED.npz --out DIR \
      [--protocol NAME[:ap=trapezoid,...]] [--mode auto|exact|streaming]

PRED.npz keys: image_scores [N], image_labels [N], optional anomaly_maps
[N, H, W], masks [N, H, W], class_names [N] (str). Prints a per-class table
and writes DIR/metrics.json, metrics.csv, protocol.json, details.json.
Exit status 2 on bad input (the message names the file and the problem).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
from typing import Sequence

import numpy as np

from moeclip_jax.eval import evaluate as evaluate_lib
from moeclip_jax.eval import protocols, reports, streaming
from moeclip_jax.utils import console as console_lib

PRED_KEYS = ("image_scores", "image_labels", "anomaly_maps", "masks",
             "class_names")
REQUIRED_KEYS = ("image_scores", "image_labels")


PRED_HELP = """\
PRED.npz (numpy.savez, no pickles; the names are exact):
  image_scores  float [N]        image anomaly scores (higher = anomalous)
  image_labels  int/bool [N]     1 = anomalous, 0 = normal
  anomaly_maps  float [N, H, W]  optional: pixel scores
  masks         int/bool [N, H, W]  optional (needs anomaly_maps): 1 = defect
  class_names   str [N]          optional: per-class table and class means
"""

EXAMPLES = """
  python - <<'EOF'
  import numpy as np
  np.savez("pred.npz", image_scores=scores, image_labels=labels,
           anomaly_maps=maps, masks=masks, class_names=classes)
  EOF
  moeclip-jax metrics --pred pred.npz --out results/
  moeclip-jax metrics --pred pred.npz --out results/ \
      --protocol moeclip-released --domain industrial
  moeclip-jax metrics --pred pred.npz --out results/ --protocol raw:ap=trapezoid
"""


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="moeclip-jax metrics",
      description="Exact / streaming AUROC, AP, F1-max and AUPRO of saved "
                  "predictions (any model).\n\n" + PRED_HELP,
      epilog="examples:\n" + EXAMPLES.strip("\n"),
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--pred", required=True, help="PRED.npz")
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--protocol", default="raw",
                      help=f"one of {sorted(protocols.PROTOCOLS)}, with "
                           "optional ':ap=trapezoid,aupro=...,fpr_limit=...'")
  parser.add_argument("--mode", default="auto",
                      choices=evaluate_lib.MODES)
  parser.add_argument("--ap", choices=("step", "trapezoid"), default=None,
                      help="override the protocol's AP definition")
  parser.add_argument("--domain", default=None,
                      help="industrial | medical, or cls=domain,cls=domain")
  parser.add_argument("--bins", type=int, default=streaming.DEFAULT_BINS,
                      help="streaming histogram bins")
  parser.add_argument("--tolerance", type=float, default=1e-4,
                      help="largest accepted streaming error bound")
  parser.add_argument("--seed", type=int, default=None,
                      help="recorded in protocol.json")
  parser.add_argument("--checkpoint-hash", default=None,
                      help="recorded in protocol.json")
  parser.add_argument("--quiet", action="store_true", help="no table")
  console_lib.add_debug_flag(parser)
  return parser


def load_predictions(path: str) -> dict[str, np.ndarray]:
  """Reads PRED.npz (no pickles) and checks its keys."""
  if not os.path.isfile(path):
    raise ValueError(f"{path}: no such file")
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {k: data[k] for k in data.files}
  except (OSError, ValueError) as err:
    raise ValueError(f"{path}: not a readable .npz without pickles ({err})")
  problems = {  # message -> offending keys
      f"missing keys {{}} (has {sorted(arrays)})":
          [k for k in REQUIRED_KEYS if k not in arrays],
      f"unknown keys {{}}; expected {PRED_KEYS}":
          [k for k in arrays if k not in PRED_KEYS]}
  for message, keys in problems.items():
    if keys:
      raise ValueError(f"{path}: " + message.format(keys))
  return arrays


def _parse_domain(text: str | None):
  if text is None or "=" not in text:
    return text
  return dict(kv.split("=", 1) for kv in text.split(",") if kv)


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def main(argv: Sequence[str] | None = None) -> int:
  """CLI entry point; returns the exit status."""
  args = build_parser().parse_args(argv)
  try:
    protocol = protocols.get_protocol(args.protocol, ap=args.ap)
    domains = _parse_domain(args.domain)
    pred = load_predictions(args.pred)
  except (ValueError, KeyError) as err:
    return console_lib.fail(err)  # the message names the file already
  try:
    report = evaluate_lib.evaluate(
        pred["image_scores"], pred["image_labels"], pred.get("class_names"),
        pred.get("anomaly_maps"), pred.get("masks"),
        protocol=protocol, mode=args.mode, domains=domains,
        num_bins=args.bins, tolerance=args.tolerance,
        metadata={"predictions": os.path.abspath(args.pred),
                  "predictions_sha256": _sha256(args.pred),
                  "seed": args.seed, "checkpoint_hash": args.checkpoint_hash})
  except (ValueError, streaming.StreamingToleranceError) as err:
    return console_lib.fail(ValueError(f"{args.pred}: {err}"))
  paths = reports.write_reports(report, args.out)
  if not args.quiet:
    from rich.console import Console  # pylint: disable=g-import-not-at-top
    console = Console()
    console.print(reports.rich_table(report))
    console.print(f"wrote {', '.join(paths.values())}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
