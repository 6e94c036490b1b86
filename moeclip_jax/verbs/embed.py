"""`python -m moeclip_jax.embed`: embeddings and hidden states of a checkpoint.

Example:
  python -m moeclip_jax.embed --checkpoint ckpt/vitl14 --images a.png b.png \
      --texts "a photo of a cat." --layers 5,11,17,23 --out emb.npz

Writes `image_embeds` [N, D] and `text_embeds` [M, D] (projected, not
normalised) for what was given, and `hidden_<i>` [N, tokens, width] = the
output of image block i (0-based) for each layer of `--layers` (text block
outputs, for `--text-layers`, as `text_hidden_<i>` [M, L, width]).
"""

from __future__ import annotations

import argparse
import sys

import jax
import numpy as np
import tqdm

from moeclip_jax.checkpoint import backbones
from moeclip_jax.models import tokenize
from moeclip_jax.utils import images as image_utils
from moeclip_jax.utils import io


def parse_layers(text: str | None) -> tuple[int, ...]:
  if not text:
    return ()
  try:
    return tuple(int(x) for x in text.split(",") if x.strip())
  except ValueError as e:
    raise ValueError(f"--layers must be comma-separated integers: {text!r}") from e


def _batches(n: int, batch_size: int):
  for start in range(0, n, batch_size):
    yield start, min(start + batch_size, n)


def _pad(x: np.ndarray, size: int) -> np.ndarray:
  """Pads the batch axis to `size` so every batch has one static shape."""
  if x.shape[0] == size:
    return x
  pad = np.zeros((size - x.shape[0],) + x.shape[1:], x.dtype)
  return np.concatenate([x, pad], 0)


def run_batched(fn, inputs: np.ndarray, batch_size: int, desc: str) -> dict:
  """Applies jitted `fn` batch by batch; concatenates dict outputs."""
  parts: dict[str, list] = {}
  for start, end in tqdm.tqdm(list(_batches(len(inputs), batch_size)),
                              desc=desc, unit="batch", disable=None):
    out = fn(_pad(inputs[start:end], batch_size))
    for key, value in out.items():
      parts.setdefault(key, []).append(np.asarray(value)[: end - start])
  return {k: np.concatenate(v, 0) for k, v in parts.items()}


def embed(module, params, inputs, layers, batch_size, *, method, prefix):
  """Runs one tower (`method`: module.encode_image / encode_text) jitted.

  `prefix` = (name of the embeddings key, prefix of the hidden-state keys).
  """
  embeds_key, hidden_prefix = prefix

  @jax.jit
  def fn(x):
    out = module.apply({"params": params}, x, layers=layers, method=method)
    res = {embeds_key: out["pooled"]}
    res.update({f"{hidden_prefix}hidden_{i}": h for i, h in out["hidden"].items()})
    return res

  return run_batched(fn, inputs, batch_size, embeds_key.split("_")[0] + "s")


def _load_pixels(args, config) -> np.ndarray | None:
  size = config.vision.image_size
  if args.pixels:
    x = np.load(args.pixels)
    if x.ndim != 4 or x.shape[1:] != (size, size, 3) or x.dtype != np.float32:
      raise ValueError(
          f"{args.pixels}: expected float32 [N, {size}, {size}, 3] normalised "
          f"NHWC pixels, got {x.dtype} {x.shape}")
    return x
  if args.images:
    return np.stack([
        image_utils.clip_preprocess(image_utils.load_rgb(p), size)
        for p in tqdm.tqdm(args.images, desc="loading", disable=None)])
  return None


def _load_ids(args, config, tokenizer) -> np.ndarray | None:
  if args.input_ids:
    ids = np.load(args.input_ids)
    if ids.ndim != 2 or ids.dtype.kind not in "iu":
      raise ValueError(f"{args.input_ids}: expected integer ids [M, L], got "
                       f"{ids.dtype} {ids.shape}")
    return ids.astype(np.int32)
  if args.texts:
    tok = tokenizer or tokenize.load_tokenizer()
    return tokenize.tokenize(tok, args.texts, config.text.context_length)
  return None


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m moeclip_jax.embed",
                              description=__doc__.split("\n\n")[0],
                              epilog=__doc__.split("\n\n")[1],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--checkpoint", required=True, help="converted checkpoint dir")
  img = p.add_mutually_exclusive_group()
  img.add_argument("--images", nargs="+", help="image files (CLIP preprocessing)")
  img.add_argument("--pixels", help="float32 NHWC normalised pixels (.npy)")
  txt = p.add_mutually_exclusive_group()
  txt.add_argument("--texts", nargs="+", help="strings to tokenize")
  txt.add_argument("--input-ids", help="int token ids [M, L] (.npy)")
  p.add_argument("--layers", default="", help="0-based blocks, e.g. 5,11,17,23")
  p.add_argument("--text-layers", default="",
                 help="0-based text blocks written as text_hidden_<i>")
  p.add_argument("--batch-size", type=int, default=8)
  p.add_argument("--out", required=True, help="output .npz")
  return p


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  if not (args.images or args.pixels or args.texts or args.input_ids):
    print("error: give at least one of --images/--pixels/--texts/--input-ids",
          file=sys.stderr)
    return 2
  try:
    module, params, config, tokenizer = backbones.load_clip(args.checkpoint)
    layers = parse_layers(args.layers)
    pixels = _load_pixels(args, config)
    ids = _load_ids(args, config, tokenizer)
    result = {}
    if pixels is not None:
      result.update(embed(module, params, pixels, layers, args.batch_size,
                          method=module.encode_image,
                          prefix=("image_embeds", "")))
    if ids is not None:
      text_layers = parse_layers(args.text_layers)
      result.update(embed(module, params, ids, text_layers, args.batch_size,
                          method=module.encode_text,
                          prefix=("text_embeds", "text_")))
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  io.write_npz(args.out, **result)
  print(f"wrote {args.out}: " + ", ".join(
      f"{k} {tuple(v.shape)}" for k, v in sorted(result.items())))
  return 0


if __name__ == "__main__":
  sys.exit(main())
