"""FOFS: frozen orthonormal frames over contiguous channel blocks.

MoECLIP's LoRA experts read the residual stream through a frozen `A` matrix
built as follows (spec/moeclip.md §4):

  * the `dim` input channels are cut into `num_experts` contiguous blocks of
    `dim // num_experts` channels; the first `dim % num_experts` blocks get one
    extra channel;
  * expert k draws G ~ N(0, 1) of shape [block_k, rank] and takes the reduced
    QR, G = Q R, so Q [block_k, rank] has orthonormal columns;
  * A_k is zero outside block k and holds Q there.

So A_k A_k^T = I_rank and the experts of one layer read disjoint channel
slices. Nothing here depends on data or on other weights.

Layout: we store A in the params tree as `fofs_a: [E, M, R]` (expert, input
channel, rank), i.e. the transpose of torch's `lora_A.weight` [R, M] per
expert, so the expert einsum is `BSM,EMR->BSER`.

The official code draws G from the global torch RNG, so its values cannot be
regenerated; a converted checkpoint carries them (`convert/moeclip_official`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def block_bounds(dim: int, num_experts: int) -> list[tuple[int, int]]:
  """Contiguous [start, end) channel blocks, remainder to the first blocks."""
  if num_experts <= 0 or dim < num_experts:
    raise ValueError(
        f"FOFS needs 1 <= num_experts <= dim, got {num_experts=} {dim=}"
    )
  base, rem = divmod(dim, num_experts)
  bounds, start = [], 0
  for k in range(num_experts):
    size = base + (1 if k < rem else 0)
    bounds.append((start, start + size))
    start += size
  return bounds


def _check_rank(dim: int, num_experts: int, rank: int) -> None:
  smallest = dim // num_experts
  if rank > smallest:
    raise ValueError(
        f"FOFS rank {rank} exceeds the smallest channel block ({smallest} = "
        f"{dim} // {num_experts}); no orthonormal frame exists"
    )


def fofs_numpy(
    dim: int, num_experts: int, rank: int, seed: int | np.random.Generator = 0
) -> np.ndarray:
  """FOFS frames with numpy (float64 QR, float32 result).

  Args:
    dim: input channels M.
    num_experts: E.
    rank: R.
    seed: int seed or a numpy Generator (one Gaussian draw per expert, in
      expert order).

  Returns:
    float32[E, M, R]; expert k is non-zero only on its channel block.
  """
  _check_rank(dim, num_experts, rank)
  rng = np.random.default_rng(seed)
  out = np.zeros((num_experts, dim, rank), np.float64)
  for k, (start, end) in enumerate(block_bounds(dim, num_experts)):
    gauss = rng.standard_normal((end - start, rank))  # [block, R]
    q, _ = np.linalg.qr(gauss)  # reduced: [block, R]
    out[k, start:end] = q
  return out.astype(np.float32)


def fofs_init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
  """Flax initializer for `fofs_a` [E, M, R] (jax QR, seeded by `key`).

  Args:
    key: PRNG key.
    shape: (E, M, R).
    dtype: result dtype.

  Returns:
    dtype[E, M, R], orthonormal columns per expert on contiguous blocks.
  """
  num_experts, dim, rank = shape
  _check_rank(dim, num_experts, rank)
  frames = []
  keys = jax.random.split(key, num_experts)
  for k, (start, end) in enumerate(block_bounds(dim, num_experts)):
    gauss = jax.random.normal(keys[k], (end - start, rank), jnp.float32)
    q, _ = jnp.linalg.qr(gauss, mode="reduced")  # [block, R]
    frames.append(
        jnp.pad(q, ((start, dim - end), (0, 0)))  # [M, R]
    )
  return jnp.stack(frames).astype(dtype)  # [E, M, R]


def from_torch_lora_a(weights: list[np.ndarray]) -> np.ndarray:
  """Stacks torch `lora_A.weight` matrices [R, M] into `fofs_a` [E, M, R]."""
  return np.stack([np.asarray(w).T for w in weights])
