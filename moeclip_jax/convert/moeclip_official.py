"""`convert moeclip-official`: official MoECLIP adapters + CLIP -> checkpoint.

Sources:
  --clip     the backbone, any file `convert openclip` reads (OpenAI `.pt`
             TorchScript, OpenCLIP state dict `.pt/.bin/.safetensors`).
  --adapter  the official `torch.save` dict (`moe_epoch_N.pth`), loaded with
             `weights_only=True`; its `image_adapter` and `text_adapter` state
             dicts are used, `epoch` / `optimizer_state_dict` are ignored.

Adapter mapping (data: `adapter_table`; j = MoE / feature layer index,
k = expert; torch Linear weights are (out, in), ours (in, out)):

  image_adapter.seg_proj.{j}.fc.weight (768, 1024) -> seg_proj_{j}/kernel (T)
  image_adapter.det_proj.ln.{weight, bias}          -> det_proj/ln/{scale, bias}
  image_adapter.det_proj.adapter.0.weight (1024,1,3) -> det_proj/depthwise [3,W]
  image_adapter.det_proj.adapter.2.weight (768,1024,1)
                                                -> det_proj/pointwise [W, 768]
  image_adapter.moe_adapters.{j}.gate.weight (4, 1024) -> moe_{j}/router/kernel
  image_adapter.moe_adapters.{j}.experts.{k}.lora_A.weight (8, 1024), all k
                                  -> moe_{j}/fofs_a [E, W, R] (stacked, T)
  image_adapter.moe_adapters.{j}.experts.{k}.lora_B.weight (1024, 8), all k
                                  -> moe_{j}/lora_b [E, R, W] (stacked, T)
  text_adapter.0.fc.0.weight (768, 768)           -> text_adapter/fc/kernel (T)

The backbone goes through `clip_keys.openclip_table` (its `logit_scale` and
projections are kept in the CLIP tree but unused by MoECLIP). The positional
table is resampled once here when `--image-size` differs from the source
grid (the paper's recipe passes 518). The backbone runs with exact erf GELU
whatever the source declares, as the official code does; `--activation` is an
opt-in deviation. Every source key is used exactly once and every parameter
is filled, else the conversion fails with the sorted list of problems.

Output folder (what `load_detector` / `model_io.load` take): params/ (orbax,
the MoECLIP params tree), config.json ({"method": "moeclip", "clip": ...,
"moeclip": ...}), meta.json, tokenizer/.
"""

from __future__ import annotations

import pathlib
import re
from typing import Mapping

import numpy as np

from moeclip_jax.checkpoint import params as ckpt_params
from moeclip_jax.convert import clip_convert
from moeclip_jax.convert import common as C
from moeclip_jax.methods.moeclip import config as config_lib

IMAGE_PREFIX = "image_adapter."
TEXT_PREFIX = "text_adapter."
_EXPERT_KEY = re.compile(
    r"^(?P<pre>.*moe_adapters\.(?P<j>\d+))\.experts\.(?P<k>\d+)\."
    r"(?P<ab>lora_[AB])\.weight$"
)


def _depthwise(x: np.ndarray) -> np.ndarray:
  """torch depthwise Conv1d (W, 1, k) -> [k, W]."""
  return x[:, 0, :].T


def _pointwise(x: np.ndarray) -> np.ndarray:
  """torch 1x1 Conv1d (D, W, 1) -> [W, D]."""
  return x[:, :, 0].T


def _stacked_linear(x: np.ndarray) -> np.ndarray:
  """Stacked torch Linear weights (E, out, in) -> (E, in, out)."""
  return x.transpose(0, 2, 1)


def adapter_table(cfg: config_lib.MoECLIPConfig) -> dict:
  """{flax path: (official key, hook)} for the trained adapters.

  The per-expert LoRA keys are stacked first (`stack_experts`), so the table
  names the stacked keys `...moe_adapters.{j}.experts.lora_{A,B}.weight`.
  """
  i, t = IMAGE_PREFIX, TEXT_PREFIX
  table = {
      "det_proj/ln/scale": (f"{i}det_proj.ln.weight", C.identity),
      "det_proj/ln/bias": (f"{i}det_proj.ln.bias", C.identity),
      "det_proj/depthwise": (f"{i}det_proj.adapter.0.weight", _depthwise),
      "det_proj/pointwise": (f"{i}det_proj.adapter.2.weight", _pointwise),
      "text_adapter/fc/kernel": (f"{t}0.fc.0.weight", C.linear),
  }
  for j in range(len(cfg.feature_layers)):
    table[f"seg_proj_{j}/kernel"] = (f"{i}seg_proj.{j}.fc.weight", C.linear)
  a_name = "fofs_a" if cfg.use_fofs else "lora_a"
  for j in range(len(cfg.moe_layers)):
    pre = f"{i}moe_adapters.{j}"
    table[f"moe_{j}/router/kernel"] = (f"{pre}.gate.weight", C.linear)
    table[f"moe_{j}/{a_name}"] = (
        f"{pre}.experts.lora_A.weight", _stacked_linear)
    table[f"moe_{j}/lora_b"] = (f"{pre}.experts.lora_B.weight", _stacked_linear)
  return table


def stack_experts(
    state: Mapping[str, np.ndarray], num_experts: int, source_name: str
) -> dict[str, np.ndarray]:
  """Replaces per-expert LoRA keys by one stacked key per MoE layer.

  Raises:
    ConversionError: an expert is missing or the checkpoint has another
      number of experts than the config.
  """
  out, groups = {}, {}
  for key, value in state.items():
    match = _EXPERT_KEY.match(key)
    if match is None:
      out[key] = value
      continue
    stacked = f"{match['pre']}.experts.{match['ab']}.weight"
    groups.setdefault(stacked, {})[int(match["k"])] = value
  for stacked, experts in sorted(groups.items()):
    if sorted(experts) != list(range(num_experts)):
      raise C.ConversionError(
          f"{source_name}: {stacked.replace('experts.', 'experts.*.')} has "
          f"experts {sorted(experts)}, the config expects {num_experts} "
          "(checkpoint from another config?)"
      )
    out[stacked] = np.stack([np.asarray(experts[k]) for k in sorted(experts)])
  return out


def adapter_state(image_sd: Mapping, text_sd: Mapping) -> dict:
  """Official adapter state dicts -> one prefixed {key: ndarray} dict."""

  state = {}
  for prefix, sd in ((IMAGE_PREFIX, image_sd), (TEXT_PREFIX, text_sd)):
    arrays = clip_convert._torch_to_numpy(dict(sd))  # pylint: disable=protected-access
    for key, value in arrays.items():
      state[prefix + key] = value
  return state


def _target_shapes(tree) -> dict[str, tuple[int, ...]]:
  return {k: tuple(v.shape) for k, v in C.flatten(tree).items()}


def adapter_params_from_state(
    state: Mapping[str, np.ndarray],
    cfg: config_lib.MoECLIPConfig,
    *,
    width: int = 1024,
    text_width: int | None = None,
    source_name: str = "checkpoint",
    ignore=None,
) -> dict:
  """Adapter params only (no backbone), from `image_adapter.*` /
  `text_adapter.*` keys (the fixture and checkpoint layout).

  Args:
    state: {key: ndarray}; other keys fail unless `ignore(key)`.
    cfg: adapter config (layer counts, experts, FOFS).
    width: vision width W.
    text_width: text width Wt (default cfg.text_width).
    source_name: named in errors.
    ignore: predicate for keys to skip (e.g. backbone keys).

  Returns:
    nested params {moe_j, seg_proj_j, det_proj, text_adapter}.
  """
  shapes = adapter_shapes(cfg, width, text_width or cfg.text_width)
  state = stack_experts(state, cfg.num_experts, source_name)
  return C.apply_mapping(
      adapter_table(cfg), state, shapes, source_name=source_name,
      ignore=ignore or (lambda k: False))


def adapter_shapes(cfg, width: int, text_width: int) -> dict[str, tuple]:
  """Target shapes of the adapter params (no model tracing needed)."""
  e, r, d = cfg.num_experts, cfg.lora_rank, cfg.proj_dim
  a_name = "fofs_a" if cfg.use_fofs else "lora_a"
  shapes = {
      "det_proj/ln/scale": (width,), "det_proj/ln/bias": (width,),
      "det_proj/depthwise": (cfg.det_kernel, width),
      "det_proj/pointwise": (width, d),
      "text_adapter/fc/kernel": (text_width, d),
  }
  for j in range(len(cfg.feature_layers)):
    shapes[f"seg_proj_{j}/kernel"] = (width, d)
  for j in range(len(cfg.moe_layers)):
    shapes[f"moe_{j}/router/kernel"] = (width, e)
    shapes[f"moe_{j}/{a_name}"] = (e, width, r)
    shapes[f"moe_{j}/lora_b"] = (e, r, width)
  return shapes


def adapter_params_to_state(params: Mapping, cfg) -> dict[str, np.ndarray]:
  """Inverse mapping: our adapter params -> official prefixed keys."""
  flat = C.flatten(params)
  out = {}
  inverse = {_depthwise: lambda x: x.T[:, None, :],
             _pointwise: lambda x: x.T[:, :, None],
             _stacked_linear: lambda x: x.transpose(0, 2, 1),
             C.linear: lambda x: x.T, C.identity: lambda x: x}
  for path, (key, hook) in adapter_table(cfg).items():
    value = inverse[hook](np.asarray(flat[path]))
    if ".experts.lora_" in key:
      for k in range(value.shape[0]):
        out[key.replace(".experts.", f".experts.{k}.")] = value[k]
    else:
      out[key] = value
  return out


def load_adapter_checkpoint(path) -> dict[str, np.ndarray]:
  """The official `torch.save` dict -> prefixed adapter state."""
  import torch  # pylint: disable=g-import-not-at-top

  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such file")
  try:
    ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types for corrupt files
    raise C.ConversionError(
        f"{path}: not a readable torch checkpoint: {e}") from e
  parts = {"image_adapter", "text_adapter"}
  if not isinstance(ckpt, Mapping) or not parts <= set(ckpt):
    raise C.ConversionError(
        f"{path}: expected a dict with 'image_adapter' and 'text_adapter' "
        "state dicts (an official moe_epoch_N.pth)")
  return adapter_state(ckpt["image_adapter"], ckpt["text_adapter"])


def infer_config(
    state: Mapping[str, np.ndarray], vision_layers: int = 24
) -> config_lib.MoECLIPConfig:
  """Adapter config read from the checkpoint's keys and shapes.

  The official model hard-codes 24 vision blocks with adapters and features
  after blocks 5/11/17/23 (0-based); for other depths the 4 layers are spread
  the same way (block (i + 1) * depth / 4 - 1).
  """
  def count(pattern):
    return len({m.group(1) for k in state
                if (m := re.match(pattern, k)) is not None})
  n_moe = count(r"^image_adapter\.moe_adapters\.(\d+)\.gate\.weight$")
  n_seg = count(r"^image_adapter\.seg_proj\.(\d+)\.fc\.weight$")
  if n_moe != 4 or n_seg != 4:
    raise C.ConversionError(
        f"checkpoint has {n_moe} MoE adapters and {n_seg} seg projections; "
        "the official layout has 4 and 4 (seg_proj_sharing_strategy="
        "'separate' and --no_use_paa checkpoints are not supported)")
  try:
    gate = state["image_adapter.moe_adapters.0.gate.weight"]
    b0 = state["image_adapter.moe_adapters.0.experts.0.lora_B.weight"]
    seg = state["image_adapter.seg_proj.0.fc.weight"]
    text = state["text_adapter.0.fc.0.weight"]
  except KeyError as e:
    raise C.ConversionError(f"checkpoint lacks adapter key {e}") from e
  if vision_layers % 4:
    raise C.ConversionError(
        f"backbone depth {vision_layers} is not a multiple of 4")
  layers = tuple((i + 1) * vision_layers // 4 - 1 for i in range(4))
  return config_lib.MoECLIPConfig(
      moe_layers=layers, feature_layers=layers,
      num_experts=int(gate.shape[0]), lora_rank=int(b0.shape[1]),
      proj_dim=int(seg.shape[0]), text_width=int(text.shape[1]))


def _check_widths(cfg, ccfg, source_name) -> None:
  """The adapters must fit the backbone (checkpoint from another config?)."""
  if ccfg.text is None:
    raise C.ConversionError(f"{source_name}: the backbone has no text tower")
  for layer in cfg.moe_layers + cfg.feature_layers:
    if layer >= ccfg.vision.layers:
      raise C.ConversionError(
          f"{source_name}: adapter layer {layer} but the backbone has "
          f"{ccfg.vision.layers} vision blocks")


def convert_moeclip_official(
    clip_src, adapter_path, dst, image_size=None, tokenizer=None,
    activation=None, *, model="ViT-L-14-336", overwrite=False,
) -> pathlib.Path:
  """Official MoECLIP weights -> our checkpoint (see the module docstring).

  Args:
    clip_src: backbone file (OpenAI `.pt`, OpenCLIP `.pt/.bin/.safetensors`).
    adapter_path: official `moe_epoch_N.pth` (or `moe_last.pth`).
    dst: output folder.
    image_size: model input size (default: the positional table's own grid,
      336 for the OpenAI file); the official recipe uses 518.
    tokenizer: folder with vocab.json + merges.txt (default: packaged BPE).
    activation: backbone activation override (default exact "gelu", as the
      official code runs it).
    model: CLIP variant name of the backbone.
    overwrite: replace a non-empty `dst`.

  Returns:
    The written folder.
  """

  clip_src, adapter_path = pathlib.Path(clip_src), pathlib.Path(adapter_path)
  state = clip_convert.load_openclip_state_dict(clip_src)
  ccfg = clip_convert.config_from_openclip(
      state, model, image_size=image_size, activation=activation or "gelu",
      source_name=str(clip_src))
  backbone = clip_convert.openclip_to_params(
      state, ccfg, source_name=str(clip_src))
  backbone.pop("logit_scale", None)
  adapters_state = load_adapter_checkpoint(adapter_path)
  cfg = infer_config(adapters_state, ccfg.vision.layers)
  _check_widths(cfg, ccfg, str(adapter_path))
  adapters = adapter_params_from_state(
      adapters_state, cfg, width=ccfg.vision.width,
      text_width=ccfg.text.width, source_name=str(adapter_path))
  meta = {
      "source_format": "moeclip-official",
      "source_sha256": {p.name: C.sha256_file(p)
                        for p in (clip_src, adapter_path)},
      "options": {"model": model, "image_size": image_size,
                  "activation": activation},
  }
  config = {"method": "moeclip", "clip": ccfg.to_dict(),
            "moeclip": cfg.to_dict()}
  return ckpt_params.write_checkpoint_with_tokenizer(
      dst, {**backbone, **adapters}, config, meta, tokenizer, overwrite)


def register(subparsers) -> None:
  """Adds the `moeclip-official` verb to `python -m moeclip_jax.convert`."""
  p = subparsers.add_parser(
      "moeclip-official", help="official MoECLIP adapters + CLIP -> checkpoint",
      description="Example: python -m moeclip_jax.convert moeclip-official "
      "--clip ViT-L-14-336px.pt --adapter moe_epoch_20.pth --dst "
      "ckpt/moeclip_518 --image-size 518")
  p.add_argument("--clip", required=True,
                 help="backbone: OpenAI .pt or OpenCLIP .pt/.bin/.safetensors")
  p.add_argument("--adapter", required=True,
                 help="official torch.save dict (moe_epoch_N.pth)")
  p.add_argument("--dst", required=True, help="output checkpoint folder")
  p.add_argument("--image-size", type=int, default=None,
                 help="input size (default: the positional table's grid, "
                 "336 for OpenAI ViT-L/14@336; the paper uses 518)")
  p.add_argument("--tokenizer", default=None,
                 help="folder with vocab.json + merges.txt")
  p.add_argument("--activation", default=None,
                 choices=("gelu", "quick_gelu", "gelu_tanh"),
                 help="opt-in deviation: backbone activation (default exact "
                 "gelu, as the official code runs it)")
  p.add_argument("--model", default="ViT-L-14-336",
                 help="CLIP variant name of the backbone")
  p.add_argument("--overwrite", action="store_true")
  p.set_defaults(func=lambda a: convert_moeclip_official(
      a.clip, a.adapter, a.dst, a.image_size, a.tokenizer, a.activation,
      model=a.model, overwrite=a.overwrite))
