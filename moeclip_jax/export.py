"""`python -m moeclip_jax.export`, same as `moeclip-jax export`."""

import sys


def main(argv=None) -> int:
  from moeclip_jax.verbs import export  # pylint: disable=g-import-not-at-top
  return export.main(argv)


if __name__ == "__main__":
  sys.exit(main())
