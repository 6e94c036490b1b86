"""The one logical-axis vocabulary and its default mapping onto mesh axes.

Every parameter and key activation in moeclip_jax carries logical axis names
(`nn.with_logical_partitioning` / `nn.with_logical_constraint`). Sharding a
model is then a rules table, never a model edit. Mesh axes are listed once
here: `data`, `fsdp`, `tensor`, `expert`.

Parameters:
  embed      model width (residual stream)
  mlp        MLP hidden width
  heads      attention heads
  head_dim   per-head width
  vocab      token vocabulary
  proj       joint (projected) embedding width
  pos        positional-table rows
  patch      flattened patch (kh * kw * channels) of the patch conv
  conv_k     spatial taps of a small conv kernel
  exp        expert index (MoE)
  lora_rank  LoRA rank (never sharded)
  norm       LayerNorm scale/bias (replicated)
Activations:
  act_batch, act_len, act_embed, act_heads, act_mlp, act_exp, act_cap
"""

from __future__ import annotations

MESH_AXES = ("data", "fsdp", "tensor", "expert")

# Logical name -> mesh axis (or tuple of axes, or None = replicated).
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("act_batch", ("data", "fsdp")),
    ("act_len", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_exp", "expert"),
    ("act_cap", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("head_dim", None),
    ("vocab", None),
    ("proj", None),
    ("pos", None),
    ("patch", None),
    ("conv_k", None),
    ("exp", "expert"),
    ("lora_rank", None),
    ("norm", None),
)

LOGICAL_AXES = tuple(name for name, _ in DEFAULT_RULES)
