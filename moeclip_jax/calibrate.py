"""`python -m moeclip_jax.calibrate`, same as `moeclip-jax calibrate`."""

import sys

from moeclip_jax import cli

if __name__ == "__main__":
  sys.exit(cli.main(["calibrate", *sys.argv[1:]]))
