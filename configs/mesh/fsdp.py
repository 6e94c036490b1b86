r"""Mesh overlay `fsdp`: FSDP: mesh fsdp 8, parameters' `embed` axis split over
fsdp, batch over data x fsdp.

Meant for 8 devices (fsdp 8); the -1 axis takes whatever is left on
other device counts (see moeclip_jax/sharding/presets.py).

As a config file (base config after the colon, default moeclip_vitl14_336):
  python -m moeclip_jax.train --config configs/mesh/fsdp.py:moeclip_tiny \
      --workdir runs/tiny_fsdp --config.data.root=DIR
From Python: `apply(config)` edits a config in place.
"""

from moeclip_jax.sharding import presets

PRESET = "fsdp"


def apply(config):
  return presets.apply(config, PRESET)


def get_config(arg=None):
  return presets.overlay_config(PRESET, __file__, arg)
