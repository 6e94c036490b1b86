"""Conversion: every source format, round trips, coverage and bad input."""

import json

import numpy as np
import pytest

import clip_oracle
import openclip_layout
from moeclip_jax.convert import __main__ as convert_main
from moeclip_jax.convert import clip_cli
from moeclip_jax.convert import clip_convert
from moeclip_jax.convert import common
from moeclip_jax.models import clip
from moeclip_jax.models import posemb
from moeclip_jax.checkpoint import params as ckpt_params
from moeclip_jax.checkpoint import backbones

pytestmark = pytest.mark.needs_torch


@pytest.fixture(scope="module")
def hf_model():
  return clip_oracle.make_hf_clip("gelu", seed=11, image_size=32, patch=8,
                                  vision_width=64, vision_layers=2,
                                  text_layers=2)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, hf_model):
  path = tmp_path_factory.mktemp("hf")
  hf_model.save_pretrained(path, safe_serialization=True)
  return path


@pytest.fixture(scope="module")
def openclip_state(hf_dir):
  hf = clip_convert.load_hf_state_dict(hf_dir)
  return openclip_layout.hf_to_openclip(hf, 2, 2)


@pytest.fixture(scope="module")
def reference_params(hf_dir, tmp_path_factory):
  dst = tmp_path_factory.mktemp("ref") / "ck"
  clip_cli.convert_hf_clip(hf_dir, dst)
  return backbones.load_clip(dst)


def _flat(params):
  return {k: np.asarray(v) for k, v in common.flatten(params).items()}


def _tiny_variant(monkeypatch):
  """Registers the oracle's shape as an OpenCLIP-style variant name."""
  from moeclip_jax.models import clip_config
  cfg = clip_config.CLIPConfig(
      vision=clip_config.VisionConfig(64, 2, 4, 8, 32, 256, 24),
      text=clip_config.TextConfig(32, 2, 4, 128, 24), activation="gelu")
  monkeypatch.setitem(clip_config.VARIANTS, "tiny-oracle", cfg)


def _save(state, path):
  import torch
  if path.suffix == ".safetensors":
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path))
  elif path.name.endswith("-jit.pt"):
    openclip_layout.save_torchscript(state, path)
  else:
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state.items()},
               str(path))


@pytest.mark.parametrize("name", ["oc.safetensors", "oc.bin", "oc.pt",
                                  "openai-jit.pt"])
def test_openclip_formats_equal_hf_conversion(
    tmp_path, monkeypatch, openclip_state, reference_params, name):
  _tiny_variant(monkeypatch)
  src = tmp_path / name
  _save(openclip_state, src)
  clip_cli.convert_openclip(src, "tiny-oracle", tmp_path / "ck")
  _, params, config, tok = backbones.load_clip(tmp_path / "ck")
  ref = _flat(reference_params[1])
  ours = _flat(params)
  assert ours.keys() == ref.keys()
  for key in ref:
    np.testing.assert_array_equal(ours[key], ref[key], err_msg=key)
  assert config.vision.image_size == 32
  assert tok is not None  # packaged BPE copied in
  meta = json.loads((tmp_path / "ck" / "meta.json").read_text())
  assert meta["source_sha256"][name] == ckpt_params.sha256_file(src)


def test_round_trip_source_ours_source(openclip_state, reference_params):
  back = openclip_layout.params_to_openclip(reference_params[1])
  assert back.keys() == openclip_state.keys()
  for key, value in openclip_state.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_image_size_resamples_positional_table(tmp_path, hf_dir, hf_model):
  import torch
  clip_cli.convert_hf_clip(hf_dir, tmp_path / "ck", image_size=48)
  _, params, config, _ = backbones.load_clip(tmp_path / "ck")
  assert config.vision.grid == 6
  table = hf_model.vision_model.embeddings.position_embedding.weight.detach()
  grid = table[1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
  ref = torch.nn.functional.interpolate(grid, size=(6, 6), mode="bicubic",
                                        antialias=True, align_corners=False)
  ref = ref.permute(0, 2, 3, 1).reshape(36, -1).numpy()
  np.testing.assert_allclose(params["img"]["positional_embedding"][1:], ref,
                             atol=1e-5)
  np.testing.assert_array_equal(params["img"]["positional_embedding"][0],
                                table[0].numpy())


def test_coverage_errors_are_sorted_and_complete(openclip_state, monkeypatch):
  _tiny_variant(monkeypatch)
  state = dict(openclip_state)
  del state["visual.ln_post.bias"]
  state["visual.extra.weight"] = np.zeros(3, np.float32)
  state["visual.proj"] = np.zeros((64, 5), np.float32)
  config = clip_convert.config_from_openclip(state, "tiny-oracle")
  with pytest.raises(common.ConversionError) as err:
    clip_convert.openclip_to_params(state, config, source_name="x.pt")
  msg = str(err.value)
  assert msg.startswith("x.pt: 3 problem(s)")
  assert "missing key visual.ln_post.bias" in msg
  assert "unused key visual.extra.weight" in msg
  assert "shape mismatch visual.proj" in msg


def _cli_error(capsys, argv):
  assert convert_main.main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) >= 1 and err.startswith("error: ")
  return err


def test_bad_input_folder_without_weights(tmp_path, capsys, hf_dir):
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "config.json").write_text(
      (hf_dir / "config.json").read_text())
  err = _cli_error(capsys, ["hf-clip", "--src", str(tmp_path / "empty"),
                            "--dst", str(tmp_path / "o")])
  assert str(tmp_path / "empty") in err and "model.safetensors" in err
  assert not (tmp_path / "o").exists()


def test_bad_input_config_weights_mismatch(tmp_path, capsys, hf_dir):
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "model.safetensors").write_bytes(
      (hf_dir / "model.safetensors").read_bytes())
  cfg = json.loads((hf_dir / "config.json").read_text())
  cfg["vision_config"]["hidden_size"] = 96
  (bad / "config.json").write_text(json.dumps(cfg))
  err = _cli_error(capsys, ["hf-clip", "--src", str(bad), "--dst",
                            str(tmp_path / "o")])
  assert str(bad) in err and "shape mismatch" in err


def test_bad_input_unknown_variant(tmp_path, capsys, openclip_state):
  src = tmp_path / "w.safetensors"
  _save(openclip_state, src)
  err = _cli_error(capsys, ["openclip", "--src", str(src), "--model",
                            "ViT-Q-99", "--dst", str(tmp_path / "o")])
  assert "ViT-Q-99" in err and "ViT-L-14-336" in err


def test_bad_input_truncated_safetensors(tmp_path, capsys, hf_dir):
  bad = tmp_path / "trunc"
  bad.mkdir()
  data = (hf_dir / "model.safetensors").read_bytes()
  (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
  (bad / "config.json").write_text((hf_dir / "config.json").read_text())
  err = _cli_error(capsys, ["hf-clip", "--src", str(bad), "--dst",
                            str(tmp_path / "o")])
  assert str(bad / "model.safetensors") in err and "truncated" in err


def test_existing_destination_is_not_overwritten(tmp_path, capsys, hf_dir):
  dst = tmp_path / "o"
  dst.mkdir()
  (dst / "keep.txt").write_text("mine")
  err = _cli_error(capsys, ["hf-clip", "--src", str(hf_dir), "--dst", str(dst)])
  assert "exists" in err and (dst / "keep.txt").read_text() == "mine"


def test_grid_size_rejects_non_square_table():
  with pytest.raises(ValueError, match="rows"):
    posemb.grid_size(11)
