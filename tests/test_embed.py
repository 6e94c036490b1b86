"""The embedding tool on a converted tiny random checkpoint."""

import numpy as np
import pytest
from PIL import Image

import clip_oracle
from moeclip_jax.verbs import embed
from moeclip_jax.convert import clip_cli
from moeclip_jax.models import clip
from moeclip_jax.models import tokenize
from moeclip_jax.utils import images
from moeclip_jax.checkpoint import backbones

pytestmark = pytest.mark.needs_torch


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("embed")
  model = clip_oracle.make_hf_clip("quick_gelu", seed=3)
  model.save_pretrained(tmp / "hf", safe_serialization=True)
  clip_cli.convert_hf_clip(tmp / "hf", tmp / "ck")
  return tmp / "ck"


def test_pixels_and_texts(tmp_path, checkpoint):
  module, params, _, tok = backbones.load_clip(checkpoint)
  pixels = np.random.default_rng(0).standard_normal((5, 32, 32, 3)).astype(np.float32)
  np.save(tmp_path / "x.npy", pixels)
  texts = ["a photo of a cat.", "a damaged solar cell."]
  rc = embed.main(["--checkpoint", str(checkpoint), "--pixels",
                   str(tmp_path / "x.npy"), "--texts", *texts, "--layers",
                   "0,2", "--batch-size", "2", "--out", str(tmp_path / "e.npz")])
  assert rc == 0
  out = np.load(tmp_path / "e.npz")
  assert set(out.files) == {"image_embeds", "text_embeds", "hidden_0",
                            "hidden_2"}
  assert out["hidden_2"].shape == (5, 17, 64)
  ref = module.apply({"params": params}, pixels, layers=(0, 2),
                     method=module.encode_image)
  np.testing.assert_allclose(out["image_embeds"], ref["pooled"], atol=1e-5)
  np.testing.assert_allclose(out["hidden_2"], ref["hidden"][2], atol=1e-5)
  ids = tokenize.tokenize(tok, texts)
  ref_t = module.apply({"params": params}, ids, method=module.encode_text)
  np.testing.assert_allclose(out["text_embeds"], ref_t["pooled"], atol=1e-5)


def test_image_files_use_clip_preprocessing(tmp_path, checkpoint):
  rng = np.random.default_rng(1)
  paths = []
  for i, size in enumerate([(40, 60), (32, 32)]):
    arr = rng.integers(0, 255, size + (3,), np.uint8)
    paths.append(tmp_path / f"im{i}.png")
    Image.fromarray(arr).save(paths[-1])
  rc = embed.main(["--checkpoint", str(checkpoint), "--images",
                   *map(str, paths), "--out", str(tmp_path / "e.npz")])
  assert rc == 0
  out = np.load(tmp_path / "e.npz")
  module, params, _, _ = backbones.load_clip(checkpoint)
  pix = np.stack([images.clip_preprocess(images.load_rgb(p), 32) for p in paths])
  ref = module.apply({"params": params}, pix, method=module.encode_image)
  np.testing.assert_allclose(out["image_embeds"], ref["pooled"], atol=1e-5)


def test_requires_an_input_and_checks_pixels(tmp_path, checkpoint, capsys):
  assert embed.main(["--checkpoint", str(checkpoint), "--out",
                     str(tmp_path / "e.npz")]) == 2
  np.save(tmp_path / "bad.npy", np.zeros((2, 30, 30, 3), np.float32))
  assert embed.main(["--checkpoint", str(checkpoint), "--pixels",
                     str(tmp_path / "bad.npy"), "--out",
                     str(tmp_path / "e.npz")]) == 2
  assert "bad.npy" in capsys.readouterr().err
  assert not (tmp_path / "e.npz").exists()
