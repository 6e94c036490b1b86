"""Entry point: `python -m moeclip_jax.data {prepare,inspect} ...`."""

import sys

from moeclip_jax.data import cli

if __name__ == "__main__":
  sys.exit(cli.main())
