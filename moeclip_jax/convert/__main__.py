"""`python -m moeclip_jax.convert VERB ...`: foreign checkpoints -> ours."""

from __future__ import annotations

import argparse
import sys

from moeclip_jax.convert import (
  anomalymoe_official,
  clip_cli,
  common,
  hf_dinov2,
  inctrl_official,
  moeclip_official,
)

# Explicit registry: every converter module exposes `register(subparsers)`.
CONVERTERS = (clip_cli, moeclip_official, inctrl_official, hf_dinov2,
              anomalymoe_official)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m moeclip_jax.convert",
      description="Convert CLIP / method checkpoints to moeclip_jax format.")
  sub = parser.add_subparsers(dest="verb", required=True)
  for module in CONVERTERS:
    module.register(sub)
  return parser


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  try:
    out = args.func(args)
  except (common.ConversionError, FileNotFoundError, FileExistsError,
          ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
