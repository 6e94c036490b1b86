"""`python -m moeclip_jax.predict`, same as `moeclip-jax predict`."""

import sys

from moeclip_jax import cli

if __name__ == "__main__":
  sys.exit(cli.main(["predict", *sys.argv[1:]]))
