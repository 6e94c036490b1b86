"""MoECLIP hyperparameters (frozen dataclasses) and the `faithful` presets.

`faithful="released"` reproduces the published training path: the official
`train.py` calls `model.eval()` and never leaves it, so the adapters run
deterministically (no LoRA dropout) and the ETF and load-balance terms are
identically 0. `faithful="paper"` runs the adapters in train mode (LoRA dropout
0.05) with the CLIP towers frozen in eval mode, and adds 0.01 * ETF +
0.01 * CV^2 (spec/moeclip.md §3, §5, §12).
"""

from __future__ import annotations

import dataclasses

from moeclip_jax.models import precision as precision_lib

FAITHFUL_MODES = ("released", "paper")
DOMAINS = ("industrial", "medical")


@dataclasses.dataclass(frozen=True)
class LossWeights:
  """Weights of the named loss terms; the ONE place they are combined.

  Attributes:
    ce: image cross-entropy on the detection head.
    seg: sum over the 12 maps of focal + dice(normal) + dice(abnormal).
    etf: simplex-ETF regulariser, summed over MoE layers.
    balance: load-balance CV^2, summed over MoE layers.
  """

  ce: float = 1.0
  seg: float = 1.0
  etf: float = 0.0
  balance: float = 0.0


@dataclasses.dataclass(frozen=True)
class MoECLIPConfig:
  """Adapter-side hyperparameters (the CLIP towers have their own config).

  Attributes:
    moe_layers: 0-based vision blocks followed by an MoE blend.
    feature_layers: 0-based vision blocks whose output (after the blend, if
      any) feeds the heads, in this order; one `seg_proj` each (the official
      `levels` 6/12/18/24, 1-based).
    num_experts: E.
    top_k: K.
    lora_rank: R.
    lora_alpha: experts are scaled by alpha / R.
    lora_dropout: LoRA input dropout, used only when the adapters run in train
      mode (`faithful="paper"`).
    capacity_factor: <= 0 dense dropless routing; > 0 capacity dispatch.
    use_fofs: frozen FOFS `A` (True) or trainable kaiming `A`.
    image_adapt_weight: w of the blend h <- w*m*|h|/(|m|+1e-6) + (1-w)*h.
    paa_radii: patch-average window sizes per layer (r x r, zero padding).
    proj_dim: joint embedding width of seg/det/text projections.
    det_kernel: taps of the detection head's depthwise 1-D conv.
    text_width: width of the frozen text tower's EOT features.
    faithful: "released" or "paper" (see the module docstring).
    dtype: compute dtype of the adapters (the router is always float32):
      "auto" (default; models/precision.py) or a concrete name.
  """

  moe_layers: tuple[int, ...] = (5, 11, 17, 23)
  feature_layers: tuple[int, ...] = (5, 11, 17, 23)
  num_experts: int = 4
  top_k: int = 2
  lora_rank: int = 8
  lora_alpha: float = 16.0
  lora_dropout: float = 0.05
  capacity_factor: float = 0.0
  use_fofs: bool = True
  image_adapt_weight: float = 0.1
  paa_radii: tuple[int, ...] = (1, 3, 5)
  proj_dim: int = 768
  det_kernel: int = 3
  text_width: int = 768
  faithful: str = "released"
  dtype: str = "auto"

  def __post_init__(self):
    precision_lib.resolve(self.dtype)  # ValueError on an unknown name
    if self.faithful not in FAITHFUL_MODES:
      raise ValueError(
          f"faithful={self.faithful!r}; expected one of {FAITHFUL_MODES}"
      )
    if not 1 <= self.top_k <= self.num_experts:
      raise ValueError(f"top_k={self.top_k} not in [1, {self.num_experts}]")
    if any(r < 1 or r % 2 == 0 for r in self.paa_radii):
      raise ValueError(f"paa_radii must be odd and >= 1: {self.paa_radii}")
    if self.paa_radii[0] != 1:
      raise ValueError("paa_radii must start with 1 (the detection head input)")
    if self.lora_rank <= 0:
      raise ValueError(f"lora_rank must be > 0, got {self.lora_rank}")

  @property
  def adapters_train_mode(self) -> bool:
    """True when the adapters run with dropout (paper mode)."""
    return self.faithful == "paper"

  @property
  def num_maps(self) -> int:
    return len(self.feature_layers) * len(self.paa_radii)

  def loss_weights(self) -> LossWeights:
    if self.faithful == "paper":
      return LossWeights(etf=0.01, balance=0.01)
    return LossWeights()

  def replace(self, **kwargs) -> "MoECLIPConfig":
    return dataclasses.replace(self, **kwargs)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "MoECLIPConfig":
    d = dict(d)
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f"unknown MoECLIPConfig fields: {sorted(unknown)}")
    for key in ("moe_layers", "feature_layers", "paa_radii"):
      if key in d:
        d[key] = tuple(d[key])
    return cls(**d)


# Learning rates of the two modes (trainer-side; kept here as documented
# values). The paper's 5e-4 is a third-party reading, not confirmed.
LEARNING_RATES = {"released": 5e-5, "paper": 5e-4}
