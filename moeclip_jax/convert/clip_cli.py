"""`convert hf-clip` and `convert openclip`: CLIP weights -> our checkpoint."""

from __future__ import annotations

import pathlib

from moeclip_jax.checkpoint import params as ckpt_params
from moeclip_jax.convert import clip_convert
from moeclip_jax.convert import common as C
from moeclip_jax.models import clip_config, tokenize


def _tokenizer_dir(explicit, source_dir):
  """--tokenizer, else the source folder's own files, else the packaged BPE."""
  if explicit:
    return pathlib.Path(explicit)
  if source_dir is not None and all(
      (pathlib.Path(source_dir) / f).is_file() for f in tokenize.TOKENIZER_FILES
  ):
    return pathlib.Path(source_dir)
  return tokenize.packaged_tokenizer_dir()


def write_clip_checkpoint(dst, params, config, meta, tokenizer_dir,
                          overwrite=False):
  return ckpt_params.write_checkpoint_with_tokenizer(
      dst, params, {"method": "clip", "clip": config.to_dict()}, meta,
      tokenizer_dir, overwrite)


def convert_hf_clip(src, dst, image_size=None, activation=None,
                    tokenizer=None, overwrite=False):
  src = pathlib.Path(src)
  config = clip_convert.config_from_hf(src, image_size=image_size,
                                       activation=activation)
  state = clip_convert.load_hf_state_dict(src)
  params = clip_convert.hf_to_params(state, config, source_name=str(src))
  files = sorted(p for p in src.glob("*.safetensors"))
  meta = {
      "source_format": "hf-clip",
      "source": str(src.absolute()),
      "source_sha256": {p.name: C.sha256_file(p) for p in files},
      "options": {"image_size": image_size, "activation": activation},
  }
  return write_clip_checkpoint(dst, params, config, meta,
                               _tokenizer_dir(tokenizer, src), overwrite)


def convert_openclip(src, model, dst, image_size=None, activation=None,
                     tokenizer=None, overwrite=False):
  src = pathlib.Path(src)
  state = clip_convert.load_openclip_state_dict(src)
  config = clip_convert.config_from_openclip(
      state, model, image_size=image_size, activation=activation,
      source_name=str(src))
  params = clip_convert.openclip_to_params(state, config, source_name=str(src))
  meta = {
      "source_format": "openclip",
      "source": str(src.absolute()),
      "source_sha256": {src.name: C.sha256_file(src)},
      "options": {"model": model, "image_size": image_size,
                  "activation": activation},
  }
  return write_clip_checkpoint(dst, params, config, meta,
                               _tokenizer_dir(tokenizer, None), overwrite)


def _common_flags(p):
  p.add_argument("--dst", required=True, help="output checkpoint folder")
  p.add_argument("--image-size", type=int, default=None,
                 help="resample the positional table to this input size "
                      "(default: the source's native size)")
  p.add_argument("--activation", choices=clip_config.ACTIVATIONS, default=None,
                 help="override the activation read from the source")
  p.add_argument("--tokenizer", default=None,
                 help="folder with vocab.json + merges.txt")
  p.add_argument("--overwrite", action="store_true")


def register(subparsers) -> None:
  p = subparsers.add_parser(
      "hf-clip", help="Hugging Face CLIPModel folder -> checkpoint",
      description="Example: python -m moeclip_jax.convert hf-clip --src "
      "clip-vit-large-patch14-336 --dst ckpt/vitl14_518 --image-size 518")
  p.add_argument("--src", required=True,
                 help="folder with config.json + model.safetensors")
  _common_flags(p)
  p.set_defaults(func=lambda a: convert_hf_clip(
      a.src, a.dst, a.image_size, a.activation, a.tokenizer, a.overwrite))

  p = subparsers.add_parser(
      "openclip", help="OpenAI .pt / OpenCLIP state dict -> checkpoint",
      description="Example: python -m moeclip_jax.convert openclip --src "
      "ViT-L-14-336px.pt --model ViT-L-14-336 --dst ckpt/vitl14_518 "
      "--image-size 518")
  p.add_argument("--src", required=True, help=".pt, .bin or .safetensors file")
  p.add_argument("--model", required=True,
                 help=f"variant name, one of {sorted(clip_config.VARIANTS)}")
  _common_flags(p)
  p.set_defaults(func=lambda a: convert_openclip(
      a.src, a.model, a.dst, a.image_size, a.activation, a.tokenizer,
      a.overwrite))
