"""AnomalyMoE golden parity, stage by stage, against
../shared/golden/anomalymoe_dinov2b14_img392.npz.

Weights are generated per test with the fixture's `make_weights.make_tensor`
for the spec entries a stage needs, and loaded through the official-checkpoint
converter (`convert/anomalymoe_official.py`). Fast tests use stored
intermediates as stage inputs and one expert per group; `slow` tests run the
whole model from the 2.17 GB weight set.
"""

import functools
import importlib.util
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import require_shared
from moeclip_jax.convert import anomalymoe_official
from moeclip_jax.methods.anomalymoe import maps as inference
from moeclip_jax.methods.anomalymoe import losses
from moeclip_jax.methods.anomalymoe import model as model_lib

pytestmark = pytest.mark.golden
FIXTURE = "anomalymoe_dinov2b14_img392"


@functools.lru_cache(maxsize=1)
def _golden():
  golden = require_shared("golden")
  spec = json.loads((golden / f"{FIXTURE}_spec.json").read_text())
  tol = json.loads((golden / "tolerances.json").read_text())
  mod_spec = importlib.util.spec_from_file_location(
      "golden_make_weights", golden / "make_weights.py")
  make_weights = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(make_weights)
  data = dict(np.load(golden / f"{FIXTURE}.npz"))
  return spec, tol, make_weights, data


def _atol(name):
  _, tol, _, _ = _golden()
  entry = tol[f"{FIXTURE}.npz"].get(name)
  if entry is None:
    raise KeyError(f"tolerances.json has no entry for {name}")
  return 0.0 if entry.get("exact") else float(entry["atol"])


def _check(name, got, want=None):
  want = _golden()[3][name] if want is None else want
  got = np.asarray(got)
  assert got.shape == want.shape, (name, got.shape, want.shape)
  err = np.abs(got.astype(np.float64) - want.astype(np.float64)).max()
  assert err <= _atol(name), f"{name}: max |diff| {err:.3g} > {_atol(name)}"


def _weights(prefixes, rename=None):
  """Generates the spec tensors whose names start with `prefixes`."""
  spec, _, make_weights, _ = _golden()
  out = {}
  for entry in spec["tensors"]:
    if entry["name"].startswith(tuple(prefixes)):
      name = entry["name"]
      out[rename(name) if rename else name] = make_weights.make_tensor(
          spec["global_seed"], entry)
  return out


def _one_expert(group, index):
  """Keeps expert `index` of `group`, renamed as expert 0."""
  prefix = f"{group}.{index}."
  return _weights([prefix], lambda n: f"{group}.0." + n[len(prefix):])


def _config(**overrides):
  # Stage tests call single experts through the vmap loop (the layout the
  # official per-expert modules convert to); scan == vmap is checked in
  # tests/test_anomalymoe_expert_loop.py.
  overrides.setdefault("expert_loop", "vmap")
  return model_lib.AnomalyMoEConfig(**overrides)


def _convert(state, config):
  params, est, _ = anomalymoe_official.convert_state(
      state, config, source_name=FIXTURE, partial=True)
  return params, est


def _nhwc(x):
  return jnp.asarray(np.asarray(x).transpose(0, 2, 3, 1))


def _nchw(x):
  return np.asarray(x).transpose(0, 3, 1, 2)


def _masks(data):
  """Padded component masks [B, K, S, S] and validity [B, K]."""
  counts = data["num_components"]
  k = int(counts.max())
  s = data["component_masks"].shape[-1]
  masks = np.zeros((len(counts), k, s, s), np.float32)
  valid = np.zeros((len(counts), k), bool)
  start = 0
  for b, n in enumerate(counts):
    masks[b, :n] = data["component_masks"][start:start + n]
    valid[b, :n] = True
    start += n
  return jnp.asarray(masks), jnp.asarray(valid)


def _flat_valid(x, valid):
  """[..., B, K, ...] padded -> concatenated real components."""
  return np.asarray(x)[..., np.asarray(valid), :] if x.ndim > 2 else (
      np.asarray(x)[np.asarray(valid)])


def test_gate_and_routing():
  data = _golden()[3]
  config = _config()
  params, _ = _convert(_weights(["gating_network."]), config)
  cls = jnp.asarray(data["routing_cls_token"])
  module = model_lib.AnomalyMoE(config)
  logits = module.apply({"params": params}, cls,
                        method=lambda m, x: m.gate(x))
  _check("gate_logits", logits)
  routing = model_lib.route(logits, config.top_k)
  np.testing.assert_array_equal(routing["topk_idx"], data["topk_idx"])
  for name in ("topk_weights", "routing_weights", "expert_mask"):
    _check(name, routing[name])
  hidden = jax.nn.relu(cls @ params["gate"]["gate_0"]["kernel"]
                       + params["gate"]["gate_0"]["bias"])
  _check("gate_hidden", hidden)


def test_patch_expert4_from_fused_tokens():
  data = _golden()[3]
  config = _config(num_patch_experts=1)
  params, _ = _convert(_one_expert("patch_experts", 4), config)
  fused = jnp.asarray(data["encoder_fused_tokens"])  # [B, L, D]
  module = model_lib.AnomalyMoE(config)
  blocks, state = module.apply(
      {"params": params}, fused, True,
      method=lambda m, x, d: m.patch_experts(x, d), mutable="intermediates")
  bott = state["intermediates"]["patch_experts"]["bottleneck_out"][0][0]
  _check("patch_bottleneck_out", bott[..., :64])
  _check("patch_decoder_block_out", blocks[0, ..., :64])
  de_map = model_lib.tokens_to_map(jnp.mean(blocks[0], 0), 5, 28)
  _check("patch_de_map", _nchw(de_map)[:, :64])
  en_map = model_lib.tokens_to_map(fused, 5, 28)
  err = inference.patch_error_maps(en_map, de_map[None])
  _check("patch_error_maps", err[0], data["patch_error_maps"][4])
  _check("patch_features", jnp.mean(de_map, (1, 2)),
         data["patch_features"][4])


def test_global_expert0():
  data = _golden()[3]
  config = _config(num_global_experts=1)
  params, _ = _convert(_one_expert("global_experts", 0), config)
  module = model_lib.AnomalyMoE(config)
  (ae, student), state = module.apply(
      {"params": params}, _nhwc(data["images_ae"]), True,
      method=lambda m, x, d: m.global_experts(x, d), mutable="intermediates")
  code = state["intermediates"]["global_experts"]["ae_code"][0][0]
  _check("global_ae_code", code.reshape(2, -1))
  _check("global_ae_out", _nchw(ae[0])[:, :64])
  _check("global_student_out", _nchw(student[0])[:, :64])
  err = inference.global_error_maps(ae, student)
  _check("global_error_maps", err[0], data["global_error_maps"][0])
  _check("global_features", jnp.mean(student[0], (1, 2)),
         data["global_features"][0])
  _check("global_ae_means", jnp.mean(ae[0], (1, 2)), data["global_ae_means"][0])


def test_component_experts():
  data = _golden()[3]
  config = _config()
  params, _ = _convert(_weights(["component_experts."]), config)
  masks, valid = _masks(data)
  source = model_lib.tokens_to_map(
      jnp.asarray(data["encoder_fused_tokens"]), 5, 28)
  out = model_lib.AnomalyMoE(config).apply(
      {"params": params}, source, masks,
      method=model_lib.AnomalyMoE.component_branch)
  v = np.asarray(valid)
  _check("component_masks_grid", np.asarray(out["component_masks_grid"])[v])
  _check("component_features", np.asarray(out["component_features"])[v])
  _check("component_recon", np.asarray(out["component_recon"])[:, v])
  wc = model_lib.split_groups(config, jnp.asarray(data["routing_weights"]))[2]
  scores = inference.component_scores(
      out["component_features"], out["component_recon"], wc)
  _check("component_scores", np.asarray(scores)[v])


def test_test_time_maps_and_scores():
  """test.py post-processing from the stored per-expert error maps."""
  data = _golden()[3]
  config = _config()
  weights = model_lib.split_groups(config, jnp.asarray(data["routing_weights"]))
  pgrid = jnp.einsum("be,ebhw->bhw", weights[0], data["patch_error_maps"])
  ggrid = jnp.einsum("be,ebhw->bhw", weights[1], data["global_error_maps"])
  _check("map_patch_grid", pgrid)
  _check("map_global_grid", ggrid)
  masks, valid = _masks(data)
  scores = np.zeros(valid.shape, np.float32)
  scores[np.asarray(valid)] = data["component_scores"]
  comp = jnp.max(jnp.asarray(scores)[:, :, None, None] * masks, axis=1)
  from moeclip_jax.methods.anomalymoe import ops  # pylint: disable=g-import-not-at-top
  raw = {"map_patch": ops.resize_bilinear_maps(pgrid, (392, 392)),
         "map_global": ops.resize_bilinear_maps(ggrid, (392, 392)),
         "map_component": comp}
  for name in raw:
    _check(name, raw[name][:, None])
  coef = inference.fusion_coefficients(weights)
  _check("fusion_coefficients", coef)
  res = inference.evaluate_class(raw, coef, data["gt_masks"][:, 0],
                                 data["labels"])
  _check("class_map_min_max", res["class_map_min_max"])
  for name in ("final_map", "final_map_256", "final_map_256_smoothed",
               "gt_256"):
    _check(name, np.asarray(res[name])[:, None])
  _check("image_scores", res["image_scores"])
  _check("pixel_auroc", res["pixel_auroc"])
  _check("image_auroc", res["image_auroc"])


def test_esb_eir_and_component_loss_from_stored_inputs():
  data = _golden()[3]
  config = _config()
  cfg = losses.LossConfig()
  esb, terms = losses.esb_loss(jnp.asarray(data["gate_logits"]),
                               jnp.asarray(data["expert_mask"]), 4.0)
  _check("loss_esb_terms", terms)
  _check("loss_esb", esb)
  _, est = _convert(_weights(["mi_estimator."]), config)
  mi = losses.MIEstimator(768)
  bounds = mi.apply({"params": est}, jnp.asarray(data["train_patch_features"]),
                    jnp.asarray(data["global_features"]),
                    data["eir_pairs"], data["eir_perms"])
  _check("loss_eir_club", bounds)
  _check("loss_eir", jnp.mean(bounds))
  est_loss = mi.apply(
      {"params": est}, jnp.asarray(data["train_patch_features"]),
      jnp.asarray(data["global_features"]), data["eir_estimator_pairs"],
      method=losses.MIEstimator.learning_loss)
  _check("loss_eir_estimator", est_loss)
  # Component loss from the eval-mode component outputs (fusion-free).
  params, _ = _convert(_weights(["component_experts."]), config)
  masks, valid = _masks(data)
  source = model_lib.tokens_to_map(
      jnp.asarray(data["encoder_fused_tokens"]), 5, 28)
  out = model_lib.AnomalyMoE(config).apply(
      {"params": params}, source, masks,
      method=model_lib.AnomalyMoE.component_branch)
  wc = model_lib.split_groups(config, jnp.asarray(data["routing_weights"]))[2]
  loss, aux = losses.component_loss(out["component_features"],
                                    out["component_recon"], valid, wc, cfg)
  _check("train_component_loss_per_comp",
         np.asarray(aux["per_comp"])[:, np.asarray(valid)])
  _check("loss_component", loss)


def test_hard_mining_k_matches_float64_rule():
  assert losses.hard_mining_k(2 * 784, 0.9) == 156
  assert losses.hard_mining_k(5 * 784, 0.9) == 391
  assert losses.hard_mining_k(10 * 784, 0.9) == 783
  assert losses.hard_mining_k(3, 0.9) == 1


# ----------------------------------------------------------------------------
# Slow: the whole model from the full weight set.
# ----------------------------------------------------------------------------



@functools.lru_cache(maxsize=1)
def _full_params():
  """All fixture weights, converted group by group to keep memory low."""
  config = _config(expert_loop="scan")
  params, est = {}, None
  for prefix in ("encoder.", "patch_experts.", "global_experts.",
                 "component_experts.", "gating_network.", "mi_estimator."):
    part, part_est = _convert(_weights([prefix]), config)
    params.update(jax.tree.map(jnp.asarray, part))
    est = jax.tree.map(jnp.asarray, part_est) if part_est else est
  return config, params, est


def _inputs(data):
  masks, valid = _masks(data)
  return _nhwc(data["images"]), _nhwc(data["images_ae"]), masks, valid


@pytest.mark.slow
def test_full_eval_forward():
  data = _golden()[3]
  config, params, _ = _full_params()
  images, images_ae, masks, valid = _inputs(data)
  module = model_lib.AnomalyMoE(config)
  out = jax.jit(lambda p: module.apply({"params": p}, images, images_ae,
                                       masks, valid))(params)
  _check("routing_cls_token", out["routing_cls_token"])
  _check("encoder_fused_tokens", out["fused_tokens"])
  _check("gate_logits", out["gate_logits"])
  np.testing.assert_array_equal(out["topk_idx"], data["topk_idx"])
  _check("patch_features", jnp.mean(out["de_maps"][:, -1], (2, 3)))
  _check("global_features", jnp.mean(out["student_out"], (2, 3)))
  _check("global_ae_means", jnp.mean(out["ae_out"], (2, 3)))
  _check("component_recon",
         np.asarray(out["component_recon"])[:, np.asarray(valid)])
  weights = model_lib.split_groups(config, out["routing_weights"])
  raw = inference.raw_maps(out, weights, 392)
  for name in ("patch_error_maps", "global_error_maps", "map_patch_grid",
               "map_global_grid"):
    _check(name, raw[name])
  for name in ("map_patch", "map_global", "map_component"):
    _check(name, raw[name][:, None])
  res = inference.evaluate_class(raw, inference.fusion_coefficients(weights),
                                 data["gt_masks"][:, 0], data["labels"])
  _check("final_map", np.asarray(res["final_map"])[:, None])
  _check("image_scores", res["image_scores"])
  _check("pixel_auroc", res["pixel_auroc"])


GRAD_LEAVES = {
    "grad_gate_out_weight": ("gate", "gate_2", "kernel"),
    "grad_gate_out_bias": ("gate", "gate_2", "bias"),
    "grad_gate_in_bias": ("gate", "gate_0", "bias"),
    "grad_patch_bottleneck_fc2_bias": (
        "patch_experts", "bottleneck_fc2", "bias"),
    "grad_patch_decoder0_fc2_bias": ("patch_experts", "decoder_0", "fc2",
                                     "bias"),
    "grad_patch_decoder7_fc2_bias": ("patch_experts", "decoder_7", "fc2",
                                     "bias"),
    "grad_global_ae_out_bias": ("global_experts", "ae_38", "bias"),
    "grad_global_student_out_bias": ("global_experts", "student_12", "bias"),
    "grad_component_out_bias": ("component_experts", "dec_7", "bias"),
}


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree, path, value):
  """Copy of `tree` (nested dicts) with `path` replaced."""
  if not path:
    return value
  return {**tree, path[0]: _set(tree[path[0]], path[1:], value)}


def _train_loss_fn(config, params, est, data, factor_hm=0.1):
  """Loss as a function of the recorded leaves only (as the fixture's
  gradients were measured): other parameters are constants, so no
  residuals are kept for them."""
  images, images_ae, masks, valid = _inputs(data)
  module = model_lib.AnomalyMoE(config)
  cfg = losses.LossConfig(factor_hm=factor_hm)

  def loss_fn(leaves, params):
    p = params
    for name, path in GRAD_LEAVES.items():
      p = _set(p, path, leaves[name])
    out = module.apply({"params": p}, images, images_ae, masks, valid,
                       train=True, with_ae_target=True)
    weights = model_lib.split_groups(config, out["routing_weights"])
    total, terms = losses.total_loss(out, weights, est, data["eir_pairs"],
                                     data["eir_perms"], cfg)
    terms["en_maps"] = out["en_maps"]
    terms["de_maps4"] = out["de_maps"][4]
    terms["ae_target"] = out["ae_target"]
    return total, terms

  leaves = {name: _get(params, path) for name, path in GRAD_LEAVES.items()}
  return loss_fn, leaves


@pytest.mark.slow
def test_full_training_losses_and_gradients():
  data = _golden()[3]
  config, params, est = _full_params()
  loss_fn, leaves = _train_loss_fn(config, params, est, data)
  # params go in as arguments: closed-over arrays would be baked into the
  # compiled program as constants (a second copy of 2.17 GB).
  grads, terms = jax.jit(jax.grad(loss_fn, has_aux=True))(leaves, params)
  _check("train_en_maps", np.asarray(terms["en_maps"]).transpose(
      0, 1, 4, 2, 3)[:, :, :64])
  _check("train_de_maps", np.asarray(terms["de_maps4"]).transpose(
      0, 1, 4, 2, 3)[:, :, :64])
  _check("train_ae_target", _nchw(terms["ae_target"])[:, :64])
  _check("train_patch_features", terms["patch_features"])
  _check("train_patch_loss_per_sample", terms["patch_per_sample"])
  _check("hm_threshold", terms["hm_threshold"])
  np.testing.assert_array_equal(terms["hm_num_hard"], data["hm_num_hard"])
  _check("train_global_loss_stae", terms["global_stae"])
  _check("train_global_loss_ae", terms["global_ae"])
  for name in ("loss_patch", "loss_global", "loss_component", "loss_recon",
               "loss_esb", "loss_eir", "loss_total"):
    _check(name, terms[name])
  for name, value in grads.items():
    if name == "grad_gate_out_weight":
      value = np.asarray(value).T
    _check(name, value)
  loss_nohm, leaves = _train_loss_fn(config, params, est, data, 1.0)
  grads_nohm, _ = jax.jit(jax.grad(loss_nohm, has_aux=True))(leaves, params)
  for name in GRAD_LEAVES:
    if name.startswith("grad_patch"):
      _check(name + "_no_hm", grads_nohm[name])
