r"""Mesh overlay `pure_dp`: pure data parallel: mesh data 8 (all devices),
parameters replicated.

Meant for 8 devices (data 8); the -1 axis takes whatever is left on
other device counts (see moeclip_jax/sharding/presets.py).

As a config file (base config after the colon, default moeclip_vitl14_336):
  python -m moeclip_jax.train --config configs/mesh/pure_dp.py:moeclip_tiny \
      --workdir runs/tiny_pure_dp --config.data.root=DIR
From Python: `apply(config)` edits a config in place.
"""

from moeclip_jax.sharding import presets

PRESET = "pure_dp"


def apply(config):
  return presets.apply(config, PRESET)


def get_config(arg=None):
  return presets.overlay_config(PRESET, __file__, arg)
