r"""Mesh overlay `tensor_parallel`: tensor parallel: mesh data 2 x tensor 4 on
8 devices; `mlp` and `heads` over tensor (ViT-L 16 heads, text 12 heads divide
by 4).

Meant for 8 devices (data 2 x tensor 4); the -1 axis takes what is left on
other device counts (see moeclip_jax/sharding/presets.py).

As a config file (base config after the colon, default moeclip_vitl14_336):
  python -m moeclip_jax.train \
      --config configs/mesh/tensor_parallel.py:moeclip_tiny \
      --workdir runs/tiny_tensor_parallel --config.data.root=DIR
From Python: `apply(config)` edits a config in place.
"""

from moeclip_jax.sharding import presets

PRESET = "tensor_parallel"


def apply(config):
  return presets.apply(config, PRESET)


def get_config(arg=None):
  return presets.overlay_config(PRESET, __file__, arg)
