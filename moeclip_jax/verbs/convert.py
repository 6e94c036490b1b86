"""`moeclip-jax convert NAME ...`: foreign checkpoints -> ours.

The subcommands come from `convert.registry.CONVERTERS` (each converter
module registers its own flags next to its mapping tables).
"""

from __future__ import annotations

import argparse
import sys

from moeclip_jax.convert import common, registry
from moeclip_jax.utils import console


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="moeclip-jax convert",
      description="Convert CLIP / method checkpoints to moeclip_jax format.")
  sub = parser.add_subparsers(dest="verb", required=True)
  for module in registry.CONVERTERS:
    module.register(sub)
  return parser


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  try:
    out = args.func(args)
  except common.ConversionError as e:  # its lines list every problem
    print(f"error: {e}", file=sys.stderr)
    return 2
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    return console.fail(e)
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
