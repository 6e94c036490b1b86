"""`python -m moeclip_jax.embed`, same as `moeclip-jax embed`."""

import sys

from moeclip_jax import cli

if __name__ == "__main__":
  sys.exit(cli.main(["embed", *sys.argv[1:]]))
