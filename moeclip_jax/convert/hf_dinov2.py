"""DINOv2-with-registers checkpoints -> `moeclip_jax.models.dinov2` params.

Two source layouts, each an explicit mapping table with coverage checks
(`common.apply_mapping`: every source key used once, every Flax parameter
produced once):

* Hugging Face `Dinov2WithRegistersModel` safetensors folder
  (`config.json` + `model.safetensors`), in either key naming:
  legacy `attention.attention.{query,key,value}` / `attention.output.dense`,
  or transformers >= 5 `attention.{q,k,v,o}_proj`. Converted checkpoints
  default to the `hf` positional interpolation.
* the official DINOv2 `.pth` state dict (`blocks.N.attn.qkv` packed,
  `ls1.gamma`, `pos_embed`, ...), optionally under a prefix such as
  `encoder.` (AnomalyMoE). Defaults to the `official` interpolation.

Flax path grammar: '/'-joined, blocks are `blocks_<i>`; attention projections
are DenseGeneral kernels `(D, H, Dh)` / out `(H, Dh, D)`; the patch conv is a
Dense over flattened (row, col, channel) patches, kernel `(p*p*3, D)`.

CLI: `python -m moeclip_jax.convert hf-dinov2 --src HF_DIR --dst OUT`
(`--src` may also be an official `.pth` file).
"""

from __future__ import annotations

import json
import pathlib
from typing import Mapping

import numpy as np

from moeclip_jax.checkpoint import params as ckpt_params
from moeclip_jax.convert import common
from moeclip_jax.models import dinov2

_HF_PREFIXES = ("dinov2_with_registers.", "dinov2.")


def patch_embed_hook(x: np.ndarray) -> np.ndarray:
  """torch conv (D, C, p, p) -> Dense kernel (p*p*C, D), (row, col, c)."""
  return x.transpose(2, 3, 1, 0).reshape(-1, x.shape[0])


def _block_table_hf(i: int, heads: int, legacy: bool) -> dict:
  src = f"encoder.layer.{i}."
  dst = f"blocks_{i}/"
  if legacy:
    names = {
        "query": "attention.attention.query",
        "key": "attention.attention.key",
        "value": "attention.attention.value",
        "out": "attention.output.dense",
    }
  else:
    names = {
        "query": "attention.q_proj",
        "key": "attention.k_proj",
        "value": "attention.v_proj",
        "out": "attention.o_proj",
    }
  table = {}
  for name in ("query", "key", "value"):
    table[f"{dst}attn/{name}/kernel"] = (
        f"{src}{names[name]}.weight", common.heads_in(heads))
    table[f"{dst}attn/{name}/bias"] = (
        f"{src}{names[name]}.bias", common.heads_bias(heads))
  table[f"{dst}attn/out/kernel"] = (
      f"{src}{names['out']}.weight", common.heads_out(heads))
  table[f"{dst}attn/out/bias"] = (f"{src}{names['out']}.bias", common.identity)
  table[f"{dst}ls1"] = (f"{src}layer_scale1.lambda1", common.identity)
  table[f"{dst}ls2"] = (f"{src}layer_scale2.lambda1", common.identity)
  table.update(_norm_mlp_table(src, dst))
  return table


def _norm_mlp_table(src: str, dst: str) -> dict:
  table = {}
  for norm in ("norm1", "norm2"):
    table[f"{dst}{norm}/scale"] = (f"{src}{norm}.weight", common.identity)
    table[f"{dst}{norm}/bias"] = (f"{src}{norm}.bias", common.identity)
  for fc in ("fc1", "fc2"):
    table[f"{dst}mlp/{fc}/kernel"] = (f"{src}mlp.{fc}.weight", common.linear)
    table[f"{dst}mlp/{fc}/bias"] = (f"{src}mlp.{fc}.bias", common.identity)
  return table


def hf_table(config: dinov2.DinoV2Config, legacy: bool) -> dict:
  """{flax path: (HF key, hook)} for a `Dinov2WithRegistersModel`."""
  table = {
      "cls_token": ("embeddings.cls_token", common.identity),
      "mask_token": ("embeddings.mask_token", common.identity),
      "register_tokens": ("embeddings.register_tokens", common.identity),
      "pos_embed": ("embeddings.position_embeddings", common.identity),
      "patch_embed/kernel": (
          "embeddings.patch_embeddings.projection.weight", patch_embed_hook),
      "patch_embed/bias": (
          "embeddings.patch_embeddings.projection.bias", common.identity),
      "norm/scale": ("layernorm.weight", common.identity),
      "norm/bias": ("layernorm.bias", common.identity),
  }
  for i in range(config.depth):
    table.update(_block_table_hf(i, config.num_heads, legacy))
  return table


def official_table(config: dinov2.DinoV2Config, prefix: str = "") -> dict:
  """{flax path: (official key, hook)} for the DINOv2 `.pth` layout."""
  heads = config.num_heads
  table = {
      "cls_token": (f"{prefix}cls_token", common.identity),
      "mask_token": (f"{prefix}mask_token", common.identity),
      "register_tokens": (f"{prefix}register_tokens", common.identity),
      "pos_embed": (f"{prefix}pos_embed", common.identity),
      "patch_embed/kernel": (
          f"{prefix}patch_embed.proj.weight", patch_embed_hook),
      "patch_embed/bias": (f"{prefix}patch_embed.proj.bias", common.identity),
      "norm/scale": (f"{prefix}norm.weight", common.identity),
      "norm/bias": (f"{prefix}norm.bias", common.identity),
  }
  for i in range(config.depth):
    src, dst = f"{prefix}blocks.{i}.", f"blocks_{i}/"
    for j, name in enumerate(("query", "key", "value")):
      table[f"{dst}attn/{name}/kernel"] = (
          f"{src}attn.qkv.weight",
          common.packed_slice(j, common.heads_in(heads)))
      table[f"{dst}attn/{name}/bias"] = (
          f"{src}attn.qkv.bias",
          common.packed_slice(j, common.heads_bias(heads)))
    table[f"{dst}attn/out/kernel"] = (
        f"{src}attn.proj.weight", common.heads_out(heads))
    table[f"{dst}attn/out/bias"] = (f"{src}attn.proj.bias", common.identity)
    table[f"{dst}ls1"] = (f"{src}ls1.gamma", common.identity)
    table[f"{dst}ls2"] = (f"{src}ls2.gamma", common.identity)
    table.update(_norm_mlp_table(src, dst))
  return table


def apply_table(table, source, config, source_name, ignore=lambda k: False):
  """Applies `table` against the model's shapes (coverage both ways)."""
  return common.apply_mapping(
      table, source, target_shapes(config), source_name=source_name,
      ignore=ignore)


def target_shapes(config: dinov2.DinoV2Config) -> dict:
  """'/'-joined Flax path -> shape, from `jax.eval_shape` (no allocation)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  side = config.pos_grid * config.patch_size
  shapes = jax.eval_shape(
      dinov2.DinoV2(config).init, jax.random.key(0),
      jnp.zeros((1, side, side, 3), jnp.float32))
  flat = common.flatten(nn.unbox(shapes)["params"])
  return {k: tuple(v.shape) for k, v in flat.items()}


# ----------------------------------------------------------------------------
# Hugging Face folders.
# ----------------------------------------------------------------------------


def config_from_hf(hf_config: Mapping, interpolation: str = "hf"):
  """`DinoV2Config` from a transformers `config.json` dict."""
  if hf_config.get("use_swiglu_ffn", False):
    raise common.ConversionError("config.json: SwiGLU FFN is not supported")
  act = hf_config.get("hidden_act", "gelu")
  if act != "gelu":
    raise common.ConversionError(f"config.json: hidden_act {act!r} != 'gelu'")
  patch = int(hf_config.get("patch_size", 14))
  return dinov2.DinoV2Config(
      width=int(hf_config["hidden_size"]),
      depth=int(hf_config["num_hidden_layers"]),
      num_heads=int(hf_config["num_attention_heads"]),
      mlp_ratio=float(hf_config.get("mlp_ratio", 4)),
      patch_size=patch,
      pos_grid=int(hf_config.get("image_size", 518)) // patch,
      num_registers=int(hf_config.get("num_register_tokens", 4)),
      layer_norm_eps=float(hf_config.get("layer_norm_eps", 1e-6)),
      interpolation=interpolation,
  )


def _strip_prefixes(state: Mapping[str, np.ndarray]) -> dict:
  out = {}
  for key, value in state.items():
    for prefix in _HF_PREFIXES:
      if key.startswith(prefix):
        key = key[len(prefix):]
        break
    out[key] = value
  return out


def load_hf_folder(src) -> tuple[dict, dict]:
  """Reads `config.json` and every `*.safetensors` of an HF folder."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

  src = pathlib.Path(src)
  cfg_path = src / "config.json"
  if not cfg_path.is_file():
    raise FileNotFoundError(f"{cfg_path}: no config.json in the HF folder")
  files = sorted(src.glob("*.safetensors"))
  if not files:
    raise FileNotFoundError(f"{src}: no *.safetensors file")
  state = {}
  for f in files:
    state.update(load_file(str(f)))
  return json.loads(cfg_path.read_text()), _strip_prefixes(state)


def params_from_hf(hf_config: Mapping, state: Mapping, interpolation="hf",
                   source_name="HF checkpoint"):
  """Converts an HF state dict; returns (params, DinoV2Config)."""
  config = config_from_hf(hf_config, interpolation)
  legacy = "encoder.layer.0.attention.q_proj.weight" not in state
  params = apply_table(hf_table(config, legacy), state, config, source_name)
  return params, config


def convert_hf_dinov2(src, dst, interpolation: str = "hf",
                      overwrite: bool = False):
  """HF `Dinov2WithRegistersModel` folder -> params checkpoint at `dst`."""
  hf_config, state = load_hf_folder(src)
  params, config = params_from_hf(hf_config, state, interpolation, str(src))
  meta = {"model": "dinov2", "source": str(src), "source_format": "hf"}
  return ckpt_params.write_params_checkpoint(
      dst, params, {"model": "dinov2", **config.to_dict()}, meta,
      overwrite=overwrite)


# ----------------------------------------------------------------------------
# Official .pth state dicts.
# ----------------------------------------------------------------------------


def config_from_official(state: Mapping, prefix: str = "", num_heads=None,
                         interpolation: str = "official"):
  """Infers a `DinoV2Config` from official DINOv2 state-dict shapes."""
  width = int(state[f"{prefix}cls_token"].shape[-1])
  depth = 0
  while f"{prefix}blocks.{depth}.norm1.weight" in state:
    depth += 1
  if depth == 0:
    raise common.ConversionError(
        f"no '{prefix}blocks.N' keys: not an official DINOv2 state dict "
        "(chunked blocks are not supported)")
  num_pos = int(state[f"{prefix}pos_embed"].shape[1]) - 1
  mlp_dim = int(state[f"{prefix}blocks.0.mlp.fc1.weight"].shape[0])
  regs = state.get(f"{prefix}register_tokens")
  return dinov2.DinoV2Config(
      width=width,
      depth=depth,
      num_heads=int(num_heads or width // 64),
      mlp_ratio=mlp_dim / width,
      patch_size=int(state[f"{prefix}patch_embed.proj.weight"].shape[-1]),
      pos_grid=int(round(num_pos**0.5)),
      num_registers=0 if regs is None else int(regs.shape[1]),
      interpolation=interpolation,
  )


def params_from_official(state: Mapping, prefix: str = "", num_heads=None,
                         interpolation="official", source_name="checkpoint",
                         ignore=lambda k: False):
  """Converts an official DINOv2 state dict; returns (params, config).

  The packed `attn.qkv` tensors feed three targets each (q, k, v).
  """
  config = config_from_official(state, prefix, num_heads, interpolation)
  table = official_table(config, prefix)
  params = apply_table(table, state, config, source_name, ignore=ignore)
  return params, config


def load_torch_state(path) -> dict:
  """Reads a state dict as numpy, stripping `module.` prefixes.

  `.pth`/`.pt` go through `torch.load(weights_only=True)`; `.safetensors`
  and `.npz` files (e.g. the golden fixtures' weights) are read directly.
  """
  path = pathlib.Path(path)
  if path.suffix == ".safetensors":
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    return {k.removeprefix("module."): v
            for k, v in load_file(str(path)).items()}
  if path.suffix == ".npz":
    with np.load(path) as data:
      return {k.removeprefix("module."): data[k] for k in data.files}
  import torch  # pylint: disable=g-import-not-at-top

  obj = torch.load(str(path), map_location="cpu", weights_only=True)
  for wrapper in ("state_dict", "model", "teacher"):
    if isinstance(obj, dict) and wrapper in obj and isinstance(
        obj[wrapper], dict):
      obj = obj[wrapper]
  out = {}
  for key, value in obj.items():
    key = key[len("module."):] if key.startswith("module.") else key
    out[key] = value.detach().float().numpy() if value.is_floating_point() \
        else value.numpy()
  return out


def convert_official_dinov2(src, dst, interpolation: str = "official",
                            overwrite: bool = False):
  """Official DINOv2 `.pth` -> params checkpoint at `dst`."""
  state = load_torch_state(src)
  params, config = params_from_official(
      state, interpolation=interpolation, source_name=str(src))
  meta = {"model": "dinov2", "source": str(src), "source_format": "official"}
  return ckpt_params.write_params_checkpoint(
      dst, params, {"model": "dinov2", **config.to_dict()}, meta,
      overwrite=overwrite)


# ----------------------------------------------------------------------------
# CLI hook.
# ----------------------------------------------------------------------------


def _run(args):
  src = pathlib.Path(args.src)
  fmt = args.format
  if fmt == "auto":
    fmt = "hf" if src.is_dir() else "official"
  interp = args.interpolation or ("hf" if fmt == "hf" else "official")
  fn = convert_hf_dinov2 if fmt == "hf" else convert_official_dinov2
  out = fn(src, args.dst, interpolation=interp, overwrite=args.overwrite)
  print(f"{fmt} layout, {interp} interpolation")
  return out  # the convert CLI prints "wrote <out>"


def register(subparsers) -> None:
  """Adds the `hf-dinov2` verb to a `convert` argparse subparsers object."""
  p = subparsers.add_parser(
      "hf-dinov2",
      help="DINOv2-with-registers (HF folder or official .pth) -> params",
  )
  p.add_argument("--src", required=True,
                 help="HF Dinov2WithRegistersModel folder or official .pth")
  p.add_argument("--dst", required=True, help="output checkpoint folder")
  p.add_argument("--format", choices=("auto", "hf", "official"),
                 default="auto")
  p.add_argument("--interpolation", choices=dinov2.INTERPOLATION_MODES,
                 default=None,
                 help="positional-table resampling (default: hf for HF "
                      "folders, official for .pth)")
  p.add_argument("--overwrite", action="store_true")
  p.set_defaults(func=_run)
