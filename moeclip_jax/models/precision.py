"""The default compute dtype, one policy for every method.

`"auto"`, the default of `CLIPConfig.dtype`, `MoECLIPConfig.dtype` and
`DinoV2Config.dtype`, resolves by the backend that runs the model:

  backend      dtype      why
  tpu          bfloat16   native bf16 MXU
  gpu / cuda   bfloat16   tensor cores (and half the memory traffic)
  rocm         bfloat16
  cpu          float32    measured: XLA's bf16 GEMM of the ViT-L MLP shape
                          runs at 0.83x its f32 GEMM on an AVX-512-bf16 AMD
                          EPYC (benchmarks/gemm_rate.py,
                          benchmarks/results/gemm_rate_cpu.json)

An explicit dtype ("float32", "bfloat16", "float16": `--dtype`, a training
config's `backbone.dtype` / `model.dtype`, a checkpoint's config.json)
always wins; `resolve` only fills in "auto". Parameters stay float32
(`param_dtype`); routers, LayerNorm statistics and softmax run in float32
whatever the compute dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

AUTO = "auto"
CONCRETE = ("float32", "bfloat16", "float16")
CHOICES = (AUTO,) + CONCRETE

# jax.default_backend() -> the dtype "auto" means there (see the table above).
BACKEND_DTYPES = {
    "tpu": "bfloat16",
    "gpu": "bfloat16",
    "cuda": "bfloat16",
    "rocm": "bfloat16",
    "cpu": "float32",
}
FALLBACK = "float32"  # any other backend


def resolve(dtype: str | None = AUTO, backend: str | None = None) -> str:
  """The concrete compute dtype name for `dtype` on `backend`.

  Args:
    dtype: "auto" / None (the policy) or a concrete name (returned as is).
    backend: a jax backend name; default `jax.default_backend()`.

  Raises:
    ValueError: an unknown dtype name.
  """
  if dtype is None or dtype == AUTO:
    return BACKEND_DTYPES.get(backend or jax.default_backend(), FALLBACK)
  if dtype not in CONCRETE:
    raise ValueError(f"dtype={dtype!r}; expected one of {CHOICES}")
  return dtype


def compute_dtype(dtype: str | None = AUTO) -> jnp.dtype:
  """`resolve(dtype)` as a jnp dtype (for the modules' `dtype=`)."""
  return jnp.dtype(resolve(dtype))
