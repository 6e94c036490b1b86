"""InCTRL training: a tiny config learns on synthetic defects.

Auxiliary classes "alpha" and "beta" (generated product images with noise and
random shifts, procedural colour/blob defects) train the heads; the held-out
class "gamma" is scored with K = 2 normal prompts before and after training.

What is asserted: the held-out AUROC of the trained head's score s_h rises
above its untrained value. On a random tiny backbone the training-free patch
residual s_p is already strong (AUROC ~0.8 here) and the final score
(s_h + s_p) / 2 moves either way by a few points, so it is reported in the
assertion message, not asserted.
"""

from __future__ import annotations

import importlib.util

import jax
import numpy as np
import pytest

import inctrl_golden_utils as G

from moeclip_jax.data import synthetic
from moeclip_jax.data import transforms
from moeclip_jax.methods.inctrl import detector
from moeclip_jax.methods.inctrl import fewshot
from moeclip_jax.methods.inctrl import model as M
from moeclip_jax.methods.inctrl import text as inctrl_text
from moeclip_jax.methods.inctrl import train
from moeclip_jax.methods.inctrl import train_main
from moeclip_jax.models import clip_config
from moeclip_jax.models import tokenize

SIZE = 64
CFG = transforms.get_preprocess({"preset": "inctrl", "size": SIZE,
                                 "crop": SIZE})


def _class_images(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
  """n normal and n anomalous normalised images of one synthetic class."""
  rng = np.random.default_rng(seed)
  base = synthetic.base_image((SIZE, SIZE), seed).astype(np.float32)
  normals, anomalies = [], []
  for _ in range(n):
    img = np.roll(base, tuple(rng.integers(-6, 7, 2)), (0, 1))
    img = np.clip(img + rng.normal(0, 40, img.shape), 0, 255).astype(np.uint8)
    normals.append(transforms.normalize(img, CFG))
    bad, _, _ = synthetic.apply(img, rng, kinds=("colour", "blob"))
    anomalies.append(transforms.normalize(bad, CFG))
  return np.stack(normals), np.stack(anomalies)


@pytest.fixture(scope="module")
def setup():
  config = clip_config.get_config("tiny-test", image_size=SIZE)
  model = M.InCTRL(clip_config=config, feature_layers=(1, 2, 3))
  variables = M.init_variables(model, jax.random.key(0), shots=2)
  data = {name: _class_images(seed, 16)
          for name, seed in (("alpha", 1), ("beta", 2), ("gamma", 3))}
  cache = inctrl_text.TextFeatureCache.from_model(
      model, variables["params"], tokenize.load_tokenizer())
  return model, variables, data, cache


def _heldout_auroc(model, variables, data, cache) -> dict[str, float]:
  """Held-out AUROC of the final score and of the trained head's s_h."""
  normals, anomalies = data["gamma"]
  prompts = normals[:2]
  queries = np.concatenate([normals[2:], anomalies[2:]])
  labels = np.array([0] * (len(normals) - 2) + [1] * (len(anomalies) - 2))
  score, aux = jax.jit(model.apply)(variables, queries, prompts,
                                    cache("gamma"))
  return {k: fewshot.image_metrics(np.asarray(v), labels)["auroc"]
          for k, v in (("final", score), ("s_h", aux["holistic_score"]))}


@pytest.mark.slow
def test_training_raises_heldout_auroc(setup):
  model, variables, data, cache = setup
  before = _heldout_auroc(model, variables, data, cache)
  sampler = train.EpisodeSampler(
      normals={c: data[c][0] for c in ("alpha", "beta")},
      anomalies={c: data[c][1] for c in ("alpha", "beta")},
      shots=2, per_label=4, seed=10)
  trained, history = train.fit(model, variables, sampler, cache, steps=60,
                               log_every=20)
  after = _heldout_auroc(model, trained, data, cache)
  assert history[-1]["loss"] < history[0]["loss"], history
  assert after["s_h"] > before["s_h"] + 0.05, (before, after, history)
  # The towers are untouched; BN running statistics moved.
  np.testing.assert_array_equal(
      trained["params"]["img"]["conv1"]["kernel"],
      variables["params"]["img"]["conv1"]["kernel"])
  assert not np.allclose(trained["batch_stats"]["diff_head"]["bn2"]["mean"],
                         variables["batch_stats"]["diff_head"]["bn2"]["mean"])
  # bn1 is unused, so its statistics never move.
  np.testing.assert_array_equal(
      trained["batch_stats"]["diff_head"]["bn1"]["var"],
      variables["batch_stats"]["diff_head"]["bn1"]["var"])


def test_optimizer_is_torch_adamw():
  tx = train.make_optimizer()
  params = {"w": np.ones(3, np.float32)}
  state = tx.init(params)
  grads = {"w": np.zeros(3, np.float32)}
  updates, _ = tx.update(grads, state, params)
  # Zero gradient: only decoupled weight decay, lr * 0.01 * w.
  np.testing.assert_allclose(np.asarray(updates["w"]), -1e-3 * 0.01, rtol=1e-6)


def test_sampler_balances_and_pairs_classes():
  normals = {"a": np.zeros((5, 2)), "b": np.ones((5, 2))}
  anomalies = {"a": np.zeros((3, 2)) + 10, "b": np.ones((3, 2)) + 10}
  sampler = train.EpisodeSampler(normals, anomalies, shots=3, per_label=4)
  for _ in range(3):
    batch, names = sampler.sample()
    assert batch["label"].tolist() == [0] * 4 + [1] * 4
    assert batch["prompts"].shape == (8, 3, 2)
    for prompts, name in zip(batch["prompts"], names):
      assert np.all(prompts == (0.0 if name == "a" else 1.0))


@pytest.mark.slow
def test_train_main_writes_loadable_checkpoints(tmp_path):
  synthetic.write_mvtec_tree(str(tmp_path / "aux"), ("widget", "gadget"),
                             n_train=4, n_good=2, n_bad=4, size=(48, 48))
  path = G.REPO_ROOT / "configs" / "inctrl_vitb16p_240.py"
  spec = importlib.util.spec_from_file_location("inctrl_cfg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.backbone.variant, c.backbone.image_size = "tiny-test", 32
  c.model.feature_layers = (1, 2, 3)
  c.data.root, c.data.per_label = str(tmp_path / "aux"), 2
  c.epochs, c.steps_per_epoch, c.log_every = 2, 2, 1
  history = train_main.train(c, str(tmp_path / "run"))
  assert len(history) == 4 and all(np.isfinite(h["loss"]) for h in history)
  model, variables = detector.load_variables(tmp_path / "run" / "checkpoint_2")
  assert model.feature_layers == (1, 2, 3)
  assert set(variables) == {"params", "batch_stats"}
