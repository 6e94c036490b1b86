"""InCTRL through the generic loop (`python -m moeclip_jax.train`).

Tiny random CLIP (configs/inctrl_vitb16p_240.py:tiny) on synthetic MVTec-
layout data: one step's BatchNorm running statistics equal torch's
BatchNorm1d (momentum 0.1, unbiased running variance), only heads and
statistics change, a split run resumed from its workdir equals an
uninterrupted one bit for bit (heads, statistics, AdamW moments, episode
sampler), the exported detector loads and predicts, and (slow) training
raises a held-out class's AUROC.
"""

from __future__ import annotations

import importlib.util

import jax
import numpy as np
import pytest

import moeclip_jax
import train_fixtures as tf
from moeclip_jax.methods.inctrl import data as data_lib
from moeclip_jax.methods.inctrl import method as method_lib
from moeclip_jax.methods.inctrl import model as model_lib
from moeclip_jax.models import clip
from moeclip_jax.optim import masks
from moeclip_jax.sharding import partition
from moeclip_jax.sharding import presets
from moeclip_jax.train import loop
from moeclip_jax.utils import tree as tree_utils
from moeclip_jax.checkpoint import params as ckpt_params


def tiny_config(data_root, **overrides):
  path = tf.REPO / "configs" / "inctrl_vitb16p_240.py"
  spec = importlib.util.spec_from_file_location("inctrl_cfg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("tiny")
  config.data.root = str(data_root)
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return tf.synthetic_mvtec(tmp_path_factory.mktemp("inctrl") / "mvtec",
                            classes=("a", "b", "c"), n_good=6, n_bad=6,
                            size=40)


def _built(config, workdir):
  """The loop's sections up to (not including) restore."""
  run = loop.setup(config, workdir)
  loop.build_state(run)
  run.data = loop.make_data(run)
  run.context = run.method.make_context(run.state.params,
                                        run.data.class_names)
  return run


def _host(tree):
  return {n: np.array(v) for n, v in tree_utils.flatten_with_names(tree)}


def _torch_running_stats(x: np.ndarray, mean, var):
  """torch.nn.BatchNorm1d (momentum 0.1) after one train-mode batch."""
  torch = pytest.importorskip("torch")
  bn = torch.nn.BatchNorm1d(x.shape[1], momentum=0.1).double()
  bn.running_mean.copy_(torch.from_numpy(np.asarray(mean, np.float64)))
  bn.running_var.copy_(torch.from_numpy(np.asarray(var, np.float64)))
  bn.train()(torch.from_numpy(x.astype(np.float64)))
  return bn.running_mean.numpy(), bn.running_var.numpy()


def _expected_stats(run, batch, params):
  """BN running statistics torch computes for `batch` from `params`."""
  method = run.method
  towers = {k: params["params"][k] for k in method_lib.TOWERS}
  query, prompts = method.frozen_features(towers, batch["query"],
                                          batch["prompts"])
  text = np.asarray(run.context["text"])[batch["class_id"]]
  _, state = method.module.apply(
      params, query, prompts, text, train=True,
      method=model_lib.InCTRL.score_features,
      mutable=["batch_stats", "intermediates"], capture_intermediates=True)
  inter, stats = state["intermediates"], params["batch_stats"]
  out = {}
  for head in ("diff_head", "diff_head_ref"):
    for bn, proj in (("bn2", "projection1"), ("bn3", "projection2")):
      x = np.maximum(np.asarray(inter[head][proj]["__call__"][0]), 0)
      old = stats[head][bn]
      out[(head, bn)] = _torch_running_stats(x, old["mean"], old["var"])
  return out


@pytest.mark.needs_torch
def test_one_step_torch_bn_and_only_heads_change(tmp_path, data_root):
  config = tiny_config(data_root, total_steps=1, ckpt_every=1, log_every=1)
  run = _built(config, tmp_path)
  before = _host(run.state.params)
  labels = dict(tree_utils.flatten_with_names(run.labels))
  batch = data_lib.InCTRLTrainData(
      config, run.method.image_size,
      loop.data_parallel_per_process(run.mesh)).next()
  assert batch["label"].tolist() == [0] * 4 + [1] * 4
  assert batch["prompts"].shape == (8, 2, 32, 32, 3)
  expected = _expected_stats(run, batch, jax.device_get(run.state.params))
  loop.restore(run)
  loop.loop(run)
  run.manager.wait_until_finished()
  after = _host(run.state.params)
  for (head, bn), (mean, var) in expected.items():
    np.testing.assert_allclose(after[f"batch_stats/{head}/{bn}/mean"], mean,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(after[f"batch_stats/{head}/{bn}/var"], var,
                               rtol=1e-5, atol=1e-6)
  changed = {n for n, v in before.items() if not np.array_equal(after[n], v)}
  frozen = {n for n, l in labels.items() if l == masks.FROZEN}
  assert not changed & frozen  # towers and bn1 bit-identical
  assert "params/diff_head/bn1/scale" in frozen
  assert {"params/adapter/fc_0/kernel", "params/diff_head/projection1/kernel",
          "params/diff_head_ref/bn2/scale", "batch_stats/diff_head/bn3/var"
          } <= changed
  assert not any(n.startswith("batch_stats/") and "/bn1/" in n
                 for n in changed)
  n_trainable = sum(1 for l in labels.values() if l == masks.TRAINABLE)
  moments = [x for x in jax.tree.leaves(run.state.opt_state) if np.ndim(x)]
  assert len(moments) == 2 * n_trainable  # AdamW mu, nu: heads only


def test_resume_is_exact_and_export_loads(tmp_path, data_root):
  kw = dict(ckpt_every=2, log_every=1)
  full = loop.train(tiny_config(data_root, total_steps=4, **kw),
                    tmp_path / "full")
  loop.train(tiny_config(data_root, total_steps=2, **kw), tmp_path / "split")
  resumed = loop.train(tiny_config(data_root, total_steps=4, **kw),
                       tmp_path / "split")
  assert [h["step"] for h in resumed.history] == [3, 4]
  np.testing.assert_array_equal(
      [h["loss"] for h in resumed.history],
      [h["loss"] for h in full.history if h["step"] > 2])
  want, got = _host(full.state.params), _host(resumed.state.params)
  for name, value in want.items():
    np.testing.assert_array_equal(got[name], value, err_msg=name)
  for a, b in zip(jax.tree.leaves(full.state.opt_state),
                  jax.tree.leaves(resumed.state.opt_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert resumed.data.state() == full.data.state()
  # The export is the trained tree and a working InCTRL detector.
  det = moeclip_jax.load_detector(tmp_path / "split" / "detector")
  assert det.method == "inctrl" and det.model.feature_layers == (1, 2, 3)
  exported = _host(det.variables)
  for name, value in got.items():
    np.testing.assert_array_equal(exported[name], value, err_msg=name)
  pools = resumed.data.normals["a"]
  det.set_prompts(pools[:2])
  out = det.predict(resumed.data.anomalies["a"][:3], "a")
  assert out["image_score"].shape == (3,)
  assert out["anomaly_map"].shape == (3, 32, 32)
  assert np.all(np.isfinite(out["image_score"]))


def test_sampler_state_round_trip_and_balance():
  normals = {"a": np.zeros((5, 2)), "b": np.ones((5, 2))}
  anomalies = {"a": np.zeros((3, 2)) + 10, "b": np.ones((3, 2)) + 10}
  first = data_lib.EpisodeSampler(normals, anomalies, shots=3, per_label=4)
  first.sample()
  saved = first.state()
  second = data_lib.EpisodeSampler(normals, anomalies, shots=3, per_label=4,
                                   seed=99)
  second.restore(saved)
  for _ in range(4):
    (b1, n1), (b2, n2) = first.sample(), second.sample()
    assert n1 == n2
    np.testing.assert_array_equal(b1["prompts"], b2["prompts"])
    assert b1["label"].tolist() == [0] * 4 + [1] * 4
    for prompts, name in zip(b1["prompts"], n1):
      assert np.all(prompts == (0.0 if name == "a" else 1.0))
  other = data_lib.EpisodeSampler(normals, {"a": anomalies["a"]}, shots=3)
  with pytest.raises(ValueError, match="auxiliary data changed"):
    other.restore(saved)


def test_batch_divisibility_error_is_clear(tmp_path, data_root):
  config = tiny_config(data_root, **{"data.per_label": 3})
  run = loop.setup(config, tmp_path)
  loop.build_state(run)
  with pytest.raises(ValueError, match="per_label=3"):
    loop.make_data(run)


def test_load_pretrained_openclip_towers_and_inctrl_checkpoint(tmp_path):
  config = presets.apply(tiny_config(tmp_path), "fsdp")
  mesh = presets.configure(config)
  try:
    method = method_lib.InCTRLMethod(config)
    params, shardings = partition.sharded_init(
        method.init_fn, jax.random.key(0), mesh)
    fresh = jax.device_get(params)
    # A converted OpenCLIP checkpoint (towers differ from the fresh ones).
    towers = {k: jax.tree.map(lambda x: x + 1.0, fresh["params"][k])
              for k in method_lib.TOWERS}
    scale = clip.abstract_params(method.clip_config)["logit_scale"]
    towers["logit_scale"] = np.zeros(np.shape(scale.value), np.float32)
    config.backbone.checkpoint = str(ckpt_params.write_params_checkpoint(
        tmp_path / "clip", towers, {"clip": method.clip_config.to_dict()},
        {}))
    method = method_lib.InCTRLMethod(config)
    loaded = method.load_pretrained(params)
    sh = dict(tree_utils.flatten_with_names(shardings))
    assert all(v.sharding == sh[n] for n, v in
               tree_utils.flatten_with_names(loaded))
    assert "fsdp" in str(sh["params/img/blocks_0/mlp/c_fc/kernel"].spec)
    loaded = _host(loaded)
    for name, value in _host(fresh).items():
      is_tower = name.startswith(("params/img/", "params/txt/"))
      np.testing.assert_array_equal(loaded[name],
                                    value + 1.0 if is_tower else value,
                                    err_msg=name)
    # An InCTRL checkpoint (converter output / export) replaces everything.
    variables = jax.tree.map(lambda x: x - 0.5, fresh)
    config.backbone.checkpoint = str(ckpt_params.write_params_checkpoint(
        tmp_path / "inctrl", variables, method.checkpoint_config(), {}))
    loaded = _host(method_lib.InCTRLMethod(config).load_pretrained(params))
    for name, value in _host(variables).items():
      np.testing.assert_array_equal(loaded[name], value, err_msg=name)
  finally:
    partition.set_rules(None)
