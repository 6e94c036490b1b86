"""InCTRL post-backbone parity with the official forward (golden fixture).

Inputs are the stored backbone outputs (layer tokens, pooled embeddings, text
embeddings) and the spec's head weights; every stored stage after the
backbone is compared within tolerances.json.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import inctrl_golden_utils as G
from moeclip_jax.convert import inctrl_official
from moeclip_jax.methods.inctrl import losses
from moeclip_jax.methods.inctrl import model as M
from moeclip_jax.methods.inctrl import prompts

pytestmark = pytest.mark.golden

STAGES = (
    "patch_residual_maps", "patch_map", "patch_score", "adapter_query",
    "adapter_prompts", "adapter_prototype", "image_residual",
    "image_residual_score", "text_probs", "text_score", "holistic_map",
    "diff_head_projection1", "diff_head_bn3", "holistic_score", "final_score",
)


@pytest.fixture(scope="module")
def golden(golden_dir):
  z = G.fixture(golden_dir)
  state = G.spec_tensors(golden_dir, G.is_head_key)
  variables = inctrl_official.head_variables_from_state_dict(
      state, source_name="golden spec")
  return z, G.tolerances(golden_dir), variables, state


@pytest.fixture(scope="module")
def outputs(golden):
  z, _, variables, _ = golden
  query, shared, text = G.golden_features(z)
  _, aux = M.InCTRL(clip_config=None).apply(
      variables, query, shared, text, method=M.InCTRL.score_features)
  return aux


@pytest.mark.parametrize("stage", STAGES)
def test_stage_matches_official(golden, outputs, stage):
  z, tol, _, _ = golden
  actual = np.asarray(outputs[stage])
  if stage == "patch_residual_maps":
    actual = actual[0]  # [L, P]
  G.assert_close(stage, actual, z[stage], tol)


def test_text_features_from_stored_embeddings(golden):
  z, tol, _, _ = golden
  feats = M.class_text_features(
      jnp.asarray(z["text_embeddings_normal"]),
      jnp.asarray(z["text_embeddings_anomaly"]))
  G.assert_close("text_features", feats, z["text_features"], tol)


@pytest.mark.parametrize("label", [1, 0])
def test_loss_matches_official(golden, outputs, label):
  z, tol, _, _ = golden
  y = jnp.full((1,), label)
  loss = losses.inctrl_loss(
      outputs["final_score"], outputs["image_residual_score"], y)
  G.assert_close(f"loss_label{label}", loss, z[f"loss_label{label}"], tol)


def test_prompt_sentences_match_official(golden):
  z = golden[0]
  normal, anomaly = prompts.get_texts(str(z["class_name"]))
  assert normal == [str(s) for s in z["prompt_sentences_normal"]]
  assert anomaly == [str(s) for s in z["prompt_sentences_anomaly"]]


def test_batch_of_one_equals_official_layout(golden):
  z, _, variables, _ = golden
  query, shared, text = G.golden_features(z)
  a, _ = M.InCTRL(official_batch_layout=True).apply(
      variables, query, shared, text, method=M.InCTRL.score_features)
  b, _ = M.InCTRL().apply(
      variables, query, shared, text, method=M.InCTRL.score_features)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_head_state_dict_round_trip(golden):
  _, _, variables, state = golden
  back = inctrl_official.head_variables_to_state_dict(variables)
  assert sorted(back) == sorted(state)
  for key, value in state.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)
