"""Reading a MoECLIP checkpoint folder (written by `convert moeclip-official`
or by the trainer's export): params/ (orbax), config.json, tokenizer/."""

from __future__ import annotations

import json
import pathlib

from moeclip_jax.checkpoint import params as ckpt_params
from moeclip_jax.convert import common
from moeclip_jax.methods.moeclip import config as config_lib
from moeclip_jax.methods.moeclip import model as model_lib
from moeclip_jax.models import clip_config, tokenize


def read_configs(checkpoint_dir):
  """(CLIPConfig, MoECLIPConfig) from `checkpoint_dir/config.json`.

  Raises:
    FileNotFoundError: no config.json.
    ConversionError: the checkpoint belongs to another method.
  """
  path = pathlib.Path(checkpoint_dir) / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path}: missing (not a MoECLIP checkpoint?)")
  raw = json.loads(path.read_text())
  if raw.get("method") != "moeclip" or "moeclip" not in raw:
    raise common.ConversionError(
        f"{path}: method {raw.get('method')!r}, expected 'moeclip' "
        "(checkpoint from another method?)")
  ccfg = clip_config.CLIPConfig.from_dict(raw["clip"])
  return ccfg, config_lib.MoECLIPConfig.from_dict(raw["moeclip"])


def load(checkpoint_dir, *, dtype: str | None = None, **overrides):
  """Loads a MoECLIP checkpoint.

  Args:
    checkpoint_dir: the checkpoint folder.
    dtype: optional compute dtype of the towers ("bfloat16" opt-in).
    **overrides: MoECLIPConfig fields to replace (e.g. faithful="paper",
      capacity_factor=1.25); shapes must not change.

  Returns:
    (module: MoECLIP, params, clip config, MoECLIP config, tokenizer or None)
  """

  path = pathlib.Path(checkpoint_dir)
  ccfg, cfg = read_configs(path)
  if dtype is not None:
    ccfg = ccfg.replace(dtype=dtype)
  if overrides:
    cfg = cfg.replace(**overrides)
  params = ckpt_params.read_params_checkpoint(
      path, abstract=model_lib.abstract_params(ccfg, cfg))
  tok = None
  if (path / "tokenizer").is_dir():
    tok = tokenize.load_tokenizer(path / "tokenizer")
  return model_lib.MoECLIP(ccfg, cfg), params, ccfg, cfg, tok
