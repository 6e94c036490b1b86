r"""The bare CLIP vision tower against the machine's GEMM rate.

  python benchmarks/tower_rate.py --variant ViT-L-14-336 --size 336 \
      --rounds 3 --out benchmarks/results/tower_rate_cpu.json

Random weights, batch `--batch`, float32 (`--dtype`). Interleaved rounds of
(GEMM rate, tower, one residual block, the block's four GEMMs alone), so
every fraction divides by a rate measured seconds away:
  * tower fraction = XLA FLOPs of the tower / its time / GEMM rate;
  * block: the time of one residual block vs the time of its four GEMMs
    (qkv, out, fc1, fc2 at the same shapes, chained), the part the GEMMs do
    not explain being attention, softmax, LayerNorm, GELU and layout.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import gemm_rate  # noqa: E402

from moeclip_jax.models import clip, clip_config  # noqa: E402
from moeclip_jax.models import layers as L  # noqa: E402
from moeclip_jax.utils import io  # noqa: E402


def flops(fn, *args) -> float:
  return gemm_rate.xla_flops(jax.jit(fn).lower(*args).compile())


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--variant", default="ViT-L-14-336")
  p.add_argument("--size", type=int, default=336)
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  cfg = clip_config.get_config(args.variant, image_size=args.size,
                               dtype=args.dtype)
  v = cfg.vision
  tower = clip.VisionTransformer(cfg)
  rng = np.random.default_rng(0)
  pixels = jnp.asarray(rng.standard_normal((args.batch, args.size,
                                            args.size, 3)), jnp.float32)
  params = jax.jit(tower.init)(jax.random.key(0), pixels)
  run_tower = jax.jit(lambda p, x: tower.apply(p, x)["tokens"])

  n = args.batch * v.num_tokens
  block = L.ResidualBlock(cfg, v.width, v.heads, v.mlp_dim)
  x = jnp.asarray(rng.standard_normal((args.batch, v.num_tokens, v.width)),
                  args.dtype)
  bparams = jax.jit(block.init)(jax.random.key(1), x)
  run_block = jax.jit(lambda p, h: block.apply(p, h))
  w = {k: jnp.asarray(rng.standard_normal(s) * 0.02, args.dtype) for k, s in {
      "qkv": (v.width, 3 * v.width), "out": (v.width, v.width),
      "fc1": (v.width, v.mlp_dim), "fc2": (v.mlp_dim, v.width)}.items()}
  h2 = x.reshape(n, v.width)

  def gemms(w, h):  # the block's four GEMMs at their shapes, chained
    q = h @ w["qkv"]
    o = q[:, :v.width] @ w["out"]
    return (o @ w["fc1"]) @ w["fc2"]

  run_gemms = jax.jit(gemms)
  tower_flops = flops(lambda p, x: tower.apply(p, x)["tokens"], params,
                      pixels)
  block_flops = flops(lambda p, h: block.apply(p, h), bparams, x)
  gemm_flops = flops(gemms, w, h2)
  calls = {"tower": lambda: run_tower(params, pixels),
           "block": lambda: run_block(bparams, x),
           "gemms": lambda: run_gemms(w, h2)}
  for fn in calls.values():
    jax.block_until_ready(fn())
  times = {k: [] for k in calls}
  rates = []
  for _ in range(args.rounds):
    rates.append(gemm_rate.gemm_rates((args.dtype,), rounds=1)[args.dtype])
    for k, fn in calls.items():
      times[k].append(gemm_rate.time_call(fn, reps=2))
  rates.append(gemm_rate.gemm_rates((args.dtype,), rounds=1)[args.dtype])
  rate = float(np.median(rates)) * 1e9
  t = {k: float(np.median(v)) for k, v in times.items()}
  out = {
      "command": " ".join(["python"] + sys.argv), "cpu": gemm_rate.cpu_model(),
      "variant": args.variant, "size": args.size, "batch": args.batch,
      "dtype": args.dtype, "tokens": v.num_tokens,
      "gemm_gflops_median": rate / 1e9, "gemm_gflops_rounds": rates,
      "tower_s": t["tower"], "tower_tflop": tower_flops / 1e12,
      "tower_fraction": tower_flops / t["tower"] / rate,
      "block_s": t["block"], "block_gflop": block_flops / 1e9,
      "block_fraction": block_flops / t["block"] / rate,
      "block_gemms_s": t["gemms"], "block_gemms_gflop": gemm_flops / 1e9,
      "block_gemms_fraction": gemm_flops / t["gemms"] / rate,
      "block_time_not_in_gemms": 1.0 - t["gemms"] / t["block"],
      "block_flops_not_in_gemms": 1.0 - gemm_flops / block_flops,
  }
  print(json.dumps(out, indent=1))
  if args.out:
    io.write_json(args.out, out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
