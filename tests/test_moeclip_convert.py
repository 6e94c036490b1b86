"""`convert moeclip-official`: key mapping, coverage errors, end to end.

The slow test converts the golden fixture's official-format weights (backbone
as an OpenCLIP safetensors file, adapters as a `torch.save` dict like
`moe_epoch_N.pth`) and checks the whole JAX forward against the fixture.
"""

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import openclip_layout
import test_moeclip_model as tiny
from conftest import require_shared
from moeclip_jax.convert import registry as convert_registry
from moeclip_jax.verbs import convert as convert_main
from moeclip_jax.checkpoint import params as ckpt_params
from moeclip_jax.convert import common
from moeclip_jax.convert import moeclip_official
from moeclip_jax.methods.moeclip import losses
from moeclip_jax.methods.moeclip import maps
from moeclip_jax.methods.moeclip import model as model_lib
from moeclip_jax.methods.moeclip import model_io


def _adapters(params):
  return {k: v for k, v in params.items() if k not in ("img", "txt")}


def _official_state():
  ccfg, cfg = tiny.tiny_configs()
  params = tiny.randomised(tiny.tiny_params())
  state = moeclip_official.adapter_params_to_state(_adapters(params), cfg)
  return ccfg, cfg, params, state


def test_adapter_mapping_round_trip_is_exact():
  ccfg, cfg, params, state = _official_state()
  assert "image_adapter.moe_adapters.3.experts.2.lora_A.weight" in state
  assert state["image_adapter.det_proj.adapter.0.weight"].shape == (64, 1, 3)
  assert state["text_adapter.0.fc.0.weight"].shape == (32, 32)
  back = moeclip_official.adapter_params_from_state(
      state, cfg, width=ccfg.vision.width, text_width=ccfg.text.width)
  flat_back, flat_in = common.flatten(back), common.flatten(_adapters(params))
  assert sorted(flat_back) == sorted(flat_in)
  for path, value in flat_in.items():
    np.testing.assert_array_equal(flat_back[path], value, err_msg=path)
  inferred = moeclip_official.infer_config(state, ccfg.vision.layers)
  assert inferred.moe_layers == (0, 1, 2, 3)
  assert (inferred.proj_dim, inferred.text_width) == (32, 32)


def test_coverage_errors_are_listed():
  ccfg, cfg, _, state = _official_state()
  kw = {"width": ccfg.vision.width, "text_width": ccfg.text.width}
  broken = dict(state)
  del broken["image_adapter.moe_adapters.1.experts.3.lora_B.weight"]
  with pytest.raises(common.ConversionError, match="another config"):
    moeclip_official.adapter_params_from_state(broken, cfg, **kw)
  broken = dict(state, **{"image_adapter.extra.weight": np.zeros(3)})
  with pytest.raises(common.ConversionError, match="unused key"):
    moeclip_official.adapter_params_from_state(broken, cfg, **kw)
  broken = dict(state)
  broken["image_adapter.seg_proj.0.fc.weight"] = np.zeros((32, 63))
  with pytest.raises(common.ConversionError, match="shape mismatch"):
    moeclip_official.adapter_params_from_state(broken, cfg, **kw)
  broken = {k: v for k, v in state.items() if "seg_proj.3" not in k}
  with pytest.raises(common.ConversionError, match="seg projections"):
    moeclip_official.infer_config(broken, 4)


def _save_adapter_pth(state, path):
  import torch  # pylint: disable=g-import-not-at-top

  def part(prefix):
    return {k[len(prefix):]: torch.from_numpy(np.array(v))
            for k, v in state.items() if k.startswith(prefix)}
  torch.save({"epoch": 3, "optimizer_state_dict": {"state": {}},
              "image_adapter": part("image_adapter."),
              "text_adapter": part("text_adapter.")}, str(path))


@pytest.mark.needs_torch
def test_cli_end_to_end_tiny(tmp_path):
  pytest.importorskip("torch")
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  ccfg, _, params, state = _official_state()
  backbone = openclip_layout.params_to_openclip(
      {**params, "logit_scale": np.float32(np.log(100.0))})
  save_file(backbone, str(tmp_path / "clip.safetensors"))
  _save_adapter_pth(state, tmp_path / "moe_epoch_3.pth")
  dst = tmp_path / "ckpt"
  argv = ["moeclip-official", "--clip", str(tmp_path / "clip.safetensors"),
          "--adapter", str(tmp_path / "moe_epoch_3.pth"), "--dst", str(dst),
          "--model", "tiny-test"]
  if moeclip_official in convert_registry.CONVERTERS:
    assert convert_main.main(argv) == 0
  else:  # not wired into `python -m moeclip_jax.convert` yet
    parser = argparse.ArgumentParser()
    moeclip_official.register(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(argv)
    args.func(args)
  module, loaded, lccfg, lcfg, tok = model_io.load(dst)
  assert lccfg.activation == "gelu" and tok is not None
  assert lcfg.moe_layers == (0, 1, 2, 3)
  x = tiny.pixels()
  want, _ = model_lib.MoECLIP(ccfg, lcfg).apply({"params": params}, x)
  got, _ = module.apply({"params": loaded}, x)
  np.testing.assert_allclose(got["seg_tokens"], want["seg_tokens"], atol=1e-6)
  meta = json.loads((dst / "meta.json").read_text())
  assert meta["source_format"] == "moeclip-official"
  # Another config (other shapes) or another method is refused clearly.
  with pytest.raises(ckpt_params.CheckpointError, match="does not match"):
    model_io.load(dst, proj_dim=16)
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "config.json").write_text('{"method": "inctrl"}')
  with pytest.raises(common.ConversionError, match="another method"):
    model_io.load(tmp_path / "other")


@pytest.mark.needs_torch
def test_bad_adapter_file_is_reported(tmp_path):
  torch = pytest.importorskip("torch")
  torch.save({"state_dict": {}}, str(tmp_path / "x.pth"))
  with pytest.raises(common.ConversionError, match="image_adapter"):
    moeclip_official.load_adapter_checkpoint(tmp_path / "x.pth")


# ---- full ViT-L golden parity through the converter (slow) ------------------
def _fixture_files(tmp_path):
  """Writes the fixture weights as official-format files."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  import test_moeclip_golden as golden_tests  # pylint: disable=g-import-not-at-top

  golden = require_shared("golden")
  weights = golden_tests.load_spec_tensors(golden, lambda n: True)
  backbone = {k[len("clipmodel."):]: v for k, v in weights.items()
              if k.startswith("clipmodel.")}
  save_file(backbone, str(tmp_path / "clip.safetensors"))
  del backbone
  _save_adapter_pth({k: v for k, v in weights.items()
                     if not k.startswith("clipmodel.")},
                    tmp_path / "moe_epoch_1.pth")
  return golden


def _assert_close(fixture, tols, name, value):
  want, got = fixture[name], np.asarray(value)
  if tols[name].get("exact") or want.dtype.kind in "biu":
    np.testing.assert_array_equal(got, want, err_msg=name)
    return
  err = float(np.abs(got.astype(np.float64) - want).max())
  assert err <= tols[name]["atol"], f"{name}: {err:.3g} > {tols[name]}"


@pytest.mark.slow
@pytest.mark.needs_torch
def test_golden_full_forward_through_converter(tmp_path):
  pytest.importorskip("torch")
  golden = _fixture_files(tmp_path)
  fixture = dict(np.load(golden / "moeclip_vitl14_img168.npz"))
  tols = json.loads((golden / "tolerances.json").read_text())[
      "moeclip_vitl14_img168.npz"]
  dst = moeclip_official.convert_moeclip_official(
      tmp_path / "clip.safetensors", tmp_path / "moe_epoch_1.pth",
      tmp_path / "ckpt")
  module, params, ccfg, cfg, _ = model_io.load(dst)
  assert ccfg.vision.image_size == 168 and ccfg.activation == "gelu"
  pixels = jnp.asarray(fixture["images"]).transpose(0, 2, 3, 1)
  out, aux = jax.jit(lambda p, x: module.apply(
      {"params": p}, x, return_expert_outputs=True))(params, pixels)
  check = lambda name, value: _assert_close(fixture, tols, name, value)
  check("layer_outputs", aux["layer_outputs"])
  for layer in (5, 11, 17, 23):
    for ours, theirs in (("router_logits", "router_logits"),
                         ("router_probs", "router_probs"),
                         ("topk_idx", "router_topk_idx"),
                         ("topk_weight", "router_topk_weight")):
      check(f"{theirs}_l{layer}", aux["moe"][layer][ours])
  for name in ("seg_tokens", "det_tokens", "det_feature"):
    check(name, out[name])
  eot = jax.jit(lambda p, i: module.apply(
      {"params": p}, i, method=model_lib.MoECLIP.encode_text_eot))(
          params, jnp.asarray(fixture["token_ids"]))
  check("text_eot_features", eot)
  text = module.apply({"params": params}, eot, fixture["prompt_is_abnormal"],
                      method=model_lib.MoECLIP.text_features)
  check("text_features", text)
  for domain in ("industrial", "medical"):
    check(f"anomaly_map_{domain}",
          maps.anomaly_map(out["seg_tokens"], text, (168, 168), domain))
  check("image_score_raw", maps.image_score(out["det_feature"], text))
  paper = cfg.replace(faithful="paper").loss_weights()
  total, named = losses.total_loss(
      out, aux, text, jnp.asarray(fixture["train_labels"]),
      jnp.asarray(fixture["train_masks"]), paper)
  check("loss_etf_per_layer", named["loss_etf_per_layer"])
  check("loss_etf_sum", named["loss_etf_sum"])
  check("loss_balance_cv2_sum", named["loss_balance_cv2_sum"])
  check("loss_seg_sum", named["loss_seg_sum"])
  check("loss_total", total)
