r"""Deprecated: InCTRL trains with the generic loop.

    python -m moeclip_jax.train --config configs/inctrl_vitb16p_240.py \
        --workdir DIR [--config.k=v ...]

`python -m moeclip_jax.methods.inctrl.train_main` takes the same arguments
and forwards them there (with a warning); it will be removed.
"""

from __future__ import annotations

import sys
import warnings


def main(argv=None) -> int:
  warnings.warn("moeclip_jax.methods.inctrl.train_main is deprecated; use "
                "python -m moeclip_jax.train", DeprecationWarning,
                stacklevel=2)
  from moeclip_jax.train import __main__ as train_cli  # pylint: disable=g-import-not-at-top
  return train_cli.main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
  main()
