"""`python -m moeclip_jax.metrics`, same as `moeclip-jax metrics`."""

import sys

from moeclip_jax import cli

if __name__ == "__main__":
  sys.exit(cli.main(["metrics", *sys.argv[1:]]))
