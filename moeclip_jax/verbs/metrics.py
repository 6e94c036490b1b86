"""Evaluate any model's saved predictions.

  python -m moeclip_jax.metrics --pred PRED.npz --out DIR \
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

PRED_KEYS = ("image_scores", "image_labels", "anomaly_maps", "masks",
             "class_names")
REQUIRED_KEYS = ("image_scores", "image_labels")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m moeclip_jax.metrics",
      description="Exact / streaming AUROC, AP, F1-max and AUPRO of saved "
                  "predictions.")
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
  missing = [k for k in REQUIRED_KEYS if k not in arrays]
  if missing:
    raise ValueError(f"{path}: missing keys {missing} (has {sorted(arrays)})")
  unknown = [k for k in arrays if k not in PRED_KEYS]
  if unknown:
    raise ValueError(f"{path}: unknown keys {unknown}; expected {PRED_KEYS}")
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
    pred = load_predictions(args.pred)
    report = evaluate_lib.evaluate(
        pred["image_scores"], pred["image_labels"], pred.get("class_names"),
        pred.get("anomaly_maps"), pred.get("masks"),
        protocol=protocols.get_protocol(args.protocol, ap=args.ap),
        mode=args.mode, domains=_parse_domain(args.domain),
        num_bins=args.bins, tolerance=args.tolerance,
        metadata={"predictions": os.path.abspath(args.pred),
                  "predictions_sha256": _sha256(args.pred),
                  "seed": args.seed, "checkpoint_hash": args.checkpoint_hash})
  except (ValueError, streaming.StreamingToleranceError) as err:
    print(f"error: {args.pred}: {err}", file=sys.stderr)
    return 2
  paths = reports.write_reports(report, args.out)
  if not args.quiet:
    from rich.console import Console  # pylint: disable=g-import-not-at-top
    console = Console()
    console.print(reports.rich_table(report))
    console.print(f"wrote {', '.join(paths.values())}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
