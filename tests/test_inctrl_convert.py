"""`convert inctrl-official` on a tiny random InCTRL in the official layout.

The official-format state dict is written from random variables (backbone
through the test-side OpenCLIP writer, heads through the inverse head table),
saved as a torch `.pyth` with a `model_state` wrapper or as `.safetensors`,
converted, loaded and compared (weights and scores).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

import inctrl_golden_utils as G
import openclip_layout

from moeclip_jax.convert import common
from moeclip_jax.convert import inctrl_official
from moeclip_jax.methods.inctrl import detector

LAYERS = (1, 2, 3)


@pytest.fixture(scope="module")
def tiny():
  model, variables = G.tiny_inctrl(32, LAYERS)
  config = model.clip_config
  # Non-trivial running statistics.
  variables["batch_stats"] = jax.tree.map(
      lambda x: x + jnp.linspace(0.1, 0.5, x.shape[0]),
      variables["batch_stats"])
  params = jax.tree.map(np.asarray, variables["params"])
  backbone = openclip_layout.params_to_openclip(
      {**params, "logit_scale": np.float32(4.6)})
  backbone.pop("logit_scale")
  heads = inctrl_official.head_variables_to_state_dict(variables)
  return config, model, variables, backbone, heads


def _save(state, path):
  if path.suffix == ".safetensors":
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()},
              str(path))
    return
  torch = pytest.importorskip("torch")
  torch.save({"model_state": {k: torch.from_numpy(np.array(v))
                              for k, v in state.items()}}, str(path))


def _assert_same_tree(a, b):
  fa, fb = common.flatten(a), common.flatten(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]),
                                  err_msg=k)


def _scores(model, variables, seed=0):
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((3, 32, 32, 3)).astype(np.float32)
  p = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
  t = rng.standard_normal((2, 32)).astype(np.float32)
  t /= np.linalg.norm(t, axis=-1, keepdims=True)
  return np.asarray(model.apply(variables, q, p, t)[0])


@pytest.mark.parametrize("suffix", [".pyth", ".safetensors"])
def test_convert_load_round_trip(tiny, tmp_path, suffix):
  config, model, variables, backbone, heads = tiny
  src = tmp_path / f"checkpoint{suffix}"
  _save({**backbone, **heads}, src)
  out = inctrl_official.convert_inctrl_official(
      src, tmp_path / "ckpt", model="tiny-test", feature_layers=LAYERS)
  loaded_model, loaded = detector.load_variables(out)
  assert loaded_model.feature_layers == LAYERS
  assert loaded_model.clip_config.vision == config.vision
  _assert_same_tree(loaded, variables)
  np.testing.assert_array_equal(_scores(loaded_model, loaded),
                                _scores(model, variables))


def test_heads_only_checkpoint_with_clip_flag(tiny, tmp_path):
  _, _, variables, backbone, heads = tiny
  _save(heads, tmp_path / "heads.safetensors")
  _save({**backbone, "logit_scale": np.float32(4.6)},
        tmp_path / "clip.safetensors")
  with pytest.raises(common.ConversionError, match="--clip"):
    inctrl_official.convert_inctrl_official(
        tmp_path / "heads.safetensors", tmp_path / "a", model="tiny-test",
        feature_layers=LAYERS)
  parser = argparse.ArgumentParser()
  inctrl_official.register(parser.add_subparsers(dest="verb"))
  args = parser.parse_args([
      "inctrl-official", "--checkpoint", str(tmp_path / "heads.safetensors"),
      "--clip", str(tmp_path / "clip.safetensors"), "--dst",
      str(tmp_path / "b"), "--model", "tiny-test", "--feature-layers", "1,2,3"])
  _, loaded = detector.load_variables(args.func(args))
  _assert_same_tree(loaded, variables)


@pytest.mark.parametrize("edit, message", [
    ("drop", "missing key diff_head.bn2.running_var"),
    ("extra", "unused key diff_head.bn4.weight"),
    ("shape", "shape mismatch adapter.fc.0.weight"),
])
def test_coverage_errors_name_the_key(tiny, edit, message):
  config, _, _, backbone, heads = tiny
  state = {**backbone, **heads}
  if edit == "drop":
    del state["diff_head.bn2.running_var"]
  elif edit == "extra":
    state["diff_head.bn4.weight"] = np.ones(3, np.float32)
  else:
    state["adapter.fc.0.weight"] = np.ones((3, 32), np.float32)
  with pytest.raises(common.ConversionError, match=message):
    inctrl_official.state_dict_to_variables(state, config)


def test_golden_spec_heads_cover_every_head_key(golden_dir):
  state = G.spec_tensors(golden_dir, G.is_head_key)
  variables = inctrl_official.head_variables_from_state_dict(state)
  count = sum(np.size(v) for v in jax.tree.leaves(variables["params"]))
  assert count == 334_916  # the official trainable count (spec A2)
