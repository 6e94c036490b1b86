"""The generic trainer on a tiny MoECLIP: labels, freezing, resume, learning."""

import jax
import numpy as np
import pytest

import train_fixtures as tf
from moeclip_jax.optim import masks
from moeclip_jax.train import data as data_lib
from moeclip_jax.train import evaluator
from moeclip_jax.train import loop
from moeclip_jax.utils import tree as tree_utils


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return tf.synthetic_mvtec(tmp_path_factory.mktemp("syn") / "mvtec")


def _built(config, workdir):
  run = loop.setup(config, workdir)
  loop.build_state(run)
  run.data = data_lib.TrainData(config, run.method,
                                loop.data_parallel_per_process(run.mesh))
  run.context = run.method.make_context(run.state.params, run.data.class_names)
  return run


def test_every_parameter_label(tmp_path, data_root):
  run = _built(tf.tiny_config(data_root), tmp_path)
  table = masks.label_table(run.state.params, run.method.trainable_patterns,
                            run.method.frozen_patterns)
  trainable = sorted(p for p, label, _ in table if label == masks.TRAINABLE)
  frozen = [p for p, label, _ in table if label == masks.FROZEN]
  assert trainable == [
      "det_proj/depthwise", "det_proj/ln/bias", "det_proj/ln/scale",
      "det_proj/pointwise", "moe_0/lora_b", "moe_0/router/kernel",
      "moe_1/lora_b", "moe_1/router/kernel", "seg_proj_0/kernel",
      "seg_proj_1/kernel", "text_adapter/fc/kernel"]
  assert "moe_0/fofs_a" in frozen and "moe_1/fofs_a" in frozen
  assert all(p.startswith(("img/", "txt/", "moe_")) for p in frozen)


def test_frozen_bit_identical_and_no_moments(tmp_path, data_root):
  config = tf.tiny_config(data_root, total_steps=3, ckpt_every=3, log_every=1)
  run = _built(config, tmp_path)
  before = {n: np.array(v) for n, v in
            tree_utils.flatten_with_names(run.state.params)}
  loop.restore(run)
  loop.loop(run)
  labels = dict(tree_utils.flatten_with_names(run.labels))
  after = dict(tree_utils.flatten_with_names(run.state.params))
  for name, value in before.items():
    if labels[name] == masks.FROZEN:
      np.testing.assert_array_equal(np.asarray(after[name]), value, err_msg=name)
  changed = [n for n, v in before.items() if labels[n] == masks.TRAINABLE
             and not np.array_equal(np.asarray(after[n]), v)]
  assert "moe_0/lora_b" in changed and "seg_proj_0/kernel" in changed
  # Adam keeps mu and nu for trainable leaves only (+ scalar counts).
  n_trainable = sum(1 for l in labels.values() if l == masks.TRAINABLE)
  moment_leaves = [x for x in jax.tree.leaves(run.state.opt_state)
                   if np.ndim(x) > 0]
  assert len(moment_leaves) == 2 * n_trainable
  run.manager.wait_until_finished()


def test_resume_continues_exactly(tmp_path, data_root):
  full = loop.train(tf.tiny_config(data_root, total_steps=6, ckpt_every=3,
                                   log_every=1), tmp_path / "full")
  loop.train(tf.tiny_config(data_root, total_steps=3, ckpt_every=3,
                            log_every=1), tmp_path / "split")
  resumed = loop.train(tf.tiny_config(data_root, total_steps=6, ckpt_every=3,
                                      log_every=1), tmp_path / "split")
  full_losses = [h["loss"] for h in full.history if h["step"] > 3]
  resumed_losses = [h["loss"] for h in resumed.history]
  np.testing.assert_allclose(resumed_losses, full_losses, rtol=1e-6)
  assert (tmp_path / "split" / "detector" / "config.json").is_file()


def test_nan_guard_names_the_step(tmp_path, data_root):
  config = tf.tiny_config(data_root, total_steps=2, log_every=1)
  config.optim.lr = float("nan")
  with pytest.raises(loop.NonFiniteLossError, match="step 1"):
    loop.train(config, tmp_path)


def test_learning_raises_holdout_pixel_auroc(tmp_path, tmp_path_factory):
  """200 steps on synthetic defects: held-out pixel AUROC rises well."""
  root = tf.square_defects_mvtec(tmp_path_factory.mktemp("learn") / "mvtec",
                                 seed=3)
  config = tf.tiny_config(root, total_steps=200, log_every=50, ckpt_every=200)
  config.backbone.image_size = 64
  config.data.holdout_fraction = 0.3
  run = _built(config, tmp_path)
  loop.restore(run)
  before = evaluator.evaluate_holdout(run, 0)["mean"]["pixel_auroc"]
  loop.loop(run)
  after = evaluator.evaluate_holdout(run, 200)["mean"]["pixel_auroc"]
  run.manager.wait_until_finished()
  assert after > before + 0.2 and after > 0.85, (before, after)


def test_target_set_only_behind_explicit_logged_flag(tmp_path, data_root,
                                                     caplog):
  config = tf.tiny_config(data_root, total_steps=2, log_every=1, ckpt_every=2,
                          eval_every=2)
  config.eval.target.name, config.eval.target.root = "mvtec", data_root
  run = loop.train(config, tmp_path / "off")
  assert not any(k.startswith("target/") for h in run.history for k in h)
  config.eval.select_on_target = True
  with caplog.at_level("WARNING", logger="moeclip_jax.train"):
    run = loop.train(config, tmp_path / "on")
  assert any(k.startswith("target/") for h in run.history for k in h)
  assert "not zero-shot" in caplog.text
