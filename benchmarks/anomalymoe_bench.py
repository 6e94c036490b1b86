r"""AnomalyMoE eval forward: speed, first call and memory, ours vs official.

  python benchmarks/anomalymoe_bench.py --official PATH/TO/AnomalyMoE \
      --rounds 3 --out benchmarks/results/anomalymoe_cpu.json

`--official` is a user's clone of CASIA-LMC-Lab/AnomalyMoE (nothing of it
enters this repo). Without it only our side is timed.

One process, one expert loop (`--expert-loop`, default: the model default).
Order of work:
  1. AOT (`lower().compile()`, no run) memory and cost analysis of the jitted
     forward for every loop in `--aot-loops` (cheap: compile only);
  2. the official model is built with torch's default init and its weights
     are converted to ours (the same weights on both sides);
  3. our first call (compile + run) with RSS sampled every 20 ms: growth =
     peak RSS during the call - RSS just before it;
  4. the official first call (same measurement);
  5. `--rounds` interleaved steady-state rounds (ours, official, ours, ...);
     the median per side; ratio = official / ours (> 1: we are faster).
Outputs of the two sides are compared (max |diff| on the routing weights,
the patch decoders' last fused map, the global experts' outputs).

Both sides do what their eval call does: the official forward also runs the
backbone a second time on `image_ae` (its result is only used by the
training loss); ours does not.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from moeclip_jax.methods.anomalymoe import model as model_lib  # noqa: E402


def rss_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def timed_with_rss(fn):
  """(seconds, peak RSS growth in bytes) of one blocking call `fn()`."""
  base = rss_bytes()
  peak = [base]
  done = threading.Event()

  def sample():
    while not done.is_set():
      peak[0] = max(peak[0], rss_bytes())
      time.sleep(0.02)

  thread = threading.Thread(target=sample, daemon=True)
  thread.start()
  t0 = time.perf_counter()
  fn()
  seconds = time.perf_counter() - t0
  done.set()
  thread.join()
  peak[0] = max(peak[0], rss_bytes())
  return seconds, peak[0] - base


def cpu_name() -> str:
  try:
    for line in open("/proc/cpuinfo"):
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def inputs(batch: int, size: int, slots: int = 2):
  rng = np.random.default_rng(0)
  images = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
  images_ae = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
  masks = np.zeros((batch, slots, size, size), np.float32)
  masks[:, 0, : size // 2] = 1
  masks[:, 1, size // 2:, : size // 3] = 1
  return images, images_ae, masks


def forward_fn(module):
  def forward(params, images, images_ae, masks):
    return module.apply({"params": params}, images, images_ae, masks)
  return jax.jit(forward)


def aot_analysis(config, batch: int, loops) -> dict:
  """Per loop: compile seconds, temp / argument bytes, XLA flops."""
  size = config.image_size
  img = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  masks = jax.ShapeDtypeStruct((batch, 2, size, size), jnp.float32)
  out = {}
  for loop in loops:
    module = model_lib.AnomalyMoE(dataclasses.replace(config, expert_loop=loop))
    shapes = jax.eval_shape(module.init, jax.random.key(0), img, img, masks)
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          model_lib.nn.unbox(shapes)["params"])
    t0 = time.perf_counter()
    compiled = forward_fn(module).lower(params, img, img, masks).compile()
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis() or {}
    if isinstance(cost, list):
      cost = cost[0]
    out[loop] = {
        "compile_s": time.perf_counter() - t0,
        "temp_bytes": int(mem.temp_size_in_bytes),
        "argument_bytes": int(mem.argument_size_in_bytes),
        "output_bytes": int(mem.output_size_in_bytes),
        # A while loop (scan) is counted once, not per trip.
        "xla_flops_loop_body_once": float(cost.get("flops", 0.0)),
    }
    print(f"AOT {loop}: {out[loop]}", flush=True)
  return out


# ---- official side (a user's clone; imported from --official) -------------
def build_official(path: str, config):
  os.environ.setdefault("XFORMERS_DISABLED", "1")
  sys.path.insert(0, str(path))
  import functools  # pylint: disable=g-import-not-at-top

  from dinov2.models import vision_transformer as dv2  # pylint: disable=g-import-not-at-top
  from models.anomalymoe import AnomalyMoE  # pylint: disable=g-import-not-at-top
  from models.vision_transformer import Block, LinearAttention2, bMlp  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  width, heads = config.dims.width, config.dims.decoder_heads
  encoder = dv2.vit_base(patch_size=14, img_size=518, block_chunks=0,
                         init_values=1e-8, num_register_tokens=4,
                         interpolate_antialias=False, interpolate_offset=0.1)
  bottleneck = torch.nn.ModuleList([bMlp(width, width * 4, width, drop=0.2)])
  decoder = torch.nn.ModuleList([
      Block(dim=width, num_heads=heads, mlp_ratio=4.0, qkv_bias=True,
            norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-8),
            attn=LinearAttention2) for _ in range(8)])
  fusion = [list(g) for g in config.test_fusion]
  model = AnomalyMoE(
      encoder=encoder, bottleneck=bottleneck, decoder=decoder,
      num_patch_experts=config.num_patch_experts,
      num_global_experts=config.num_global_experts,
      num_component_experts=config.num_component_experts,
      topk=config.top_k, target_layers=list(config.target_layers),
      fuse_layer_encoder=fusion, fuse_layer_decoder=fusion)
  return model.eval()


def official_call(model, images, images_ae, masks):
  import torch  # pylint: disable=g-import-not-at-top
  st = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  ae = torch.from_numpy(images_ae.transpose(0, 3, 1, 2).copy())
  mlist = [torch.from_numpy(m.astype(np.uint8)) for m in masks]

  def call():
    with torch.no_grad():
      return model(st, ae, mlist)
  return call


def compare(ours, theirs) -> dict:
  """max |diff| of a few outputs (official channels-first -> NHWC)."""
  def nhwc(t):
    return np.asarray(t.detach().numpy()).transpose(0, 2, 3, 1)
  glob = theirs["expert_outputs"]["global"]["recon_outputs"]
  patch = theirs["expert_outputs"]["patch"]["recon_maps"]
  pairs = {
      "routing_weights": (np.asarray(ours["routing_weights"]),
                          theirs["routing_weights"].numpy()),
      "de_maps_last": (np.asarray(ours["de_maps"][:, -1]),
                       np.stack([nhwc(p["de_maps"][-1]) for p in patch])),
      "ae_out": (np.asarray(ours["ae_out"]),
                 np.stack([nhwc(g["ae_output"]) for g in glob])),
      "student_out": (np.asarray(ours["student_out"]),
                      np.stack([nhwc(g["student_output"]) for g in glob])),
  }
  return {k: float(np.max(np.abs(a - b))) for k, (a, b) in pairs.items()}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--official", default="",
                      help="path of a CASIA-LMC-Lab/AnomalyMoE clone")
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--expert-loop", default=None,
                      help="scan | vmap (default: the model default)")
  parser.add_argument("--aot-loops", default="scan,vmap")
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)

  config = model_lib.AnomalyMoEConfig()
  if args.expert_loop:
    config = dataclasses.replace(config, expert_loop=args.expert_loop)
  result = {
      "command": " ".join(["python"] + sys.argv),
      "machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                  "backend": jax.default_backend(),
                  "devices": [str(d) for d in jax.devices()][:1]},
      "batch": args.batch, "image_size": config.image_size,
      "expert_loop": config.expert_loop, "threads": args.threads,
  }
  loops = [x for x in args.aot_loops.split(",") if x]
  result["aot"] = aot_analysis(config, args.batch, loops)

  images, images_ae, masks = inputs(args.batch, config.image_size)
  module = model_lib.AnomalyMoE(config)
  official = None
  if args.official:
    import torch  # pylint: disable=g-import-not-at-top

    from moeclip_jax.convert import anomalymoe_official  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(args.threads)
    official = build_official(args.official, config)
    state = {k: v.detach().numpy() for k, v in official.state_dict().items()}
    params, _, _ = anomalymoe_official.convert_state(
        state, config, source_name="official (torch default init)")
    del state
  else:
    size = config.image_size
    params = jax.jit(module.init)(
        jax.random.key(0), jnp.zeros((1, size, size, 3)),
        jnp.zeros((1, size, size, 3)), jnp.zeros((1, 1, size, size)))
    params = model_lib.nn.unbox(params)["params"]
  params = jax.tree.map(jnp.asarray, params)
  fwd = forward_fn(module)
  args_ours = (params, jnp.asarray(images), jnp.asarray(images_ae),
               jnp.asarray(masks))
  box = {}

  def ours():
    box["ours"] = jax.block_until_ready(fwd(*args_ours))

  first_s, first_rss = timed_with_rss(ours)
  result["ours_first_call_s"], result["ours_first_call_rss_growth_bytes"] = (
      first_s, first_rss)
  print(f"ours first call {first_s:.1f} s, RSS +{first_rss / 1e9:.2f} GB",
        flush=True)
  if official is not None:
    call = official_call(official, images, images_ae, masks)

    def theirs():
      box["official"] = call()

    first_s, first_rss = timed_with_rss(theirs)
    result["official_first_call_s"] = first_s
    result["official_first_call_rss_growth_bytes"] = first_rss
    print(f"official first call {first_s:.1f} s, RSS +{first_rss / 1e9:.2f}"
          " GB", flush=True)
    result["max_abs_diff"] = compare(box["ours"], box["official"])
    print("max |diff|", result["max_abs_diff"], flush=True)
  times = {"ours": [], "official": []}
  for r in range(args.rounds):
    for name, fn in (("ours", ours), ("official", official and theirs)):
      if fn is None:
        continue
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
      print(f"round {r} {name} {times[name][-1]:.2f} s", flush=True)
  result["ours_s"] = times["ours"]
  result["ours_median_s"] = float(np.median(times["ours"]))
  if official is not None:
    result["official_s"] = times["official"]
    result["official_median_s"] = float(np.median(times["official"]))
    result["ratio_official_over_ours"] = (result["official_median_s"]
                                          / result["ours_median_s"])
    result["first_call_ratio_official_over_ours"] = (
        result["official_first_call_s"] / result["ours_first_call_s"])
  result["peak_rss_bytes"] = rss_bytes()
  print(json.dumps({k: v for k, v in result.items() if k != "aot"},
                   indent=1), flush=True)
  if args.out:
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(out)


if __name__ == "__main__":
  main()
