"""Per-class text features for InCTRL's text prior, computed once per class.

The official forward re-encodes the 242 prompts of a sample's class on every
forward (about 15 s of a 15.7 s CPU forward at batch 1). The prompt features
only depend on the class name and the frozen text tower, so they are encoded
once per class here and reused for every query.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import numpy as np

from moeclip_jax.methods.inctrl import model as inctrl_model
from moeclip_jax.methods.inctrl import prompts
from moeclip_jax.models import tokenize

EncodeFn = Callable[[np.ndarray], jax.Array]


class TextFeatureCache:
  """class name -> [t_n, t_a] float32[2, D], encoded on first use.

  Args:
    encode_fn: token ids int32[N, 77] -> text embeddings float[N, D]
      (ln_final -> EOT -> text_projection).
    tokenizer: a CLIP tokenizer (`moeclip_jax.models.tokenize`).
    context_length: token sequence length.
  """

  def __init__(self, encode_fn: EncodeFn, tokenizer, context_length: int = 77):
    self._encode = encode_fn
    self._tokenizer = tokenizer
    self._context_length = context_length
    self._cache: dict[str, np.ndarray] = {}
    self.encode_calls = 0  # text-tower passes so far (one per new class)

  @classmethod
  def from_model(cls, model: inctrl_model.InCTRL, params, tokenizer):
    """Builds the cache around a jitted `InCTRL.encode_text`."""
    # Params are an argument, not a closure: closed-over arrays would be
    # baked into the compiled program as constants.
    encode = jax.jit(lambda p, ids: model.apply(
        {"params": p}, ids, method=inctrl_model.InCTRL.encode_text))
    return cls(lambda ids: encode(params, ids), tokenizer,
               model.clip_config.text.context_length)

  def token_ids(self, class_name: str) -> tuple[np.ndarray, np.ndarray]:
    """int32[Nn, 77] and int32[Na, 77] ids of the class's prompts."""
    normal, anomaly = prompts.get_texts(class_name)
    return (
        tokenize.tokenize(self._tokenizer, normal, self._context_length),
        tokenize.tokenize(self._tokenizer, anomaly, self._context_length),
    )

  def __call__(self, class_name: str) -> np.ndarray:
    """float32[2, D] [t_n, t_a] for one class."""
    if class_name not in self._cache:
      ids_n, ids_a = self.token_ids(class_name)
      emb = np.asarray(self._encode(np.concatenate([ids_n, ids_a])))
      self.encode_calls += 1
      feats = inctrl_model.class_text_features(emb[: len(ids_n)],
                                               emb[len(ids_n):])
      self._cache[class_name] = np.asarray(feats, np.float32)
    return self._cache[class_name]

  def batch(self, class_names: Sequence[str]) -> np.ndarray:
    """float32[B, 2, D] for a batch of (possibly mixed) class names."""
    return np.stack([self(name) for name in class_names])

  def put(self, class_name: str, features: np.ndarray) -> None:
    """Seeds the cache (e.g. features saved with a prompt set)."""
    self._cache[class_name] = np.asarray(features, np.float32)

  def __contains__(self, class_name: str) -> bool:
    return class_name in self._cache
