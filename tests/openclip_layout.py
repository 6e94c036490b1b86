"""Test-side writers of the OpenAI / OpenCLIP key layout (spec/moeclip.md §10).

Independent of moeclip_jax/convert: these produce OpenCLIP-format state dicts
from a Hugging Face CLIPModel state dict, and from our params (round trip).
"""

from __future__ import annotations

import numpy as np


def hf_to_openclip(hf: dict, vision_layers: int, text_layers: int) -> dict:
  """HF CLIPModel state dict (numpy) -> OpenCLIP layout."""
  out = {}
  vm, tm = "vision_model", "text_model"

  def block(src, dst):
    qkv = [hf[f"{src}.self_attn.{n}_proj.weight"] for n in "qkv"]
    out[f"{dst}.attn.in_proj_weight"] = np.concatenate(qkv, 0)
    out[f"{dst}.attn.in_proj_bias"] = np.concatenate(
        [hf[f"{src}.self_attn.{n}_proj.bias"] for n in "qkv"], 0)
    out[f"{dst}.attn.out_proj.weight"] = hf[f"{src}.self_attn.out_proj.weight"]
    out[f"{dst}.attn.out_proj.bias"] = hf[f"{src}.self_attn.out_proj.bias"]
    for a, b in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2")):
      out[f"{dst}.{a}.weight"] = hf[f"{src}.{b}.weight"]
      out[f"{dst}.{a}.bias"] = hf[f"{src}.{b}.bias"]
    for a, b in (("c_fc", "fc1"), ("c_proj", "fc2")):
      out[f"{dst}.mlp.{a}.weight"] = hf[f"{src}.mlp.{b}.weight"]
      out[f"{dst}.mlp.{a}.bias"] = hf[f"{src}.mlp.{b}.bias"]

  out["visual.conv1.weight"] = hf[f"{vm}.embeddings.patch_embedding.weight"]
  out["visual.class_embedding"] = hf[f"{vm}.embeddings.class_embedding"]
  out["visual.positional_embedding"] = hf[f"{vm}.embeddings.position_embedding.weight"]
  for a, b in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
    out[f"visual.{a}.weight"] = hf[f"{vm}.{b}.weight"]
    out[f"visual.{a}.bias"] = hf[f"{vm}.{b}.bias"]
  out["visual.proj"] = hf["visual_projection.weight"].T.copy()
  for i in range(vision_layers):
    block(f"{vm}.encoder.layers.{i}", f"visual.transformer.resblocks.{i}")
  out["token_embedding.weight"] = hf[f"{tm}.embeddings.token_embedding.weight"]
  out["positional_embedding"] = hf[f"{tm}.embeddings.position_embedding.weight"]
  out["ln_final.weight"] = hf[f"{tm}.final_layer_norm.weight"]
  out["ln_final.bias"] = hf[f"{tm}.final_layer_norm.bias"]
  out["text_projection"] = hf["text_projection.weight"].T.copy()
  for i in range(text_layers):
    block(f"{tm}.encoder.layers.{i}", f"transformer.resblocks.{i}")
  out["logit_scale"] = hf["logit_scale"]
  return out


def params_to_openclip(params: dict) -> dict:
  """Our params -> OpenCLIP layout (the inverse of the converter)."""
  out = {}

  def block(p, dst):
    a = p["attn"]
    w = [a[n]["kernel"].reshape(a[n]["kernel"].shape[0], -1).T
         for n in ("query", "key", "value")]
    out[f"{dst}.attn.in_proj_weight"] = np.concatenate(w, 0)
    out[f"{dst}.attn.in_proj_bias"] = np.concatenate(
        [a[n]["bias"].reshape(-1) for n in ("query", "key", "value")], 0)
    k = a["out"]["kernel"]
    out[f"{dst}.attn.out_proj.weight"] = k.reshape(-1, k.shape[-1]).T
    out[f"{dst}.attn.out_proj.bias"] = a["out"]["bias"]
    for ln in ("ln_1", "ln_2"):
      out[f"{dst}.{ln}.weight"] = p[ln]["scale"]
      out[f"{dst}.{ln}.bias"] = p[ln]["bias"]
    for fc in ("c_fc", "c_proj"):
      out[f"{dst}.mlp.{fc}.weight"] = p["mlp"][fc]["kernel"].T
      out[f"{dst}.mlp.{fc}.bias"] = p["mlp"][fc]["bias"]

  img, txt = params["img"], params["txt"]
  out["visual.conv1.weight"] = img["conv1"]["kernel"].transpose(3, 2, 0, 1)
  out["visual.class_embedding"] = img["class_embedding"]
  out["visual.positional_embedding"] = img["positional_embedding"]
  for ln in ("ln_pre", "ln_post"):
    out[f"visual.{ln}.weight"] = img[ln]["scale"]
    out[f"visual.{ln}.bias"] = img[ln]["bias"]
  out["visual.proj"] = img["proj"]
  for name in img:
    if name.startswith("blocks_"):
      block(img[name], f"visual.transformer.resblocks.{name[7:]}")
  out["token_embedding.weight"] = txt["token_embedding"]["embedding"]
  out["positional_embedding"] = txt["positional_embedding"]
  out["ln_final.weight"] = txt["ln_final"]["scale"]
  out["ln_final.bias"] = txt["ln_final"]["bias"]
  out["text_projection"] = txt["text_projection"]
  for name in txt:
    if name.startswith("blocks_"):
      block(txt[name], f"transformer.resblocks.{name[7:]}")
  out["logit_scale"] = params["logit_scale"]
  return {k: np.asarray(v) for k, v in out.items()}


def save_torchscript(state: dict, path) -> None:
  """Writes `state` as a TorchScript archive, like OpenAI's release files."""
  import torch  # pylint: disable=g-import-not-at-top

  root = torch.nn.Module()
  for key, value in state.items():
    *parents, leaf = key.split(".")
    node = root
    for p in parents:
      if not hasattr(node, p):
        node.add_module(p, torch.nn.Module())
      node = getattr(node, p)
    node.register_parameter(
        leaf, torch.nn.Parameter(torch.from_numpy(np.array(value)),
                                 requires_grad=False))
  torch.jit.save(torch.jit.script(root), str(path))
