"""`python -m moeclip_jax.train --config CONFIG.py --workdir DIR [--config.k=v]`.

Examples:
  python -m moeclip_jax.train --config configs/moeclip_vitl14_336.py \
      --workdir runs/visa --config.backbone.checkpoint=ckpt/vitl14_518 \
      --config.data.root=/data/VisA
  python -m moeclip_jax.train --config configs/moeclip_tiny.py \
      --workdir runs/tiny --config.data.root=synthetic_mvtec --config.total_steps=200
  python -m moeclip_jax.train --config configs/inctrl_vitb16p_240.py \
      --workdir runs/inctrl --config.data.root=/data/mvtec \
      --config.backbone.checkpoint=ckpt/openclip_b16p240

Resumes automatically from the latest checkpoint in --workdir.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from moeclip_jax.sharding.multihost import maybe_initialize_distributed
from moeclip_jax.utils import console

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "experiment config file (configs/*.py)", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "output folder (logs, ckpts)")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "jax.distributed.initialize(): auto = when TPU/SLURM/MPI variables exist")

def _main(argv):
  del argv
  if _CONFIG.value is None or _WORKDIR.value is None:
    raise app.UsageError("--config and --workdir are required")
  maybe_initialize_distributed(_DISTRIBUTED.value)
  from moeclip_jax.checkpoint import params as ckpt_params  # pylint: disable=g-import-not-at-top
  from moeclip_jax.train import loop  # pylint: disable=g-import-not-at-top
  try:
    run = loop.train(_CONFIG.value, _WORKDIR.value)
  except (ckpt_params.CheckpointError, FileNotFoundError) as err:
    return console.fail(err)
  last = run.history[-1] if run.history else {}
  print(f"done: step {int(run.state.step)} {last}")


def main(argv=None) -> int:
  argv = console.pop_debug_flag(
      list(sys.argv[1:] if argv is None else argv))
  if any(a in ("-h", "--help") for a in argv):
    print(__doc__)
  app.run(_main, argv=["moeclip_jax.train"] + argv)
  return 0


if __name__ == "__main__":
  main()
