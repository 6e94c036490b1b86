"""DINOv2-with-registers tower: parity with transformers, conversion, golden
positional-table interpolation (official mode)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import require_shared
from moeclip_jax.convert import common
from moeclip_jax.convert import hf_dinov2
from moeclip_jax.models import dinov2
from moeclip_jax.checkpoint import backbones

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY = dict(
    hidden_size=32, num_hidden_layers=3, num_attention_heads=4, mlp_ratio=3,
    image_size=56, patch_size=14, num_register_tokens=4,
)


def _tiny_hf_model(seed=0):
  """Random tiny `Dinov2WithRegistersModel` with every parameter randomised."""
  torch.manual_seed(seed)
  config = transformers.Dinov2WithRegistersConfig(**TINY)
  model = transformers.Dinov2WithRegistersModel(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name and name.endswith("weight"):
        p.copy_(1 + 0.1 * torch.randn_like(p))
      elif "lambda1" in name:
        p.copy_(0.5 + 0.2 * torch.randn_like(p))
      else:
        p.copy_(0.1 * torch.randn_like(p))
  return model


def _state_numpy(model):
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _run_flax(params, config, pixels_nchw, layers):
  module = dinov2.DinoV2(config)
  pixels = jnp.asarray(pixels_nchw.transpose(0, 2, 3, 1))
  last, aux = module.apply({"params": params}, pixels, layers=tuple(layers))
  return np.asarray(last), {i: np.asarray(h) for i, h in aux["hidden"].items()}


@pytest.mark.needs_torch
@pytest.mark.parametrize("size", [(56, 56), (84, 84), (70, 42)])
def test_hf_parity_all_hidden_states(size):
  model = _tiny_hf_model()
  params, config = hf_dinov2.params_from_hf(
      model.config.to_dict(), _state_numpy(model))
  rng = np.random.default_rng(0)
  pixels = rng.standard_normal((2, 3, *size)).astype(np.float32)
  with torch.no_grad():
    ref = model(torch.from_numpy(pixels), output_hidden_states=True)
  layers = range(config.depth)
  last, hidden = _run_flax(params, config, pixels, layers)
  np.testing.assert_allclose(last, ref.last_hidden_state.numpy(), atol=1e-4)
  for i in layers:
    # hidden_states[0] is the embedding output; [i + 1] = block i.
    np.testing.assert_allclose(
        hidden[i], ref.hidden_states[i + 1].numpy(), atol=1e-4,
        err_msg=f"block {i}")
  assert hidden[0].shape[1] == 1 + 4 + (size[0] // 14) * (size[1] // 14)


def _to_official(state):
  """Repacks an HF (transformers 5) state dict into the official layout."""
  out = {
      "cls_token": state["embeddings.cls_token"],
      "mask_token": state["embeddings.mask_token"],
      "register_tokens": state["embeddings.register_tokens"],
      "pos_embed": state["embeddings.position_embeddings"],
      "patch_embed.proj.weight":
          state["embeddings.patch_embeddings.projection.weight"],
      "patch_embed.proj.bias":
          state["embeddings.patch_embeddings.projection.bias"],
      "norm.weight": state["layernorm.weight"],
      "norm.bias": state["layernorm.bias"],
  }
  i = 0
  while f"encoder.layer.{i}.norm1.weight" in state:
    s, d = f"encoder.layer.{i}.", f"blocks.{i}."
    for part in ("weight", "bias"):
      out[d + "attn.qkv." + part] = np.concatenate(
          [state[f"{s}attention.{n}_proj.{part}"] for n in "qkv"])
      out[d + "attn.proj." + part] = state[f"{s}attention.o_proj.{part}"]
      for sub in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
        out[f"{d}{sub}.{part}"] = state[f"{s}{sub}.{part}"]
    out[d + "ls1.gamma"] = state[f"{s}layer_scale1.lambda1"]
    out[d + "ls2.gamma"] = state[f"{s}layer_scale2.lambda1"]
    i += 1
  return out


def _to_legacy(state):
  """Renames transformers-5 attention keys to the legacy HF names."""
  names = {"q_proj": "attention.query", "k_proj": "attention.key",
           "v_proj": "attention.value"}
  out = {}
  for key, value in state.items():
    for new, old in names.items():
      key = key.replace(f"attention.{new}.", f"attention.{old}.")
    key = key.replace("attention.o_proj.", "attention.output.dense.")
    out[key] = value
  return out


def test_layouts_convert_to_identical_params():
  model = _tiny_hf_model(1)
  state = _state_numpy(model)
  hf_params, hf_cfg = hf_dinov2.params_from_hf(model.config.to_dict(), state)
  legacy, _ = hf_dinov2.params_from_hf(
      model.config.to_dict(), _to_legacy(state))
  official, off_cfg = hf_dinov2.params_from_official(
      _to_official(state), num_heads=TINY["num_attention_heads"])
  assert off_cfg.interpolation == "official" and hf_cfg.interpolation == "hf"
  assert off_cfg.mlp_dim == hf_cfg.mlp_dim == 96
  flat = common.flatten(hf_params)
  for other in (legacy, official):
    other = common.flatten(other)
    assert sorted(other) == sorted(flat)
    for key, value in flat.items():
      np.testing.assert_array_equal(other[key], value, err_msg=key)


def test_coverage_errors_name_the_problem():
  model = _tiny_hf_model(2)
  state = _state_numpy(model)
  state["encoder.layer.0.extra.weight"] = np.zeros(3, np.float32)
  del state["layernorm.bias"]
  with pytest.raises(common.ConversionError) as err:
    hf_dinov2.params_from_hf(model.config.to_dict(), state)
  msg = str(err.value)
  assert "unused key encoder.layer.0.extra.weight" in msg
  assert "missing key layernorm.bias" in msg


def test_convert_cli_roundtrip(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  model = _tiny_hf_model(3)
  src = tmp_path / "hf"
  src.mkdir()
  (src / "config.json").write_text(json.dumps(model.config.to_dict()))
  save_file(_state_numpy(model), str(src / "model.safetensors"))
  dst = hf_dinov2.convert_hf_dinov2(src, tmp_path / "out")
  module, params, config = backbones.load_dinov2(dst)
  assert config.interpolation == "hf" and config.depth == 3
  pixels = np.random.default_rng(1).standard_normal((1, 3, 84, 84))
  pixels = pixels.astype(np.float32)
  with torch.no_grad():
    ref = model(torch.from_numpy(pixels)).last_hidden_state.numpy()
  out, _ = module.apply({"params": params},
                        jnp.asarray(pixels.transpose(0, 2, 3, 1)))
  np.testing.assert_allclose(np.asarray(out), ref, atol=1e-4)


def test_official_matrix_is_torch_bicubic_scale_factor():
  grid = np.random.default_rng(0).standard_normal((1, 5, 9, 9))
  grid = grid.astype(np.float32)
  scale = (6 + 0.1) / 9
  ref = torch.nn.functional.interpolate(
      torch.from_numpy(grid), scale_factor=(scale, scale), mode="bicubic",
      antialias=False).numpy()[0]
  mat = dinov2.official_resize_matrix(9, 6, scale)
  out = np.einsum("ih,jw,chw->cij", mat, mat, grid[0])
  np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.golden
def test_official_interpolation_matches_fixture():
  golden = require_shared("golden")
  spec = json.loads(
      (golden / "anomalymoe_dinov2b14_img392_spec.json").read_text())
  make_weights = _import_make_weights(golden)
  entry = next(e for e in spec["tensors"] if e["name"] == "encoder.pos_embed")
  table = make_weights.make_tensor(spec["global_seed"], entry)  # [1, 1370, D]
  want = np.load(golden / "anomalymoe_dinov2b14_img392.npz")[
      "pos_embed_interp"]  # [785, 64]
  got = dinov2.interpolate_pos_embed(
      jnp.asarray(table[..., :64]), (28, 28), mode="official")
  np.testing.assert_allclose(np.asarray(got)[0], want, atol=1e-5)
  hf = dinov2.interpolate_pos_embed(jnp.asarray(table[..., :64]), (28, 28))
  assert np.abs(np.asarray(hf)[0] - want).max() > 1e-3  # the modes differ


def _import_make_weights(golden):
  import importlib.util  # pylint: disable=g-import-not-at-top

  spec = importlib.util.spec_from_file_location(
      "golden_make_weights", golden / "make_weights.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_logical_axes_on_every_param():
  config = dinov2.DinoV2Config(width=32, depth=1, num_heads=4, pos_grid=2)
  shapes = jax.eval_shape(
      dinov2.DinoV2(config).init, jax.random.key(0),
      jnp.zeros((1, 28, 28, 3)))
  leaves = jax.tree_util.tree_leaves(
      shapes, is_leaf=lambda x: hasattr(x, "names"))
  for leaf in leaves:
    assert hasattr(leaf, "names"), leaf
    assert len(leaf.names) == len(leaf.value.shape)
