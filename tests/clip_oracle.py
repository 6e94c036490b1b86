"""Tiny random `transformers.CLIPModel`s: the backbone oracle for tests."""

from __future__ import annotations

import numpy as np

HF_ACT = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_new"}


def make_hf_clip(activation="quick_gelu", seed=0, image_size=32, patch=8,
                 vision_width=64, vision_layers=3, vision_heads=4,
                 text_width=32, text_layers=2, text_heads=4, proj=24):
  """A random HF CLIPModel with randomised LayerNorms (stronger parity)."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  torch.manual_seed(seed)
  vision = dict(hidden_size=vision_width, num_hidden_layers=vision_layers,
                num_attention_heads=vision_heads, intermediate_size=4 * vision_width,
                image_size=image_size, patch_size=patch,
                hidden_act=HF_ACT[activation], layer_norm_eps=1e-5)
  text = dict(hidden_size=text_width, num_hidden_layers=text_layers,
              num_attention_heads=text_heads, intermediate_size=4 * text_width,
              vocab_size=49408, max_position_embeddings=77,
              hidden_act=HF_ACT[activation], layer_norm_eps=1e-5,
              eos_token_id=49407, bos_token_id=49406, pad_token_id=1)
  config = transformers.CLIPConfig(text_config=text, vision_config=vision,
                                   projection_dim=proj)
  model = transformers.CLIPModel(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(torch.randn_like(p) * 0.1 + (1.0 if name.endswith("weight") else 0.0))
      elif "embedding" in name or "proj" in name:
        p.copy_(torch.randn_like(p) * 0.05)
  return model


def random_ids(n, seed=0, context=77):
  """OpenAI-style ids: SOT, random tokens, EOT, zero padding."""
  rng = np.random.default_rng(seed)
  ids = np.zeros((n, context), np.int64)
  for i in range(n):
    length = int(rng.integers(3, 20))
    ids[i, 0] = 49406
    ids[i, 1:length] = rng.integers(1, 49405, length - 1)
    ids[i, length] = 49407
  return ids


def hf_outputs(model, pixels_nhwc, ids):
  """Image/text embeds and hidden states (block outputs), batch-first numpy."""
  import torch  # pylint: disable=g-import-not-at-top

  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(ids),
                pixel_values=torch.from_numpy(pixels_nhwc.transpose(0, 3, 1, 2)),
                output_hidden_states=True)
    # CLIPModel's own image_embeds/text_embeds are L2-normalised; ours (and
    # OpenCLIP's encode_*) are the raw projections.
    pix = torch.from_numpy(pixels_nhwc.transpose(0, 3, 1, 2))
    image_embeds = model.visual_projection(
        model.vision_model(pixel_values=pix).pooler_output)
    text_embeds = model.text_projection(
        model.text_model(input_ids=torch.from_numpy(ids)).pooler_output)
  return {
      "image_embeds": image_embeds.numpy(),
      "text_embeds": text_embeds.numpy(),
      "vision_hidden": [h.numpy() for h in out.vision_model_output.hidden_states[1:]],
      "text_hidden": [h.numpy() for h in out.text_model_output.hidden_states[1:]],
      "text_last": out.text_model_output.last_hidden_state.numpy(),
  }
