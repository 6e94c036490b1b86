"""`moeclip-jax VERB ...`: one entry point for every tool.

Each verb is also `python -m moeclip_jax.<verb>` and takes `--help` (with
examples). This module only dispatches, importing the verb lazily so that
`moeclip-jax --help` stays fast.
"""

from __future__ import annotations

import importlib
import sys

from moeclip_jax.utils import console

# verb -> (module exposing main(argv), one-line help).
VERBS = {
    "demo": ("moeclip_jax.verbs.demo",
             "offline end-to-end demo (tiny CLIP, ELPV cells, ~minutes)"),
    "train": ("moeclip_jax.train.__main__",
              "train a method from a config file (--config.key=value)"),
    "eval": ("moeclip_jax.verbs.eval",
             "evaluate a checkpoint on a labelled dataset"),
    "predict": ("moeclip_jax.verbs.predict",
                "anomaly maps, overlays and decisions for images"),
    "calibrate": ("moeclip_jax.verbs.calibrate",
                  "thresholds + per-class statistics for predict"),
    "serve": ("moeclip_jax.verbs.serve",
              "HTTP inference service + inspection web page (batched)"),
    "export": ("moeclip_jax.verbs.export",
               "serialized StableHLO (jax.export) of a detector"),
    "convert": ("moeclip_jax.verbs.convert",
                "convert HF / OpenAI / OpenCLIP / official weights"),
    "data": ("moeclip_jax.verbs.data", "prepare / inspect datasets"),
    "embed": ("moeclip_jax.verbs.embed",
              "image/text embeddings and hidden states of a checkpoint"),
    "metrics": ("moeclip_jax.verbs.metrics",
                "metrics of saved predictions (any model)"),
    "benchmark": ("moeclip_jax.verbs.benchmark",
                  "paper tables of a suite of datasets (resumable, sharded)"),
}


def usage() -> str:
  lines = ["usage: moeclip-jax VERB [args...]   (moeclip-jax VERB --help)", "",
           "verbs:"]
  lines += [f"  {verb:10s} {help_}" for verb, (_, help_) in VERBS.items()]
  lines += ["", "quick start (offline, CPU):  moeclip-jax demo"]
  return "\n".join(lines)


def run_verb(verb: str, argv) -> int:
  module = importlib.import_module(VERBS[verb][0])
  return module.main(list(argv)) or 0


def main(argv=None) -> int:
  argv = console.pop_debug_flag(
      list(sys.argv[1:] if argv is None else argv))
  if not argv or argv[0] in ("-h", "--help"):
    print(usage())
    return 0
  verb, rest = argv[0], argv[1:]
  if verb not in VERBS:
    print(f"error: unknown verb {verb!r}\n\n{usage()}", file=sys.stderr)
    return 2
  return run_verb(verb, rest)


if __name__ == "__main__":
  sys.exit(main())
