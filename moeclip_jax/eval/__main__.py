"""`python -m moeclip_jax.eval`, same as `moeclip-jax eval`."""

import sys

from moeclip_jax import cli

sys.exit(cli.main(["eval", *sys.argv[1:]]))
