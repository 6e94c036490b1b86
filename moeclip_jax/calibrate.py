"""`python -m moeclip_jax.calibrate`, same as `moeclip-jax calibrate`."""

import sys


def main(argv=None) -> int:
  from moeclip_jax.verbs import calibrate  # pylint: disable=g-import-not-at-top
  return calibrate.main(argv)


if __name__ == "__main__":
  sys.exit(main())
