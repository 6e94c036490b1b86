"""Mixture of low-rank (LoRA) experts on a token stream, with a top-k router.

This is MoECLIP's `BaseIndependentMoE` (spec/moeclip.md §3): a stand-alone
parallel adapter m(h) = sum_{k in top-K(h)} w_k(h) * (alpha / R) * B_k A_k h,
applied to every token (CLS included). The parent decides what to do with m
(MoECLIP blends it into the residual stream with a norm match).

Dimension legend (single letters appear only inside einsum strings):
  B  batch (images)            S  tokens per image
  M  input width               N  output width (= M here)
  E  experts                   K  experts chosen per token (top-k)
  R  LoRA rank                 C  per-expert capacity (capacity path only)

Parameters (paths inside this module; shapes):
  router/kernel  [M, E]     no bias, zero-initialised (trainable)
  fofs_a         [E, M, R]  FOFS frames (frozen: the optimizer labels every
                            path containing "fofs_a" frozen), or
  lora_a         [E, M, R]  kaiming-uniform, trainable (use_fofs=False)
  lora_b         [E, R, N]  zero-initialised (trainable)

Router: float32 logits -> float32 softmax -> `lax.top_k` -> the K chosen
probabilities renormalised to sum to 1. No noise, no jitter. On exact ties
`lax.top_k` keeps the lower expert indices (torch on CPU keeps the higher
ones, e.g. [2, 3] at the zero-initialised gate); forward outputs do not
depend on it while B = 0.

Two routing paths behind one interface:
  * dense, dropless (capacity_factor <= 0, default): every expert runs on every
    token and unselected experts get weight 0. E = 4, R = 8 makes this cheap,
    and it yields the all-expert outputs that the ETF loss needs for free.
  * capacity (capacity_factor > 0): GShard dispatch/combine masks per image,
    first choices of all tokens before second choices; tokens beyond an
    expert's capacity C are dropped (their weight for that expert is lost).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from moeclip_jax.models import fofs

# ---- einsum legend (see the module docstring) --------------------------------
ROUTER = "BSM,ME->BSE"  # nn.Dense "router", float32
SCATTER_WEIGHTS = "BSKE,BSK->BSE"  # top-k weights onto the E experts
CAPACITY_WEIGHTS = "BKSEC,BKS->BSEC"  # slot masks x routing weights
EXPERT_A = "BSM,EMR->BSER"
EXPERT_A_DROPOUT = "BSEM,EMR->BSER"  # per-expert dropout masks
EXPERT_B = "BSER,ERN->BSEN"
COMBINE_DENSE = "BSEN,BSE->BSN"
DISPATCH = "BSM,BSEC->EBCM"
CAPACITY_A = "EBCM,EMR->EBCR"
CAPACITY_B = "EBCR,ERN->EBCN"
COMBINE_CAPACITY = "EBCN,BSEC->BSN"


def expert_capacity(
    tokens: int, num_experts: int, top_k: int, capacity_factor: float
) -> int:
  """C = ceil(S * K * cf / E), rounded up to a multiple of 4, at most S."""
  cap = math.ceil(tokens * top_k * capacity_factor / num_experts)
  cap = max(4, 4 * math.ceil(cap / 4))
  return min(cap, tokens)


def route(
    logits: jax.Array, top_k: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Softmax + top-k + renormalisation, in float32.

  Args:
    logits: float[B, S, E].
    top_k: K.

  Returns:
    (probs f32[B, S, E], topk_weight f32[B, S, K] summing to 1,
     topk_idx int32[B, S, K] in descending order of probability).
  """
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)  # [B, S, E]
  weight, idx = jax.lax.top_k(probs, top_k)  # [B, S, K] x2
  weight = weight / jnp.sum(weight, axis=-1, keepdims=True)  # [B, S, K]
  return probs, weight, idx.astype(jnp.int32)


def dense_combine_weights(
    topk_weight: jax.Array, topk_idx: jax.Array, num_experts: int
) -> jax.Array:
  """Scatters the K routing weights onto E experts: [B, S, K] -> [B, S, E]."""
  onehot = jax.nn.one_hot(topk_idx, num_experts, dtype=topk_weight.dtype)
  return jnp.einsum(SCATTER_WEIGHTS, onehot, topk_weight)  # [B, S, E]


def capacity_masks(
    topk_weight: jax.Array, topk_idx: jax.Array, num_experts: int, capacity: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """GShard dispatch/combine masks, per image.

  Slots are filled in priority order: the first choices of tokens 0..S-1,
  then their second choices, and so on.

  Args:
    topk_weight: f32[B, S, K].
    topk_idx: int[B, S, K].
    num_experts: E.
    capacity: C.

  Returns:
    (dispatch f32[B, S, E, C] in {0, 1}, combine f32[B, S, E, C],
     kept f32[B, S, K]: 1 where the choice found a slot).
  """
  b, s, k = topk_idx.shape
  onehot = jax.nn.one_hot(topk_idx, num_experts, dtype=jnp.int32)  # [B,S,K,E]
  by_priority = onehot.transpose(0, 2, 1, 3).reshape(b, k * s, num_experts)
  position = jnp.cumsum(by_priority, axis=1) - 1  # [B, K*S, E]
  keep = by_priority * (position < capacity)  # [B, K*S, E]
  slots = jax.nn.one_hot(position, capacity, dtype=jnp.float32)  # [B,KS,E,C]
  slots = slots * keep[..., None].astype(jnp.float32)  # [B, K*S, E, C]
  weight = topk_weight.transpose(0, 2, 1).reshape(b, k * s)  # [B, K*S]
  slots = slots.reshape(b, k, s, num_experts, capacity)  # [B, K, S, E, C]
  dispatch = jnp.sum(slots, axis=1)  # [B, S, E, C]
  combine = jnp.einsum(
      CAPACITY_WEIGHTS, slots, weight.reshape(b, k, s)
  )  # [B, S, E, C]
  kept = jnp.sum(keep, axis=-1).reshape(b, k, s).transpose(0, 2, 1)
  return dispatch, combine, kept.astype(jnp.float32)  # kept: [B, S, K]


def lora_a_init(key, shape, dtype=jnp.float32):
  """torch kaiming_uniform(a=sqrt(5)) on [R, M] per expert: U(+-1/sqrt(M)).

  Args:
    key: PRNG key.
    shape: (E, M, R).
    dtype: result dtype.
  """
  bound = 1.0 / math.sqrt(shape[1])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


class MoELoRA(nn.Module):
  """Top-k routed mixture of LoRA experts (see the module docstring).

  Attributes:
    num_experts: E.
    top_k: K.
    rank: R.
    alpha: LoRA alpha; experts are scaled by alpha / R.
    dropout_rate: LoRA input dropout (one mask per expert), only when
      `deterministic=False`; needs the "dropout" RNG stream.
    capacity_factor: <= 0 selects the dense dropless path; > 0 the capacity
      dispatch/combine path.
    use_fofs: frozen FOFS `fofs_a` (default) or a trainable `lora_a`.
    dtype: compute dtype of the expert matmuls (the router is float32).
    param_dtype: storage dtype of the parameters.
    precision: matmul precision of the einsums.
  """

  num_experts: int = 4
  top_k: int = 2
  rank: int = 8
  alpha: float = 16.0
  dropout_rate: float = 0.0
  capacity_factor: float = 0.0
  use_fofs: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  precision: Any = None

  def _params(self, width: int):
    e, r = self.num_experts, self.rank
    router = nn.Dense(
        e, use_bias=False, dtype=jnp.float32, param_dtype=self.param_dtype,
        precision=self.precision, name="router",
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.zeros, ("embed", "exp")),
    )  # float32 logits: [.., M] -> [.., E]
    if self.use_fofs:
      a_name, a_init = "fofs_a", fofs.fofs_init
    else:
      a_name, a_init = "lora_a", lora_a_init
    lora_a = self.param(
        a_name,
        nn.with_logical_partitioning(a_init, ("exp", "embed", "lora_rank")),
        (e, width, r),
        self.param_dtype,
    )
    lora_b = self.param(
        "lora_b",
        nn.with_logical_partitioning(
            nn.initializers.zeros, ("exp", "lora_rank", "embed")
        ),
        (e, r, width),
        self.param_dtype,
    )
    return router, lora_a, lora_b

  def _dropout(self, x: jax.Array, deterministic: bool) -> jax.Array | None:
    """Per-expert dropout copies of x, or None when inactive."""
    if deterministic or self.dropout_rate <= 0.0:
      return None
    shape = x.shape[:-1] + (self.num_experts, x.shape[-1])  # [.., E, M]
    x_e = jnp.broadcast_to(x[..., None, :], shape)
    return nn.Dropout(self.dropout_rate)(x_e, deterministic=False)

  def _all_experts(self, x, lora_a, lora_b, deterministic) -> jax.Array:
    """Every expert on every token: [B, S, M] -> [B, S, E, N] (scaled)."""
    scale = self.alpha / self.rank
    x_e = self._dropout(x, deterministic)
    with jax.named_scope("expert_a"):
      if x_e is None:
        h = jnp.einsum(EXPERT_A, x, lora_a, precision=self.precision)
      else:
        h = jnp.einsum(EXPERT_A_DROPOUT, x_e, lora_a, precision=self.precision)
      # h: [B, S, E, R]
    with jax.named_scope("expert_b"):
      out = jnp.einsum(EXPERT_B, h, lora_b, precision=self.precision)
    return out * scale  # [B, S, E, N]

  def _capacity_path(self, x, lora_a, lora_b, weight, idx, deterministic):
    """Dispatch -> experts -> combine; returns ([B, S, N], dropped fraction)."""
    b, s, _ = x.shape
    cap = expert_capacity(s, self.num_experts, self.top_k, self.capacity_factor)
    with jax.named_scope("dispatch"):
      dispatch, combine, kept = capacity_masks(
          weight, idx, self.num_experts, cap)
      expert_in = jnp.einsum(
          DISPATCH, x, dispatch.astype(x.dtype), precision=self.precision
      )  # [E, B, C, M]
      expert_in = nn.with_logical_constraint(
          expert_in, ("act_exp", "act_batch", "act_cap", "act_embed")
      )
      if not deterministic and self.dropout_rate > 0.0:
        expert_in = nn.Dropout(self.dropout_rate)(
            expert_in, deterministic=False)
    with jax.named_scope("expert_a"):
      h = jnp.einsum(CAPACITY_A, expert_in, lora_a, precision=self.precision)
    with jax.named_scope("expert_b"):
      y = jnp.einsum(CAPACITY_B, h, lora_b, precision=self.precision)
      y = y * (self.alpha / self.rank)  # [E, B, C, N]
    with jax.named_scope("combine"):
      out = jnp.einsum(
          COMBINE_CAPACITY, y, combine.astype(y.dtype), precision=self.precision
      )  # [B, S, N]
    dropped = 1.0 - jnp.mean(kept)
    return out, dropped

  @nn.compact
  def __call__(
      self,
      x: jax.Array,
      *,
      deterministic: bool = True,
      return_expert_outputs: bool = False,
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Routes every token to its top-k experts.

    Args:
      x: float[B, S, M] token stream.
      deterministic: False enables LoRA dropout (RNG stream "dropout").
      return_expert_outputs: also return every expert's output (ETF input).

    Returns:
      (m: [B, S, M] mixture output in x.dtype, aux) with aux keys
      router_logits f32[B, S, E], router_probs f32[B, S, E],
      topk_idx int32[B, S, K], topk_weight f32[B, S, K]; `expert_outputs`
      [B, S, E, N] when asked; `dropped_fraction` [] on the capacity path.
    """
    width = x.shape[-1]
    router, lora_a, lora_b = self._params(width)
    with jax.named_scope("router"):
      logits = router(x.astype(jnp.float32))  # ROUTER: [B, S, E]
      probs, weight, idx = route(logits, self.top_k)
    aux = {"router_logits": logits, "router_probs": probs,
           "topk_idx": idx, "topk_weight": weight}
    xc = x.astype(self.dtype)
    lora_a = lora_a.astype(self.dtype)
    lora_b = lora_b.astype(self.dtype)
    all_out = None
    if self.capacity_factor <= 0 or return_expert_outputs:
      all_out = self._all_experts(xc, lora_a, lora_b, deterministic)
    if self.capacity_factor <= 0:
      combine = dense_combine_weights(weight, idx, self.num_experts)
      with jax.named_scope("combine"):
        out = jnp.einsum(
            COMBINE_DENSE, all_out, combine.astype(all_out.dtype),
            precision=self.precision,
        )  # [B, S, N]
    else:
      out, aux["dropped_fraction"] = self._capacity_path(
          xc, lora_a, lora_b, weight, idx, deterministic
      )
    if return_expert_outputs:
      aux["expert_outputs"] = all_out
    return out.astype(x.dtype), aux
