"""`python -m moeclip_jax.eval` (CLI glue; the eval library never imports
models): lazily runs moeclip_jax.verbs.eval_cmd."""
import sys
from moeclip_jax.verbs import eval_cmd  # pylint: disable=g-import-not-at-top
sys.exit(eval_cmd.main())
