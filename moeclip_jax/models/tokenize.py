"""CLIP BPE tokenizer: loading and OpenAI-style fixed-length tokenisation.

The vocabulary (`vocab.json` + `merges.txt`, the MIT-licensed OpenAI CLIP BPE
shared by every OpenAI/OpenCLIP model) ships as package data, so a tokenizer is
always available offline.
"""

from __future__ import annotations

import importlib.resources
import pathlib
from typing import Sequence

import numpy as np

SOT_ID = 49406
EOT_ID = 49407
TOKENIZER_FILES = ("vocab.json", "merges.txt")


def packaged_tokenizer_dir() -> pathlib.Path:
  """Folder of the CLIP BPE files shipped inside moeclip_jax."""
  root = importlib.resources.files("moeclip_jax") / "assets" / "clip_tokenizer"
  return pathlib.Path(str(root))


def load_tokenizer(directory=None):
  """A `transformers.CLIPTokenizer` from `directory` (default: packaged BPE)."""
  import transformers  # pylint: disable=g-import-not-at-top

  directory = pathlib.Path(directory or packaged_tokenizer_dir())
  missing = [f for f in TOKENIZER_FILES if not (directory / f).is_file()]
  if missing:
    raise FileNotFoundError(
        f"{directory}: tokenizer folder lacks {', '.join(missing)}"
    )
  return transformers.CLIPTokenizer.from_pretrained(str(directory))


def tokenize(
    tokenizer, texts: Sequence[str], context_length: int = 77
) -> np.ndarray:
  """OpenAI-style ids: [SOT, bpe..., EOT] zero-padded to `context_length`.

  Over-long texts are truncated with EOT kept as the last token, as OpenCLIP
  does. Returns int32[N, context_length].
  """
  if isinstance(texts, str):
    texts = [texts]
  out = np.zeros((len(texts), context_length), np.int32)
  for row, text in enumerate(texts):
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    if len(ids) > context_length:
      ids = ids[: context_length - 1] + [EOT_ID]
    out[row, : len(ids)] = ids
  return out
