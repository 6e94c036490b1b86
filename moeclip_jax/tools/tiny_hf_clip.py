"""Writes a tiny random CLIP in the Hugging Face folder layout (numpy only).

No weights can be downloaded here, so the README's first commands and the
offline demo run the real conversion path on this folder:

  python -m moeclip_jax.tools.tiny_hf_clip --out tiny_hf_clip
  python -m moeclip_jax.convert hf-clip --src tiny_hf_clip --dst tiny_ckpt

It also writes `sample.png` (a random image) to embed. The numbers are
meaningless: this is a plumbing fixture, not a model.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

from moeclip_jax.models import tokenize
from moeclip_jax.utils import io


def hf_shapes(vw, vl, patch, image, tw, tl, proj, vocab=49408, ctx=77):
  """HF CLIPModel key -> shape for the given sizes (MLP width 4x)."""
  shapes = {
      "vision_model.embeddings.patch_embedding.weight": (vw, 3, patch, patch),
      "vision_model.embeddings.class_embedding": (vw,),
      "vision_model.embeddings.position_embedding.weight": (
          1 + (image // patch) ** 2, vw),
      "vision_model.pre_layrnorm.weight": (vw,),
      "vision_model.pre_layrnorm.bias": (vw,),
      "vision_model.post_layernorm.weight": (vw,),
      "vision_model.post_layernorm.bias": (vw,),
      "visual_projection.weight": (proj, vw),
      "text_model.embeddings.token_embedding.weight": (vocab, tw),
      "text_model.embeddings.position_embedding.weight": (ctx, tw),
      "text_model.final_layer_norm.weight": (tw,),
      "text_model.final_layer_norm.bias": (tw,),
      "text_projection.weight": (proj, tw),
      "logit_scale": (),
  }
  for tower, width, layers in (("vision_model", vw, vl), ("text_model", tw, tl)):
    for i in range(layers):
      p = f"{tower}.encoder.layers.{i}"
      for n in ("q", "k", "v", "out"):
        shapes[f"{p}.self_attn.{n}_proj.weight"] = (width, width)
        shapes[f"{p}.self_attn.{n}_proj.bias"] = (width,)
      for n in ("layer_norm1", "layer_norm2"):
        shapes[f"{p}.{n}.weight"] = (width,)
        shapes[f"{p}.{n}.bias"] = (width,)
      shapes[f"{p}.mlp.fc1.weight"] = (4 * width, width)
      shapes[f"{p}.mlp.fc1.bias"] = (4 * width,)
      shapes[f"{p}.mlp.fc2.weight"] = (width, 4 * width)
      shapes[f"{p}.mlp.fc2.bias"] = (width,)
  return shapes


def _value(rng, key, shape):
  if key == "logit_scale":
    return np.array(np.log(1 / 0.07), np.float32)
  if "norm" in key:
    base = 1.0 if key.endswith("weight") else 0.0
    return (base + 0.05 * rng.standard_normal(shape)).astype(np.float32)
  return (0.02 * rng.standard_normal(shape)).astype(np.float32)


def write_tiny_hf_clip(out, *, seed=0, vision_width=64, vision_layers=4,
                       patch=8, image_size=64, text_width=64, text_layers=2,
                       proj=64, heads=4):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  shapes = hf_shapes(vision_width, vision_layers, patch, image_size,
                     text_width, text_layers, proj)
  save_file({k: _value(rng, k, s) for k, s in shapes.items()},
            str(out / "model.safetensors"))
  common = dict(num_attention_heads=heads, hidden_act="gelu",
                layer_norm_eps=1e-5)
  config = {
      "model_type": "clip", "projection_dim": proj,
      "_name_or_path": f"tiny-random-clip-seed{seed}",
      "vision_config": dict(hidden_size=vision_width, intermediate_size=4 * vision_width,
                            num_hidden_layers=vision_layers, patch_size=patch,
                            image_size=image_size, **common),
      "text_config": dict(hidden_size=text_width, intermediate_size=4 * text_width,
                          num_hidden_layers=text_layers, vocab_size=49408,
                          max_position_embeddings=77, **common),
  }
  io.write_json(out / "config.json", config)
  for f in tokenize.TOKENIZER_FILES:
    (out / f).write_bytes((tokenize.packaged_tokenizer_dir() / f).read_bytes())
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(rng.integers(0, 255, (96, 128, 3), np.uint8)).save(
      out / "sample.png")
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", required=True)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--image-size", type=int, default=64)
  args = p.parse_args(argv)
  out = write_tiny_hf_clip(args.out, seed=args.seed, image_size=args.image_size)
  print(f"wrote {out} (config.json, model.safetensors, tokenizer, sample.png)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
