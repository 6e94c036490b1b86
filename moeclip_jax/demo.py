"""`python -m moeclip_jax.demo`, same as `moeclip-jax demo`."""

import sys


def main(argv=None) -> int:
  from moeclip_jax.verbs import demo  # pylint: disable=g-import-not-at-top
  return demo.main(argv)


if __name__ == "__main__":
  sys.exit(main())
