"""`moeclip-jax VERB ...`: one entry point for every tool.

Each verb is also `python -m moeclip_jax.<verb>`; this module only
dispatches (lazily, so `moeclip-jax --help` stays fast).
"""

from __future__ import annotations

import sys


def _convert(argv):
  from moeclip_jax.convert import __main__ as m  # pylint: disable=g-import-not-at-top
  return m.main(argv)


def _embed(argv):
  from moeclip_jax import embed  # pylint: disable=g-import-not-at-top
  return embed.main(argv)


# verb -> (runner, one-line help). Verbs land here as their modules exist.
VERBS = {
    "convert": (_convert, "convert HF / OpenAI / OpenCLIP / official weights"),
    "embed": (_embed, "image/text embeddings and hidden states of a checkpoint"),
}


def usage() -> str:
  lines = ["usage: moeclip-jax VERB [args...]   (moeclip-jax VERB --help)", "",
           "verbs:"]
  lines += [f"  {verb:10s} {help_}" for verb, (_, help_) in VERBS.items()]
  return "\n".join(lines)


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help"):
    print(usage())
    return 0
  verb, rest = argv[0], argv[1:]
  if verb not in VERBS:
    print(f"error: unknown verb {verb!r}\n\n{usage()}", file=sys.stderr)
    return 2
  return VERBS[verb][0](rest) or 0


if __name__ == "__main__":
  sys.exit(main())
