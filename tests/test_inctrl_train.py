"""InCTRL training recipe: optimizer defaults and a learning test.

Learning test (slow), through the generic loop: auxiliary classes "alpha"
and "beta" (generated product images with noise and random shifts,
procedural colour/blob defects) train the heads; the held-out class "gamma"
(`data.holdout_classes`) is scored against K = 2 prompts drawn once from its
train/good normals, before and after 60 steps.

What is asserted: the held-out AUROC of the trained head's score s_h rises
above its untrained value, and the loss falls. On a random tiny backbone the
training-free patch residual s_p is already strong (image AUROC ~0.87 here)
and the final score (s_h + s_p) / 2 does not improve on it (0.87 -> ~0.77
after 60 steps, back to ~0.87 after 200), so the final score's held-out
AUROC (the generic evaluator's `image_auroc`) is reported in the assertion
message, not asserted.
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np
import pytest
from PIL import Image

from test_inctrl_generic_train import tiny_config
from moeclip_jax.data import synthetic
from moeclip_jax.methods.inctrl import fewshot
from moeclip_jax.methods.inctrl import model as model_lib
from moeclip_jax.optim import masks
from moeclip_jax.optim import optimizers
from moeclip_jax.train import evaluator
from moeclip_jax.train import loop

SIZE = 64


def test_optimizer_is_torch_adamw(tmp_path):
  optim = tiny_config(tmp_path).optim
  assert (optim.name, optim.lr, optim.b1, optim.b2, optim.eps) == (
      "adamw", 1e-3, 0.9, 0.999, 1e-8)
  params = {"w": np.ones(3, np.float32), "f": np.ones(3, np.float32),
            "s": np.ones(3, np.float32)}
  labels = {"w": masks.TRAINABLE, "f": masks.FROZEN, "s": masks.STATE}
  tx = optimizers.make_tx(optim, labels)
  zeros = jax.tree.map(np.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  # Zero gradient: only decoupled weight decay, lr * 0.01 * w (torch's
  # default decay; optax's adamw default would give 1e-4).
  np.testing.assert_allclose(np.asarray(updates["w"]), -1e-3 * 0.01,
                             rtol=1e-6)
  assert not np.any(updates["f"]) and not np.any(updates["s"])


def _write_class(root: pathlib.Path, name: str, seed: int, n: int) -> None:
  """n normals (half train/good, half test/good) and n colour/blob defects."""
  rng = np.random.default_rng(seed)
  base = synthetic.base_image((SIZE, SIZE), seed).astype(np.float32)

  def save(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)

  for i in range(n):
    img = np.roll(base, tuple(rng.integers(-6, 7, 2)), (0, 1))
    img = np.clip(img + rng.normal(0, 40, img.shape), 0, 255).astype(np.uint8)
    split = "train" if i < n // 2 else "test"
    save(root / name / split / "good" / f"{i:03d}.png", img)
    bad, mask, _ = synthetic.apply(img, rng, kinds=("colour", "blob"))
    save(root / name / "test" / "defect" / f"{i:03d}.png", bad)
    save(root / name / "ground_truth" / "defect" / f"{i:03d}_mask.png", mask)


def _holistic_auroc(run) -> float:
  """Held-out image AUROC of the trained head's score s_h."""
  method, params = run.method, run.state.params
  towers = {k: params["params"][k] for k in ("img", "txt")}
  scores, labels = [], []
  for batch in run.data.holdout_loader():
    valid = np.asarray(batch["valid"], bool)
    query = method.module.apply({"params": towers}, batch["image"],
                                method=model_lib.InCTRL.encode_images)
    ids = batch["class_id"]
    prompts = jax.tree.map(lambda x: x[ids], run.context["prompts"])
    _, aux = method.module.apply(params, query, prompts,
                                 run.context["text"][ids],
                                 method=model_lib.InCTRL.score_features)
    scores.append(np.asarray(aux["holistic_score"])[valid])
    labels.append(np.asarray(batch["label"])[valid])
  return fewshot.image_metrics(np.concatenate(scores),
                               np.concatenate(labels))["auroc"]


@pytest.mark.slow
def test_training_raises_heldout_auroc(tmp_path):
  root = tmp_path / "aux"
  for name, seed in (("alpha", 1), ("beta", 2), ("gamma", 3)):
    _write_class(root, name, seed, 16)
  config = tiny_config(root, total_steps=60, log_every=1, ckpt_every=60,
                       **{"backbone.image_size": SIZE,
                          "data.holdout_classes": ("gamma",)})
  run = loop.setup(config, tmp_path / "run")
  loop.build_state(run)
  run.data = loop.make_data(run)
  run.context = run.method.make_context(run.state.params,
                                        run.data.class_names)
  loop.restore(run)
  final_before = evaluator.evaluate_holdout(run, 0)["mean"]["image_auroc"]
  before = _holistic_auroc(run)
  loop.loop(run)
  run.manager.wait_until_finished()
  final_after = evaluator.evaluate_holdout(run, 60)["mean"]["image_auroc"]
  after = _holistic_auroc(run)
  losses = [h["loss"] for h in run.history if "loss" in h]
  note = dict(s_h=(before, after), final=(final_before, final_after))
  assert np.mean(losses[-10:]) < np.mean(losses[:10]), (note, losses)
  assert after > before + 0.05, note
  assert {r.class_name for r in run.data.holdout} == {"gamma"}
  assert "gamma" not in run.data.normals
