r"""The machine's own GEMM rate in XLA, float32 vs bfloat16.

  python benchmarks/gemm_rate.py --rounds 5 --out benchmarks/results/gemm_rate_cpu.json

One jitted GEMM of the ViT-L/14@518 MLP shape (1370x1024 by 1024x4096;
`--shape M,K,N`), timed in interleaved rounds (f32, bf16, f32, ...) so both
dtypes see the same machine load; median GFLOP/s per dtype (2*M*K*N flops
a call) and the bf16/f32 ratio. The ratio is what the default-dtype policy
(`moeclip_jax/models/precision.py`) rests on; `benchmarks/suite.py` divides
its measured FLOP rates by these rates (efficiency).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from moeclip_jax.utils import io  # noqa: E402

VITL_MLP = (1370, 1024, 4096)


def gemm_fn(shape, dtype):
  """(jitted matmul, its two operands) of `shape` = (M, K, N) in `dtype`."""
  m, k, n = shape
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.standard_normal((m, k)), dtype)
  b = jnp.asarray(rng.standard_normal((k, n)), dtype)
  fn = jax.jit(jnp.matmul)
  jax.block_until_ready(fn(a, b))  # compile
  return fn, a, b


def time_call(fn, *args, reps: int = 3) -> float:
  """Best of `reps` wall seconds of one blocking call."""
  best = float("inf")
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t0)
  return best


def gemm_rates(dtypes=("float32", "bfloat16"), shape=VITL_MLP,
               rounds: int = 3, reps: int = 3) -> dict:
  """{dtype: median GFLOP/s over interleaved rounds}."""
  flops = 2.0 * shape[0] * shape[1] * shape[2]
  fns = {d: gemm_fn(shape, d) for d in dtypes}
  rates = {d: [] for d in dtypes}
  for _ in range(rounds):
    for d in dtypes:
      fn, a, b = fns[d]
      rates[d].append(flops / time_call(fn, a, b, reps=reps) / 1e9)
  return {d: float(np.median(r)) for d, r in rates.items()}


def xla_flops(compiled) -> float:
  """FLOPs of a compiled computation by XLA's cost analysis (0 if none)."""
  cost = compiled.cost_analysis() or {}
  if isinstance(cost, list):
    cost = cost[0] if cost else {}
  return float(cost.get("flops", 0.0))


def cpu_model() -> str:
  """`model name` of /proc/cpuinfo (else platform.processor())."""
  path = pathlib.Path("/proc/cpuinfo")
  if path.is_file():
    for line in path.read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
  """The bf16 / AVX-512 / AMX flags of /proc/cpuinfo."""
  path = pathlib.Path("/proc/cpuinfo")
  if not path.is_file():
    return []
  for line in path.read_text().splitlines():
    if line.startswith("flags"):
      return sorted(f for f in line.split(":", 1)[1].split()
                    if "bf16" in f or f.startswith(("avx512f", "amx")))
  return []


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--shape", default=",".join(map(str, VITL_MLP)))
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--reps", type=int, default=3)
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  shape = tuple(int(x) for x in args.shape.split(","))
  rates = gemm_rates(shape=shape, rounds=args.rounds, reps=args.reps)
  out = {"command": " ".join(["python"] + sys.argv),
         "backend": jax.default_backend(), "device": str(jax.devices()[0]),
         "cpu": cpu_model(), "cpu_flags": cpu_flags(), "shape": shape,
         "gflops": rates,
         "bf16_over_f32": rates["bfloat16"] / rates["float32"]}
  print(json.dumps(out, indent=1))
  if args.out:
    io.write_json(args.out, out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
