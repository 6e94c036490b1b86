"""Reading CLIP checkpoints (Hugging Face, OpenAI, OpenCLIP) into our params.

Entry points used by the CLI (`python -m moeclip_jax.convert hf-clip|openclip`)
and by the method converters (MoECLIP, InCTRL official weights):

  load_hf_state_dict(dir) / load_openclip_state_dict(file) -> {key: ndarray}
  config_from_hf(dir, ...) / config_from_openclip(state, name, ...) -> CLIPConfig
  openclip_to_params(state, config, prefix="") -> params
  hf_to_params(state, config) -> params
"""

from __future__ import annotations

import json
import pathlib
import struct
from typing import Mapping

import numpy as np

from moeclip_jax.convert import clip_keys
from moeclip_jax.convert import common as C
from moeclip_jax.models import clip, clip_config, posemb


# ---- reading files -------------------------------------------------------------
def _check_safetensors_header(path: pathlib.Path) -> None:
  """Fails with the file's name if its header or data are truncated."""
  size = path.stat().st_size
  with open(path, "rb") as f:
    head = f.read(8)
    if len(head) < 8:
      raise C.ConversionError(f"{path}: truncated safetensors file (no header)")
    (n,) = struct.unpack("<Q", head)
    if 8 + n > size:
      raise C.ConversionError(f"{path}: truncated safetensors header")
    try:
      header = json.loads(f.read(n))
    except ValueError as e:
      raise C.ConversionError(f"{path}: corrupt safetensors header") from e
  end = max(
      (v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
      default=0,
  )
  if 8 + n + end > size:
    raise C.ConversionError(
        f"{path}: truncated safetensors file ({size} bytes, header needs "
        f"{8 + n + end})"
    )


def load_safetensors(path) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

  path = pathlib.Path(path)
  _check_safetensors_header(path)
  return dict(load_file(str(path)))


def load_hf_state_dict(src) -> dict[str, np.ndarray]:
  """model.safetensors or a sharded `model.safetensors.index.json` folder."""
  src = pathlib.Path(src)
  single, index = src / "model.safetensors", src / "model.safetensors.index.json"
  if single.is_file():
    return load_safetensors(single)
  if index.is_file():
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    state = {}
    for shard in shards:
      if not (src / shard).is_file():
        raise FileNotFoundError(f"{src / shard}: shard named by {index} is missing")
      state.update(load_safetensors(src / shard))
    return state
  raise FileNotFoundError(
      f"{src}: no model.safetensors or model.safetensors.index.json "
      "(PyTorch .bin folders: convert them to safetensors first)"
  )


def _torch_to_numpy(state) -> dict[str, np.ndarray]:
  out = {}
  for key, value in state.items():
    if hasattr(value, "detach"):
      out[key] = value.detach().cpu().float().numpy() if value.is_floating_point() \
          else value.detach().cpu().numpy()
    elif isinstance(value, np.ndarray):
      out[key] = value
  return out


def _unwrap(state: Mapping, path) -> Mapping:
  for wrapper in ("state_dict", "model_state", "model"):
    if wrapper in state and isinstance(state[wrapper], Mapping):
      state = state[wrapper]
  if not state:
    raise C.ConversionError(f"{path}: no tensors found")
  if all(k.startswith("module.") for k in state):
    state = {k[len("module."):]: v for k, v in state.items()}
  return state


def load_torch_file(path) -> dict[str, np.ndarray]:
  """A torch `.pt/.pth/.bin/.pyth` state dict (TorchScript archives too)."""
  import torch  # pylint: disable=g-import-not-at-top

  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such file")
  try:  # OpenAI release files are TorchScript archives.
    state = torch.jit.load(str(path), map_location="cpu").state_dict()
  except RuntimeError:
    try:
      state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt files
      raise C.ConversionError(f"{path}: not a readable torch checkpoint: {e}") from e
  if not isinstance(state, Mapping):
    raise C.ConversionError(f"{path}: expected a state dict, got {type(state)}")
  return _torch_to_numpy(_unwrap(state, path))


def load_openclip_state_dict(path) -> dict[str, np.ndarray]:
  path = pathlib.Path(path)
  if path.suffix == ".safetensors":
    return dict(_unwrap(load_safetensors(path), path))
  return load_torch_file(path)


# ---- configs -----------------------------------------------------------------
def _native_image_size(pos_rows: int, patch: int) -> int:
  return posemb.grid_size(pos_rows) * patch


def config_from_openclip(
    state, model_name, *, image_size=None, activation=None, prefix="",
    source_name="checkpoint",
) -> clip_config.CLIPConfig:
  """Named variant, checked against the state dict's shapes."""
  config = clip_config.get_config(model_name)
  pos = state.get(f"{prefix}visual.positional_embedding")
  if pos is None:
    raise C.ConversionError(
        f"{source_name}: no {prefix}visual.positional_embedding: not an "
        "OpenAI/OpenCLIP CLIP state dict"
    )
  if pos.shape[1] != config.vision.width:
    raise C.ConversionError(
        f"{source_name}: vision width {pos.shape[1]} does not match variant "
        f"{model_name} (width {config.vision.width})"
    )
  native = _native_image_size(pos.shape[0], config.vision.patch_size)
  config = config.replace(image_size=image_size or native)
  if activation:
    config = config.replace(activation=activation)
  return config


def config_from_hf(src, *, image_size=None, activation=None) -> clip_config.CLIPConfig:
  """CLIPConfig from a Hugging Face `config.json` (activation from hidden_act)."""
  path = pathlib.Path(src) / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path}: missing (not a Hugging Face CLIP folder?)")
  raw = json.loads(path.read_text())
  try:
    vc, tc = raw["vision_config"], raw["text_config"]
    proj = raw.get("projection_dim", 512)
    act = activation or clip_config.HF_ACTIVATIONS[vc.get("hidden_act", "quick_gelu")]
    eps = vc.get("layer_norm_eps", 1e-5)
    vision = clip_config.VisionConfig(
        width=vc["hidden_size"], layers=vc["num_hidden_layers"],
        heads=vc["num_attention_heads"], patch_size=vc["patch_size"],
        image_size=vc["image_size"], mlp_dim=vc["intermediate_size"],
        output_dim=proj)
    text = clip_config.TextConfig(
        width=tc["hidden_size"], layers=tc["num_hidden_layers"],
        heads=tc["num_attention_heads"], mlp_dim=tc["intermediate_size"],
        output_dim=proj, context_length=tc.get("max_position_embeddings", 77),
        vocab_size=tc.get("vocab_size", 49408))
  except KeyError as e:
    raise C.ConversionError(f"{path}: missing field {e}") from e
  config = clip_config.CLIPConfig(
      vision=vision, text=text, activation=act, ln_eps=eps,
      name=raw.get("_name_or_path", "hf-clip"))
  return config.replace(image_size=image_size) if image_size else config


# ---- mapping -----------------------------------------------------------------
def target_shapes(config: clip_config.CLIPConfig) -> dict[str, tuple]:
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  abstract = nn.unbox(clip.abstract_params(config))
  return {k: tuple(v.shape) for k, v in C.flatten(abstract).items()}


def _resampled(state, key, config) -> dict:
  """Copy of `state` whose positional table matches config's grid."""
  if key not in state:
    return state
  state = dict(state)
  state[key] = posemb.resample_pos_embed(state[key], config.vision.grid)
  return state


def openclip_to_params(state, config, *, prefix="", source_name="checkpoint",
                       extra_ignore=None):
  """OpenAI/OpenCLIP state dict -> params; other keys fail unless ignored."""
  state = _resampled(state, f"{prefix}visual.positional_embedding", config)
  table = clip_keys.openclip_table(config, prefix)

  def ignore(k):
    bare = k[len(prefix):] if k.startswith(prefix) else k
    return bool(clip_keys.IGNORED_OPENCLIP.match(bare)) or bool(
        extra_ignore and extra_ignore(k))

  return C.apply_mapping(table, state, target_shapes(config), ignore=ignore,
                         source_name=source_name)


def hf_to_params(state, config, *, source_name="checkpoint"):
  state = _resampled(state, "vision_model.embeddings.position_embedding.weight",
                     config)
  return C.apply_mapping(
      clip_keys.hf_table(config), state, target_shapes(config),
      ignore=lambda k: bool(clip_keys.IGNORED_HF.match(k)),
      source_name=source_name)
