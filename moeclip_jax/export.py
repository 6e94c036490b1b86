"""`python -m moeclip_jax.export`, same as `moeclip-jax export`."""

import sys

from moeclip_jax import cli

if __name__ == "__main__":
  sys.exit(cli.main(["export", *sys.argv[1:]]))
