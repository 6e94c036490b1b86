"""`convert inctrl-official`: an official InCTRL state dict -> our checkpoint.

Source: `InCTRL.state_dict()` of mala-lab/InCTRL (`.pyth` / `.pt` /
`.safetensors`; a `model_state` wrapper, as the official checkpoints have, is
accepted). Its keys are the OpenCLIP ViT-B-16-plus-240 backbone keys without
prefix (`visual.*`, `transformer.*`, `token_embedding.weight`,
`positional_embedding`, `ln_final.*`, `text_projection`; no `logit_scale`) plus
the trained heads below. `--clip` supplies the backbone from an OpenCLIP file
when FILE holds only the heads.

Head mapping (data: `head_param_table`, `head_stats_table`):

  adapter.fc.{0,2}.weight             -> adapter/fc_{0,2}/kernel   (transposed)
  <h>.projection{1,2,3}.weight / bias -> <h>/projection{i}/kernel (T) / bias
  <h>.bn{1,2,3}.weight / bias         -> params <h>/bn{i}/scale / bias
  <h>.bn{1,2,3}.running_mean / var    -> batch_stats <h>/bn{i}/mean / var
  <h>.bn{1,2,3}.num_batches_tracked   ignored (torch uses it only when
                                      momentum is None; InCTRL keeps 0.1)

with <h> in {diff_head, diff_head_ref}. The backbone goes through the CLIP
table of `clip_keys.openclip_table` (minus `logit_scale`, which InCTRL lacks).
Every key must be used exactly once and every parameter filled, else the
conversion fails with the sorted list of problems.

Output folder: params/ (orbax, the tree {params, batch_stats}), config.json
({"method": "inctrl", "clip": ..., "inctrl": ...}), meta.json, tokenizer/.
"""

from __future__ import annotations

import pathlib
import re
from typing import Mapping

import jax
import numpy as np

from moeclip_jax.checkpoint import params as ckpt_params
from moeclip_jax.convert import clip_convert, clip_keys
from moeclip_jax.convert import common as C
from moeclip_jax.methods.inctrl import model as inctrl_model
from moeclip_jax.models import posemb

HEADS = ("diff_head", "diff_head_ref")
IGNORED = re.compile(
    r"^(diff_head|diff_head_ref)\.bn[123]\.num_batches_tracked$"
)
_STATS = {"mean": "running_mean", "var": "running_var"}


def head_param_table() -> dict[str, tuple[str, C.Hook]]:
  """{flax params path: (official key, hook)} for the trained heads."""
  table = {
      "adapter/fc_0/kernel": ("adapter.fc.0.weight", C.linear),
      "adapter/fc_2/kernel": ("adapter.fc.2.weight", C.linear),
  }
  for h in HEADS:
    for i in (1, 2, 3):
      table[f"{h}/projection{i}/kernel"] = (
          f"{h}.projection{i}.weight", C.linear)
      table[f"{h}/projection{i}/bias"] = (f"{h}.projection{i}.bias", C.identity)
      table[f"{h}/bn{i}/scale"] = (f"{h}.bn{i}.weight", C.identity)
      table[f"{h}/bn{i}/bias"] = (f"{h}.bn{i}.bias", C.identity)
  return table


def head_stats_table() -> dict[str, tuple[str, C.Hook]]:
  """{flax batch_stats path: (official key, hook)} (BN running statistics)."""
  return {
      f"{h}/bn{i}/{ours}": (f"{h}.bn{i}.{theirs}", C.identity)
      for h in HEADS
      for i in (1, 2, 3)
      for ours, theirs in _STATS.items()
  }


def param_table(config) -> dict[str, tuple[str, C.Hook]]:
  """Whole-model params table: CLIP towers (no logit_scale) + heads."""
  table = dict(clip_keys.openclip_table(config))
  table.pop("logit_scale", None)
  table.update(head_param_table())
  return table


def _shapes(tree) -> dict[str, tuple[int, ...]]:
  return {k: tuple(v.shape) for k, v in C.flatten(tree).items()}


def _stat_keys() -> set[str]:
  return {key for key, _ in head_stats_table().values()}


def _to_variables(state, p_table, p_shapes, s_shapes, source_name):
  """Applies the params and batch_stats tables with both-way coverage."""
  stat_keys = _stat_keys()
  params = C.apply_mapping(
      p_table, state, p_shapes, source_name=source_name,
      ignore=lambda k: k in stat_keys or bool(IGNORED.match(k)))
  stats = C.apply_mapping(
      head_stats_table(), state, s_shapes, source_name=source_name,
      ignore=lambda k: k not in stat_keys)
  return {"params": params, "batch_stats": stats}


def head_variables_from_state_dict(
    state: Mapping[str, np.ndarray], *, source_name: str = "checkpoint",
    allow_backbone: bool = True,
) -> dict:
  """Heads only: {params, batch_stats} of `InCTRL(clip_config=None)`.

  Shapes are read from the state dict (225 patches, D = 640 for the official
  model). Backbone keys are skipped when `allow_backbone`.
  """
  try:
    num_patches = state["diff_head.projection1.weight"].shape[1]
    embed_dim = state["adapter.fc.0.weight"].shape[1]
  except KeyError as e:
    raise C.ConversionError(f"{source_name}: no InCTRL head key {e}") from e
  abstract = jax.eval_shape(
      lambda r: inctrl_model.init_head_variables(
          r, num_patches=num_patches, embed_dim=embed_dim),
      jax.random.key(0))
  head_keys = {k for k, _ in head_param_table().values()} | _stat_keys()
  sub = {k: v for k, v in state.items()
         if k in head_keys or IGNORED.match(k) or not allow_backbone}
  return _to_variables(sub, head_param_table(), _shapes(abstract["params"]),
                       _shapes(abstract["batch_stats"]), source_name)


def state_dict_to_variables(
    state: Mapping[str, np.ndarray], config, *,
    source_name: str = "checkpoint",
) -> dict:
  """Full model: {params, batch_stats} of `InCTRL(clip_config=config)`.

  The parameter tree does not depend on `feature_layers`, so any InCTRL
  built on `config` accepts the result.
  """
  state = dict(state)
  pos = state.get("visual.positional_embedding")
  if pos is not None and pos.shape[0] != config.vision.num_tokens:
    state["visual.positional_embedding"] = posemb.resample_pos_embed(
        pos, config.vision.grid)
  # The tree does not depend on feature_layers; any valid block will do.
  model = inctrl_model.InCTRL(clip_config=config,
                              feature_layers=(config.vision.layers - 1,))
  abstract = jax.eval_shape(
      lambda r: inctrl_model.init_variables(model, r), jax.random.key(0))
  return _to_variables(state, param_table(config),
                       _shapes(abstract["params"]),
                       _shapes(abstract["batch_stats"]), source_name)


def head_variables_to_state_dict(variables: Mapping) -> dict:
  """Inverse of the head tables: {params, batch_stats} -> official keys.

  The towers are not included (their inverse belongs to the CLIP converter).
  """
  out = {}
  for tree, table in ((variables["params"], head_param_table()),
                      (variables["batch_stats"], head_stats_table())):
    flat = C.flatten(tree)
    for path, (key, hook) in table.items():
      value = np.asarray(flat[path])
      out[key] = value.T if hook is C.linear else value
  for h in HEADS:
    for i in (1, 2, 3):
      out[f"{h}.bn{i}.num_batches_tracked"] = np.zeros((), np.int64)
  return out


def _load_state(path) -> dict[str, np.ndarray]:
  return clip_convert.load_openclip_state_dict(path)


def _merge_backbone(state, clip_path) -> dict:
  """Adds the OpenCLIP backbone keys FILE lacks (their logit_scale dropped)."""
  if clip_path is None:
    if "visual.positional_embedding" not in state:
      raise C.ConversionError(
          "checkpoint holds no backbone (no visual.positional_embedding): "
          "pass the OpenCLIP weights with --clip")
    return state
  backbone = _load_state(clip_path)
  backbone.pop("logit_scale", None)
  return {**backbone, **state}


def convert_inctrl_official(
    checkpoint, dst, *, clip=None, tokenizer=None, model="ViT-B-16-plus-240",
    feature_layers=(6, 8, 10), overwrite=False,
) -> pathlib.Path:
  """Converts an official InCTRL checkpoint (see the module docstring).

  Args:
    checkpoint: `InCTRL.state_dict()` file (.pyth/.pt/.pth/.safetensors).
    dst: output folder.
    clip: OpenCLIP ViT-B-16-plus-240 weights when FILE lacks the backbone.
    tokenizer: folder with vocab.json + merges.txt (default: packaged BPE).
    model: CLIP variant name.
    feature_layers: 0-based blocks of the patch residuals (official: 6, 8,
      10); recorded in config.json.
    overwrite: replace a non-empty `dst`.

  Returns:
    The written folder.
  """
  checkpoint = pathlib.Path(checkpoint)
  state = _merge_backbone(_load_state(checkpoint), clip)
  config = clip_convert.config_from_openclip(
      state, model, source_name=str(checkpoint))
  if max(feature_layers) >= config.vision.layers:
    raise C.ConversionError(
        f"{checkpoint}: feature_layers {tuple(feature_layers)} need more "
        f"than the backbone's {config.vision.layers} blocks")
  variables = state_dict_to_variables(state, config,
                                      source_name=str(checkpoint))
  sources = [checkpoint] + ([pathlib.Path(clip)] if clip else [])
  meta = {
      "source_format": "inctrl-official",
      "source_sha256": {p.name: C.sha256_file(p) for p in sources},
      "options": {"model": model, "feature_layers": list(feature_layers)},
  }
  cfg = {"method": "inctrl", "clip": config.to_dict(),
         "inctrl": {"feature_layers": list(feature_layers),
                    "adapter_reduction": 4,
                    "text_scale": 100.0}}
  return ckpt_params.write_checkpoint_with_tokenizer(dst, variables, cfg, meta,
                                          tokenizer, overwrite)


def register(subparsers) -> None:
  """Adds the `inctrl-official` verb to `python -m moeclip_jax.convert`."""
  p = subparsers.add_parser(
      "inctrl-official", help="official InCTRL state dict -> checkpoint",
      description="Example: python -m moeclip_jax.convert inctrl-official "
      "--checkpoint checkpoints/2/checkpoint.pyth --clip "
      "vit_b_16_plus_240-laion400m_e32-699c4b84.pt --dst ckpt/inctrl_k2")
  p.add_argument("--checkpoint", required=True,
                 help="InCTRL.state_dict() file (.pyth/.pt/.safetensors)")
  p.add_argument("--clip", default=None,
                 help="OpenCLIP ViT-B-16-plus-240 weights, when the "
                 "checkpoint lacks the backbone")
  p.add_argument("--tokenizer", default=None,
                 help="folder with vocab.json + merges.txt")
  p.add_argument("--dst", required=True, help="output checkpoint folder")
  p.add_argument("--model", default="ViT-B-16-plus-240",
                 help="CLIP variant of the backbone (official: the default)")
  p.add_argument("--feature-layers", default="6,8,10",
                 help="0-based blocks of the patch residuals")
  p.add_argument("--overwrite", action="store_true")
  p.set_defaults(func=lambda a: convert_inctrl_official(
      a.checkpoint, a.dst, clip=a.clip, tokenizer=a.tokenizer, model=a.model,
      feature_layers=tuple(int(x) for x in a.feature_layers.split(",")),
      overwrite=a.overwrite))
