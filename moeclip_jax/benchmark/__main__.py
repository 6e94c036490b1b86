"""`python -m moeclip_jax.benchmark`, same as `moeclip-jax benchmark`."""

import sys

from moeclip_jax import cli

if __name__ == "__main__":
  sys.exit(cli.main(["benchmark", *sys.argv[1:]]))
