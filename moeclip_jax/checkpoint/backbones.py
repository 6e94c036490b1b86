"""Loading converted backbone folders (CLIP, DINOv2) into Flax modules.

  module, params, config, tokenizer = backbones.load_clip("ckpt/vitl14_518")
  module, params, config = backbones.load_dinov2("ckpt/dinov2reg_b14")

The models themselves read no files; this module pairs a folder's
config.json with its params/ tree (see `checkpoint.params`).
"""

from __future__ import annotations

import pathlib

from moeclip_jax.checkpoint import params as ckpt_params
from moeclip_jax.models import clip, clip_config, dinov2, tokenize


def read_clip_config(checkpoint_dir) -> clip_config.CLIPConfig:
  """The CLIPConfig stored in a converted checkpoint's config.json."""
  raw = ckpt_params.read_config(checkpoint_dir)
  if "clip" not in raw and "vision" not in raw:
    raise ValueError(f"{pathlib.Path(checkpoint_dir) / 'config.json'}: "
                     "holds no CLIP config")
  return clip_config.CLIPConfig.from_dict(raw.get("clip", raw))


def load_tokenizer(checkpoint_dir):
  """The folder's tokenizer/ (None when it has none)."""
  folder = pathlib.Path(checkpoint_dir) / "tokenizer"
  return tokenize.load_tokenizer(folder) if folder.is_dir() else None


def load_clip(checkpoint_dir, *, dtype: str | None = None):
  """A converted CLIP checkpoint.

  Args:
    checkpoint_dir: output folder of `moeclip-jax convert hf-clip|openclip`.
    dtype: optional compute dtype override ("bfloat16" opt-in).

  Returns:
    (module: CLIP, params, config: CLIPConfig, tokenizer or None)
  """
  config = read_clip_config(checkpoint_dir)
  if dtype is not None:
    config = config.replace(dtype=dtype)
  params = ckpt_params.read_params_checkpoint(
      checkpoint_dir, abstract=clip.abstract_params(config))
  return clip.CLIP(config), params, config, load_tokenizer(checkpoint_dir)


def is_dinov2(raw_config: dict) -> bool:
  return raw_config.get("model") == "dinov2"


def load_dinov2(checkpoint_dir):
  """A converted DINOv2 folder -> (DinoV2 module, params, DinoV2Config)."""
  cfg = dict(ckpt_params.read_config(checkpoint_dir))
  if cfg.pop("model", "dinov2") != "dinov2":
    raise ValueError(f"{checkpoint_dir}: not a DINOv2 checkpoint")
  config = dinov2.DinoV2Config(**cfg)
  params = ckpt_params.read_params_checkpoint(checkpoint_dir)
  return dinov2.DinoV2(config), params, config
