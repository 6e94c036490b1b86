"""InCTRL end-to-end parity from pixels, through the shared CLIP towers.

Weights: the whole spec (0.8 GB, generated in memory with make_weights) ->
`convert.inctrl_official.state_dict_to_variables` (the converter's mapping
table, coverage-checked) -> `InCTRL`. The default test runs the vision tower
on the 3 stored images and a slice of the prompts through the text tower;
the slow test encodes all 242 prompts and checks the whole pipeline with the
per-class text cache.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import inctrl_golden_utils as G
from moeclip_jax.convert import inctrl_official
from moeclip_jax.methods.inctrl import detector
from moeclip_jax.methods.inctrl import model as M
from moeclip_jax.methods.inctrl import text as inctrl_text
from moeclip_jax.models import clip_config
from moeclip_jax.models import tokenize

pytestmark = pytest.mark.golden

SCORE_STAGES = (
    "patch_residual_maps", "patch_map", "patch_score", "adapter_query",
    "adapter_prompts", "image_residual", "image_residual_score", "text_probs",
    "holistic_map", "diff_head_bn3", "holistic_score", "final_score",
)


@pytest.fixture(scope="module")
def setup(golden_dir):
  z = G.fixture(golden_dir)
  state = G.spec_tensors(golden_dir, lambda name: True)
  config = clip_config.get_config("ViT-B-16-plus-240")
  variables = inctrl_official.state_dict_to_variables(
      state, config, source_name="golden spec")
  del state
  model = M.InCTRL(clip_config=config)
  return z, G.tolerances(golden_dir), model, variables


@pytest.fixture(scope="module")
def image_features(setup):
  z, _, model, variables = setup
  pixels = z["images"].transpose(0, 2, 3, 1)  # [3, 240, 240, 3] NHWC
  return model.apply(variables, pixels, method=M.InCTRL.encode_images)


def test_backbone_features(setup, image_features):
  z, tol, _, _ = setup
  tokens = np.asarray(image_features["layer_tokens"])  # [3, L, T, W]
  pooled = np.asarray(image_features["pooled"])
  G.assert_close("query_layer_tokens", tokens[:1].transpose(1, 0, 2, 3),
                 z["query_layer_tokens"], tol)
  G.assert_close("prompt_layer_tokens", tokens[1:].transpose(1, 0, 2, 3),
                 z["prompt_layer_tokens"], tol)
  G.assert_close("query_pooled", pooled[:1], z["query_pooled"], tol)
  G.assert_close("prompt_pooled", pooled[1:], z["prompt_pooled"], tol)


def test_scores_from_backbone_features(setup, image_features):
  z, tol, model, variables = setup
  query = {k: v[:1] for k, v in image_features.items()}
  prompts = {k: v[1:] for k, v in image_features.items()}
  _, aux = model.apply(variables, query, prompts, z["text_features"],
                       method=M.InCTRL.score_features)
  for stage in SCORE_STAGES:
    actual = np.asarray(aux[stage])
    G.assert_close(stage, actual[0] if stage == "patch_residual_maps"
                   else actual, z[stage], tol)


def test_text_tower_on_a_slice_of_prompts(setup):
  z, tol, model, variables = setup
  ids = np.concatenate([z["token_ids_normal"][:4], z["token_ids_anomaly"][:4]])
  emb = np.asarray(model.apply(variables, ids, method=M.InCTRL.encode_text))
  expected = np.concatenate([z["text_embeddings_normal"][:4],
                             z["text_embeddings_anomaly"][:4]])
  G.assert_close("text_embeddings_normal", emb, expected, tol)


def test_prompt_token_ids_match_official(setup):
  z = setup[0]
  cache = inctrl_text.TextFeatureCache(None, tokenize.load_tokenizer())
  ids_n, ids_a = cache.token_ids(str(z["class_name"]))
  np.testing.assert_array_equal(ids_n, z["token_ids_normal"])
  np.testing.assert_array_equal(ids_a, z["token_ids_anomaly"])


@pytest.mark.slow
def test_full_pipeline_with_cached_text(setup):
  """Pixels + class name -> final score; the text tower runs once."""
  z, tol, model, variables = setup
  cache = inctrl_text.TextFeatureCache.from_model(
      model, variables["params"], tokenize.load_tokenizer())
  feats = cache(str(z["class_name"]))
  G.assert_close("text_features", feats, z["text_features"], tol)
  pixels = z["images"].transpose(0, 2, 3, 1)
  score, aux = jax.jit(model.apply)(variables, pixels[:1], pixels[1:],
                                    cache.batch([str(z["class_name"])] * 1))
  G.assert_close("final_score", score, z["final_score"], tol)
  G.assert_close("text_score", aux["text_score"], z["text_score"], tol)
  cache(str(z["class_name"]))
  assert cache.encode_calls == 1


@pytest.mark.slow
def test_converted_spec_file_through_the_detector(golden_dir, tmp_path):
  """make_weights file (.safetensors) -> convert -> detector -> final score."""
  mw = G.load_make_weights(golden_dir)
  src = tmp_path / "inctrl_img240.safetensors"
  assert mw.main([str(golden_dir / G.SPEC), str(src)]) == 0
  out = inctrl_official.convert_inctrl_official(src, tmp_path / "ckpt")
  src.unlink()
  det = detector.load(out)
  assert det.model.feature_layers == (6, 8, 10)
  z, tol = G.fixture(golden_dir), G.tolerances(golden_dir)
  pixels = z["images"].transpose(0, 2, 3, 1)
  det.set_prompts(pixels[1:])
  result = det.predict(pixels[:1], str(z["class_name"]))
  G.assert_close("final_score", result["image_score"], z["final_score"], tol)
  assert result["anomaly_map"].shape == (1, 240, 240)
  # uint8 input goes through the official preprocessing (identity at 240).
  det.set_prompts(z["images_uint8"][1:])
  again = det.predict(z["images_uint8"][:1], str(z["class_name"]))
  G.assert_close("final_score", again["image_score"], z["final_score"], tol)
