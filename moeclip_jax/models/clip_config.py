"""CLIP model configurations: frozen dataclasses and named variants.

Variants are named as OpenCLIP names them (`ViT-L-14-336`, `ViT-B-16`, ...).
OpenCLIP's JSON for `ViT-L-14-336` does not set `quick_gelu`, so the model it
builds (and the official MoECLIP runs) uses exact GELU even with OpenAI
weights; `ViT-L-14-336-quickgelu` is the OpenAI / Hugging Face behaviour.
"""

from __future__ import annotations

import dataclasses
from typing import Any

ACTIVATIONS = ("gelu", "quick_gelu", "gelu_tanh")
MATMUL_PRECISIONS = ("default", "high", "highest")
DTYPES = ("auto", "float32", "bfloat16", "float16")  # precision.CHOICES
REMAT = ("none", "blocks", "dots_saveable",
         "dots_with_no_batch_dims_saveable", "everything_saveable")

# Hugging Face `hidden_act` strings -> our activation names.
HF_ACTIVATIONS = {
    "quick_gelu": "quick_gelu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
}


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """Vision tower hyperparameters."""

  width: int
  layers: int
  heads: int
  patch_size: int
  image_size: int
  mlp_dim: int
  output_dim: int | None  # None: no `proj` (pooled = ln_post(CLS)).

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_tokens(self) -> int:
    return 1 + self.grid * self.grid


@dataclasses.dataclass(frozen=True)
class TextConfig:
  """Text tower hyperparameters."""

  width: int
  layers: int
  heads: int
  mlp_dim: int
  output_dim: int | None
  context_length: int = 77
  vocab_size: int = 49408


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  """A whole CLIP model: two towers plus the numerics policy.

  Attributes:
    vision: vision tower.
    text: text tower (None for a vision-only checkpoint).
    activation: "gelu" (exact erf), "quick_gelu" (x * sigmoid(1.702 x)) or
      "gelu_tanh" (tanh approximation).
    ln_eps: LayerNorm epsilon (torch default 1e-5; Flax's default is 1e-6).
    dtype: compute dtype: "auto" (default: bfloat16 on TPU / GPU, float32
      on CPU; models/precision.py) or "float32" / "bfloat16" / "float16".
    param_dtype: storage dtype of the parameters.
    matmul_precision: "default", "high" or "highest" for every dot product
      (parity checks on GPU/TPU need "highest").
    name: variant name it was built from (informational).
    remat: rematerialisation of each residual block in the backward pass:
      "none"; "blocks" (recompute everything inside the block: least
      memory, ~1/3 more compute); "dots_saveable" / "dots_with_no_batch_
      dims_saveable" (keep matmul outputs, recompute the elementwise ops);
      "everything_saveable" (remat boundary only). Peak bytes per policy:
      docs/performance.md (benchmarks/remat_memory.py).
  """

  vision: VisionConfig
  text: TextConfig | None
  activation: str = "gelu"
  ln_eps: float = 1e-5
  dtype: str = "auto"
  param_dtype: str = "float32"
  matmul_precision: str = "default"
  name: str = ""
  remat: str = "none"

  def __post_init__(self):
    _check_choice("activation", self.activation, ACTIVATIONS)
    _check_choice("dtype", self.dtype, DTYPES)
    _check_choice("param_dtype", self.param_dtype, DTYPES[1:])
    _check_choice("matmul_precision", self.matmul_precision, MATMUL_PRECISIONS)
    _check_choice("remat", self.remat, REMAT)
    v = self.vision
    if v.image_size % v.patch_size:
      raise ValueError(
          f"image_size {v.image_size} is not a multiple of patch_size "
          f"{v.patch_size}"
      )
    for tower in (self.vision, self.text):
      if tower is not None and tower.width % tower.heads:
        raise ValueError(f"width {tower.width} not divisible by {tower.heads}")

  def replace(self, **kwargs) -> "CLIPConfig":
    """Returns a copy; `image_size=` is forwarded to the vision config."""
    vision_kwargs = {
        k: kwargs.pop(k)
        for k in list(kwargs)
        if k in ("image_size", "patch_size")
    }
    config = self
    if vision_kwargs:
      config = dataclasses.replace(
          config, vision=dataclasses.replace(config.vision, **vision_kwargs)
      )
    return dataclasses.replace(config, **kwargs)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "CLIPConfig":
    d = dict(d)
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f"unknown CLIPConfig fields: {sorted(unknown)}")
    d["vision"] = VisionConfig(**d["vision"])
    d["text"] = TextConfig(**d["text"]) if d.get("text") else None
    return cls(**d)


def _check_choice(field: str, value: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"{field}={value!r}; expected one of {choices}")


def _vit(width, layers, patch, image, out, head_width=64) -> VisionConfig:
  return VisionConfig(
      width=width,
      layers=layers,
      heads=width // head_width,
      patch_size=patch,
      image_size=image,
      mlp_dim=4 * width,
      output_dim=out,
  )


def _text(width, layers, heads, out) -> TextConfig:
  return TextConfig(
      width=width, layers=layers, heads=heads, mlp_dim=4 * width, output_dim=out
  )


VARIANTS: dict[str, CLIPConfig] = {
    "ViT-L-14-336": CLIPConfig(
        vision=_vit(1024, 24, 14, 336, 768), text=_text(768, 12, 12, 768)
    ),
    "ViT-L-14-336-quickgelu": CLIPConfig(
        vision=_vit(1024, 24, 14, 336, 768),
        text=_text(768, 12, 12, 768),
        activation="quick_gelu",
    ),
    "ViT-L-14": CLIPConfig(
        vision=_vit(1024, 24, 14, 224, 768), text=_text(768, 12, 12, 768)
    ),
    "ViT-B-16": CLIPConfig(
        vision=_vit(768, 12, 16, 224, 512), text=_text(512, 12, 8, 512)
    ),
    "ViT-B-16-quickgelu": CLIPConfig(
        vision=_vit(768, 12, 16, 224, 512),
        text=_text(512, 12, 8, 512),
        activation="quick_gelu",
    ),
    "ViT-B-16-plus-240": CLIPConfig(
        vision=_vit(896, 12, 16, 240, 640), text=_text(640, 12, 10, 640)
    ),
    # Tiny random configs for tests and the offline demo.
    "tiny-test": CLIPConfig(
        vision=_vit(64, 4, 8, 32, 32, head_width=16),
        text=_text(32, 2, 4, 32),
    ),
    "tiny-test-quickgelu": CLIPConfig(
        vision=_vit(64, 4, 8, 32, 32, head_width=16),
        text=_text(32, 2, 4, 32),
        activation="quick_gelu",
    ),
}


def get_config(name: str, **overrides) -> CLIPConfig:
  """Returns the named variant, with `overrides` applied (see `replace`)."""
  if name not in VARIANTS:
    raise ValueError(
        f"unknown CLIP variant {name!r}; known: {sorted(VARIANTS)}"
    )
  return dataclasses.replace(VARIANTS[name], name=name).replace(**overrides)
