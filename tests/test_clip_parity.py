"""Flax CLIP vs transformers.CLIPModel (random weights), every layer."""

import numpy as np
import pytest

import clip_oracle
from moeclip_jax.convert import clip_cli
from moeclip_jax.models import clip
from moeclip_jax.checkpoint import backbones

pytestmark = pytest.mark.needs_torch
ATOL = 1e-4


def _convert(tmp_path, model, **kwargs):
  model.save_pretrained(tmp_path / "hf", safe_serialization=True)
  clip_cli.convert_hf_clip(tmp_path / "hf", tmp_path / "ck", **kwargs)
  return backbones.load_clip(tmp_path / "ck")


def _compare(module, params, model, image_size, n_vis, n_txt, seed=0):
  rng = np.random.default_rng(seed)
  pixels = rng.standard_normal((2, image_size, image_size, 3)).astype(np.float32)
  ids = clip_oracle.random_ids(3, seed)
  ref = clip_oracle.hf_outputs(model, pixels, ids)
  img = module.apply({"params": params}, pixels, layers=range(n_vis),
                     method=module.encode_image)
  txt = module.apply({"params": params}, ids.astype(np.int32),
                     layers=range(n_txt), method=module.encode_text)
  np.testing.assert_allclose(img["pooled"], ref["image_embeds"], atol=ATOL)
  np.testing.assert_allclose(txt["pooled"], ref["text_embeds"], atol=ATOL)
  np.testing.assert_allclose(txt["tokens"], ref["text_last"], atol=ATOL)
  for i in range(n_vis):
    np.testing.assert_allclose(img["hidden"][i], ref["vision_hidden"][i],
                               atol=ATOL, err_msg=f"vision block {i}")
  for i in range(n_txt):
    np.testing.assert_allclose(txt["hidden"][i], ref["text_hidden"][i],
                               atol=ATOL, err_msg=f"text block {i}")


@pytest.mark.parametrize("activation", ["quick_gelu", "gelu", "gelu_tanh"])
def test_tiny_parity_each_activation(tmp_path, activation):
  model = clip_oracle.make_hf_clip(activation, seed=1)
  module, params, config, _ = _convert(tmp_path, model)
  assert config.activation == activation
  _compare(module, params, model, 32, 3, 2)


def test_parity_other_shape(tmp_path):
  """Non-square-friendly sizes: patch 4, 5x5 grid, 3 heads, 1 text layer."""
  model = clip_oracle.make_hf_clip(
      "gelu", seed=2, image_size=20, patch=4, vision_width=48,
      vision_layers=2, vision_heads=3, text_width=48, text_layers=1,
      text_heads=6, proj=16)
  module, params, _, _ = _convert(tmp_path, model)
  _compare(module, params, model, 20, 2, 1, seed=3)


def test_activation_override_changes_numerics(tmp_path):
  model = clip_oracle.make_hf_clip("quick_gelu", seed=4)
  model.save_pretrained(tmp_path / "hf", safe_serialization=True)
  clip_cli.convert_hf_clip(tmp_path / "hf", tmp_path / "ck", activation="gelu")
  module, params, config, _ = backbones.load_clip(tmp_path / "ck")
  assert config.activation == "gelu"
  pixels = np.ones((1, 32, 32, 3), np.float32)
  ours = module.apply({"params": params}, pixels, method=module.encode_image)
  ref = clip_oracle.hf_outputs(model, pixels, clip_oracle.random_ids(1))
  assert np.abs(ours["pooled"] - ref["image_embeds"]).max() > 1e-4


def test_bfloat16_compute_close_to_float32(tmp_path):
  model = clip_oracle.make_hf_clip("quick_gelu", seed=5)
  module, params, _, _ = _convert(tmp_path, model)
  module16, _, _, _ = backbones.load_clip(tmp_path / "ck", dtype="bfloat16")
  pixels = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
  f32 = module.apply({"params": params}, pixels, method=module.encode_image)
  b16 = module16.apply({"params": params}, pixels, method=module16.encode_image)
  assert b16["tokens"].dtype.name == "bfloat16"
  ref = np.asarray(f32["pooled"])
  err = np.abs(np.asarray(b16["pooled"], np.float32) - ref).max()
  assert err < 0.05 * np.abs(ref).max()


@pytest.mark.slow
def test_full_vitl14_336_parity(tmp_path):
  """The real ViT-L/14-336 shape (random weights), all 24 + 12 layers."""
  model = clip_oracle.make_hf_clip(
      "quick_gelu", seed=7, image_size=336, patch=14, vision_width=1024,
      vision_layers=24, vision_heads=16, text_width=768, text_layers=12,
      text_heads=12, proj=768)
  module, params, config, _ = _convert(tmp_path, model)
  assert config.vision.grid == 24
  _compare(module, params, model, 336, 24, 12)
