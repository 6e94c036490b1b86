"""`embed` on a `convert hf-dinov2` checkpoint: hidden states of --layers
(CLS / register / patch tokens named in the npz) at native and interpolated
sizes against transformers' Dinov2WithRegistersModel."""

import json

import numpy as np
import pytest
from PIL import Image

from moeclip_jax.convert import hf_dinov2
from moeclip_jax.data import transforms
from moeclip_jax.verbs import embed

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.needs_torch

TINY = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
            mlp_ratio=3, image_size=56, patch_size=14, num_register_tokens=4)
REGS = TINY["num_register_tokens"]


@pytest.fixture(scope="module")
def model_and_checkpoint(tmp_path_factory):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  tmp = tmp_path_factory.mktemp("dino")
  torch.manual_seed(0)
  model = transformers.Dinov2WithRegistersModel(
      transformers.Dinov2WithRegistersConfig(**TINY)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name and name.endswith("weight"):
        p.copy_(1 + 0.1 * torch.randn_like(p))
      elif "lambda1" in name:
        p.copy_(0.5 + 0.2 * torch.randn_like(p))
      else:
        p.copy_(0.1 * torch.randn_like(p))
  src = tmp / "hf"
  src.mkdir()
  (src / "config.json").write_text(json.dumps(model.config.to_dict()))
  save_file({k: v.detach().numpy().copy()
             for k, v in model.state_dict().items()},
            str(src / "model.safetensors"))
  return model, hf_dinov2.convert_hf_dinov2(src, tmp / "ckpt")


def _reference(model, pixels_nhwc):
  with torch.no_grad():
    return model(torch.from_numpy(pixels_nhwc.transpose(0, 3, 1, 2).copy()),
                 output_hidden_states=True)


@pytest.mark.parametrize("hw", [(56, 56), (84, 84), (70, 42)])
def test_hidden_states_match_transformers(model_and_checkpoint, tmp_path, hw):
  model, ckpt = model_and_checkpoint
  pixels = np.random.default_rng(1).standard_normal((3, *hw, 3))
  pixels = pixels.astype(np.float32)
  np.save(tmp_path / "x.npy", pixels)
  out = tmp_path / "e.npz"
  assert embed.main(["--checkpoint", str(ckpt), "--pixels",
                     str(tmp_path / "x.npy"), "--layers", "0,2",
                     "--batch-size", "2", "--out", str(out)]) == 0
  ref = _reference(model, pixels)
  got = dict(np.load(out))
  gh, gw = hw[0] // 14, hw[1] // 14
  assert got["patch_grid"].tolist() == [gh, gw]
  for layer in (0, 2):
    want = ref.hidden_states[layer + 1].numpy()
    full = got[f"hidden_{layer}"]
    assert full.shape == (3, 1 + REGS + gh * gw, 32)
    np.testing.assert_allclose(full, want, atol=1e-4)
    np.testing.assert_allclose(got[f"hidden_{layer}_cls"], want[:, 0],
                               atol=1e-4)
    np.testing.assert_allclose(got[f"hidden_{layer}_registers"],
                               want[:, 1:1 + REGS], atol=1e-4)
    np.testing.assert_allclose(got[f"hidden_{layer}_patches"],
                               want[:, 1 + REGS:], atol=1e-4)
  assert "hidden_1" not in got
  np.testing.assert_allclose(got["last_hidden_state"],
                             ref.last_hidden_state.numpy(), atol=1e-4)
  np.testing.assert_allclose(got["image_embeds"],
                             ref.pooler_output.numpy(), atol=1e-4)


def test_image_files_use_imagenet_preprocessing(model_and_checkpoint,
                                                tmp_path):
  model, ckpt = model_and_checkpoint
  rng = np.random.default_rng(2)
  path = tmp_path / "a.png"
  image = rng.integers(0, 255, (50, 60, 3), np.uint8)
  Image.fromarray(image).save(path)
  out = tmp_path / "e.npz"
  assert embed.main(["--checkpoint", str(ckpt), "--images", str(path),
                     "--layers", "1", "--image-size", "70",
                     "--out", str(out)]) == 0
  prep = transforms.Preprocess("t", 70, mean=transforms.IMAGENET_MEAN,
                               std=transforms.IMAGENET_STD)
  pixels = transforms.normalize(transforms.resize_image(image, prep), prep)
  ref = _reference(model, pixels[None].astype(np.float32))
  got = np.load(out)
  np.testing.assert_allclose(got["hidden_1"], ref.hidden_states[2].numpy(),
                             atol=1e-4)


def test_texts_are_an_error_that_says_why(model_and_checkpoint, tmp_path,
                                          capsys):
  _, ckpt = model_and_checkpoint
  np.save(tmp_path / "x.npy", np.zeros((1, 56, 56, 3), np.float32))
  rc = embed.main(["--checkpoint", str(ckpt), "--pixels",
                   str(tmp_path / "x.npy"), "--texts", "a photo",
                   "--out", str(tmp_path / "e.npz")])
  assert rc == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and len(err.splitlines()) == 1
  assert "DINOv2" in err and "no text tower" in err
  assert not (tmp_path / "e.npz").exists()
