"""`python -m moeclip_jax.demo`, same as `moeclip-jax demo`."""

import sys

from moeclip_jax import cli

if __name__ == "__main__":
  sys.exit(cli.main(["demo", *sys.argv[1:]]))
