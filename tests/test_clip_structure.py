"""Param-tree structure without allocation, logical axes, tokenizer."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from conftest import require_shared
from moeclip_jax.models import clip
from moeclip_jax.models import clip_config
from moeclip_jax.models import tokenize
from moeclip_jax.sharding import rules


def test_vitl14_at_518_builds_abstractly():
  config = clip_config.get_config("ViT-L-14-336", image_size=518)
  abstract = clip.abstract_params(config)  # no allocation: shapes only
  leaves = jax.tree.leaves(nn.unbox(abstract))
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
  img = nn.unbox(abstract)["img"]
  assert img["positional_embedding"].shape == (37 * 37 + 1, 1024)
  assert img["conv1"]["kernel"].shape == (14, 14, 3, 1024)
  assert img["blocks_23"]["attn"]["query"]["kernel"].shape == (1024, 16, 64)
  total = sum(int(np.prod(x.shape)) for x in leaves)
  # OpenAI ViT-L/14@336 has 427.9 M parameters; the 518 px table adds 0.81 M.
  assert 428.0e6 < total < 429.5e6


@pytest.mark.parametrize("name", sorted(clip_config.VARIANTS))
def test_every_param_has_known_logical_axes(name):
  abstract = clip.abstract_params(clip_config.get_config(name))
  boxed = jax.tree.leaves(
      abstract, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert boxed and all(isinstance(b, nn.LogicallyPartitioned) for b in boxed)
  for box in boxed:
    assert len(box.names) == len(box.value.shape)
    assert set(n for n in box.names if n) <= set(rules.LOGICAL_AXES)


def test_unknown_variant_lists_known_names():
  with pytest.raises(ValueError, match="ViT-B-16-plus-240"):
    clip_config.get_config("ViT-X-1")


def test_config_rejects_bad_values():
  with pytest.raises(ValueError, match="activation"):
    clip_config.get_config("tiny-test", activation="relu")
  with pytest.raises(ValueError, match="multiple of patch_size"):
    clip_config.get_config("tiny-test", image_size=30)


def test_wrong_image_size_is_a_clear_error():
  config = clip_config.get_config("tiny-test")
  params = clip.init_params(config, jax.random.key(0))
  module = clip.CLIP(config)
  with pytest.raises(ValueError, match=r"\[B, 32, 32, 3\]"):
    module.apply({"params": params}, np.zeros((1, 48, 48, 3), np.float32),
                 method=module.encode_image)


def test_packaged_tokenizer_reproduces_reference_ids():
  tok = tokenize.load_tokenizer()
  ids = tokenize.tokenize(tok, ["a photo of a damaged solar cell."])
  expected = [49406, 320, 1125, 539, 320, 13568, 5199, 5533, 269, 49407]
  assert ids.shape == (1, 77) and ids.dtype == np.int32
  assert ids[0, :10].tolist() == expected and not ids[0, 10:].any()


def test_packaged_vocab_equals_shared_copy():
  shared = require_shared("clip_tokenizer")
  pkg = tokenize.packaged_tokenizer_dir()
  for f in tokenize.TOKENIZER_FILES:
    assert (pkg / f).read_bytes() == (shared / f).read_bytes()


def test_long_text_truncated_with_eot_last():
  tok = tokenize.load_tokenizer()
  ids = tokenize.tokenize(tok, ["word " * 100], context_length=77)
  assert ids[0, -1] == tokenize.EOT_ID and ids[0, 0] == tokenize.SOT_ID
