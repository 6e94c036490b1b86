"""Helpers for the InCTRL golden tests: fixture, tolerances, spec weights.

Weights are generated tensor by tensor with the fixture's own
`make_weights.make_tensor`, so a test can build only what it needs (the
heads: 0.3 M values) instead of the 0.8 GB file.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import pathlib

import jax
import numpy as np

from moeclip_jax.methods.inctrl import model as inctrl_model
from moeclip_jax.models import clip_config

FIXTURE = "inctrl_vitb16plus_img240_k2.npz"
SPEC = "inctrl_vitb16plus_img240_k2_spec.json"


def load_make_weights(golden_dir: pathlib.Path):
  """Imports shared/golden/make_weights.py as a module."""
  spec = importlib.util.spec_from_file_location(
      "golden_make_weights", golden_dir / "make_weights.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def fixture(golden_dir: pathlib.Path) -> dict[str, np.ndarray]:
  with np.load(golden_dir / FIXTURE) as z:
    return {k: z[k] for k in z.files}


def tolerances(golden_dir: pathlib.Path) -> dict[str, dict]:
  return json.loads((golden_dir / "tolerances.json").read_text())[FIXTURE]


def spec_tensors(golden_dir: pathlib.Path, select) -> dict[str, np.ndarray]:
  """Generates the spec tensors whose names satisfy `select(name)`."""
  spec = json.loads((golden_dir / SPEC).read_text())
  mw = load_make_weights(golden_dir)
  return {
      e["name"]: mw.make_tensor(spec["global_seed"], e)
      for e in spec["tensors"]
      if select(e["name"])
  }


def is_head_key(name: str) -> bool:
  return name.startswith(("adapter.", "diff_head.", "diff_head_ref."))


def assert_close(name, actual, expected, tol) -> None:
  """Max |diff| within the fixture's atol for `name`."""
  actual = np.asarray(actual, np.float64).reshape(np.shape(expected))
  diff = float(np.max(np.abs(actual - np.asarray(expected, np.float64))))
  atol = tol[name]["atol"]
  assert diff <= atol, f"{name}: max |diff| {diff:.3g} > atol {atol:g}"


def golden_features(z: dict) -> tuple[dict, dict, np.ndarray]:
  """Stored backbone outputs in the model's layout.

  Returns:
    (query dict(layer_tokens [1, L, T, W], pooled [1, D]),
     prompts dict(layer_tokens [K, L, T, W], pooled [K, D]) shared,
     text_features [2, D]).
  """
  query = {
      "layer_tokens": z["query_layer_tokens"].transpose(1, 0, 2, 3),
      "pooled": z["query_pooled"],
  }
  prompts = {
      "layer_tokens": z["prompt_layer_tokens"].transpose(1, 0, 2, 3),
      "pooled": z["prompt_pooled"],
  }
  return query, prompts, z["text_features"]


@functools.lru_cache(maxsize=None)
def _tiny_inctrl_cached(image_size: int, layers: tuple[int, ...], seed: int):
  config = clip_config.get_config("tiny-test", image_size=image_size)
  model = inctrl_model.InCTRL(clip_config=config, feature_layers=layers)
  return model, inctrl_model.init_variables(model, jax.random.key(seed))


def tiny_inctrl(image_size: int = 32, layers=(1, 2, 3), seed: int = 0):
  """(InCTRL, variables) on the random `tiny-test` CLIP, built once per run.

  The variables are shared between callers: copy before mutating.
  """
  model, variables = _tiny_inctrl_cached(image_size, tuple(layers), seed)
  return model, jax.tree.map(lambda x: x, variables)


REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
