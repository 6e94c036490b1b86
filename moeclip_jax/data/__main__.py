"""`python -m moeclip_jax.data VERB ...`, same as `moeclip-jax data VERB`."""

import sys

from moeclip_jax import cli

sys.exit(cli.main(["data", *sys.argv[1:]]))
