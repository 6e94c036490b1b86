"""`python -m moeclip_jax.predict`, same as `moeclip-jax predict`."""

import sys


def main(argv=None) -> int:
  from moeclip_jax.verbs import predict  # pylint: disable=g-import-not-at-top
  return predict.main(argv)


if __name__ == "__main__":
  sys.exit(main())
