"""Key-mapping tables for CLIP checkpoints, as data.

Path grammar: targets are '/'-joined Flax paths of models/clip.py
(`img/blocks_3/attn/query/kernel`); sources are the checkpoint's own keys.
Two source layouts:

* `openclip`: OpenAI TorchScript and OpenCLIP state dicts
  (`visual.transformer.resblocks.{i}.attn.in_proj_weight` packs q, k, v
  row-wise; `visual.proj` / `text_projection` are used as `x @ proj`).
* `hf`: Hugging Face `CLIPModel` (`vision_model.encoder.layers.{i}.self_attn.
  q_proj.weight`, `visual_projection.weight` as a Linear).
"""

from __future__ import annotations

import re

from moeclip_jax.convert import common as C
from moeclip_jax.models import clip_config

# Source keys that carry no parameter of ours and are skipped on purpose.
IGNORED_OPENCLIP = re.compile(
    r"^(input_resolution|context_length|vocab_size|attn_mask|"
    r"(visual\.)?attn_mask|text\.attn_mask)$"
)
IGNORED_HF = re.compile(r".*position_ids$")


def _openclip_block(src: str, dst: str, heads: int) -> dict:
  table = {}
  for i, name in enumerate(("query", "key", "value")):
    table[f"{dst}/attn/{name}/kernel"] = (
        f"{src}.attn.in_proj_weight", C.packed_slice(i, C.heads_in(heads)))
    table[f"{dst}/attn/{name}/bias"] = (
        f"{src}.attn.in_proj_bias", C.packed_slice(i, C.heads_bias(heads)))
  table[f"{dst}/attn/out/kernel"] = (
      f"{src}.attn.out_proj.weight", C.heads_out(heads))
  table[f"{dst}/attn/out/bias"] = (f"{src}.attn.out_proj.bias", C.identity)
  for ln in ("ln_1", "ln_2"):
    table[f"{dst}/{ln}/scale"] = (f"{src}.{ln}.weight", C.identity)
    table[f"{dst}/{ln}/bias"] = (f"{src}.{ln}.bias", C.identity)
  for fc in ("c_fc", "c_proj"):
    table[f"{dst}/mlp/{fc}/kernel"] = (f"{src}.mlp.{fc}.weight", C.linear)
    table[f"{dst}/mlp/{fc}/bias"] = (f"{src}.mlp.{fc}.bias", C.identity)
  return table


def _ln(dst: str, src: str) -> dict:
  return {
      f"{dst}/scale": (f"{src}.weight", C.identity),
      f"{dst}/bias": (f"{src}.bias", C.identity),
  }


def openclip_table(config: clip_config.CLIPConfig, prefix: str = "") -> dict:
  """{flax path: (OpenCLIP key, hook)}; `prefix` prepends e.g. 'clipmodel.'."""
  v, t = config.vision, config.text
  p = prefix
  table = {
      "img/conv1/kernel": (f"{p}visual.conv1.weight", C.conv2d),
      "img/class_embedding": (f"{p}visual.class_embedding", C.identity),
      "img/positional_embedding": (
          f"{p}visual.positional_embedding", C.identity),
      **_ln("img/ln_pre", f"{p}visual.ln_pre"),
      **_ln("img/ln_post", f"{p}visual.ln_post"),
      "logit_scale": (f"{p}logit_scale", C.scalar),
  }
  if v.output_dim is not None:
    table["img/proj"] = (f"{p}visual.proj", C.identity)
  for i in range(v.layers):
    table.update(_openclip_block(
        f"{p}visual.transformer.resblocks.{i}", f"img/blocks_{i}", v.heads))
  if t is None:
    return table
  table.update({
      "txt/token_embedding/embedding": (
          f"{p}token_embedding.weight", C.identity),
      "txt/positional_embedding": (f"{p}positional_embedding", C.identity),
      **_ln("txt/ln_final", f"{p}ln_final"),
  })
  if t.output_dim is not None:
    table["txt/text_projection"] = (f"{p}text_projection", C.identity)
  for i in range(t.layers):
    table.update(_openclip_block(
        f"{p}transformer.resblocks.{i}", f"txt/blocks_{i}", t.heads))
  return table


def _hf_block(src: str, dst: str, heads: int) -> dict:
  table = {}
  for ours, theirs in (("query", "q_proj"), ("key", "k_proj"),
                       ("value", "v_proj")):
    table[f"{dst}/attn/{ours}/kernel"] = (
        f"{src}.self_attn.{theirs}.weight", C.heads_in(heads))
    table[f"{dst}/attn/{ours}/bias"] = (
        f"{src}.self_attn.{theirs}.bias", C.heads_bias(heads))
  table[f"{dst}/attn/out/kernel"] = (
      f"{src}.self_attn.out_proj.weight", C.heads_out(heads))
  table[f"{dst}/attn/out/bias"] = (f"{src}.self_attn.out_proj.bias", C.identity)
  table.update(_ln(f"{dst}/ln_1", f"{src}.layer_norm1"))
  table.update(_ln(f"{dst}/ln_2", f"{src}.layer_norm2"))
  for ours, theirs in (("c_fc", "fc1"), ("c_proj", "fc2")):
    table[f"{dst}/mlp/{ours}/kernel"] = (f"{src}.mlp.{theirs}.weight", C.linear)
    table[f"{dst}/mlp/{ours}/bias"] = (f"{src}.mlp.{theirs}.bias", C.identity)
  return table


def hf_table(config: clip_config.CLIPConfig) -> dict:
  """{flax path: (Hugging Face CLIPModel key, hook)}."""
  v, t = config.vision, config.text
  vm, tm = "vision_model", "text_model"
  table = {
      "img/conv1/kernel": (f"{vm}.embeddings.patch_embedding.weight", C.conv2d),
      "img/class_embedding": (f"{vm}.embeddings.class_embedding", C.identity),
      "img/positional_embedding": (
          f"{vm}.embeddings.position_embedding.weight", C.identity),
      **_ln("img/ln_pre", f"{vm}.pre_layrnorm"),  # sic: HF's spelling
      **_ln("img/ln_post", f"{vm}.post_layernorm"),
      "img/proj": ("visual_projection.weight", C.linear),
      "logit_scale": ("logit_scale", C.scalar),
  }
  for i in range(v.layers):
    table.update(_hf_block(
        f"{vm}.encoder.layers.{i}", f"img/blocks_{i}", v.heads))
  table.update({
      "txt/token_embedding/embedding": (
          f"{tm}.embeddings.token_embedding.weight", C.identity),
      "txt/positional_embedding": (
          f"{tm}.embeddings.position_embedding.weight", C.identity),
      **_ln("txt/ln_final", f"{tm}.final_layer_norm"),
      "txt/text_projection": ("text_projection.weight", C.linear),
  })
  for i in range(t.layers):
    table.update(_hf_block(
        f"{tm}.encoder.layers.{i}", f"txt/blocks_{i}", t.heads))
  return table
