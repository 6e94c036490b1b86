"""`python -m moeclip_jax.convert`, same as `moeclip-jax convert`."""

import sys

from moeclip_jax import cli

if __name__ == "__main__":
  sys.exit(cli.main(["convert", *sys.argv[1:]]))
