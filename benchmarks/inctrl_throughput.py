r"""InCTRL throughput at K = 8 on the real ViT-B-16-plus-240 config.

  python benchmarks/inctrl_throughput.py --shots 8 --batch 8 --reps 3 \
      --out benchmarks/inctrl_throughput.json

Random weights (speed does not depend on their values). Measured in one run:
  * ours: queries/s with the K prompt features and the class text features
    cached (query encode + scoring only);
  * official-style: per query, the text tower over the class's 242 prompts
    and the K prompt images re-encoded (what `InCTRL.forward` does on every
    call), derived from the measured text pass and prompt encode times;
  * ratios: text caching alone, and the whole difference.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from moeclip_jax.methods.inctrl import model as M
from moeclip_jax.methods.inctrl import prompts as inctrl_prompts
from moeclip_jax.models import clip_config


def _time(fn, reps: int) -> float:
  """Median wall seconds of `fn()` (blocked) after one warm-up call."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def run(shots: int, batch: int, reps: int, variant: str,
        layers=M.DEFAULT_LAYERS) -> dict:
  config = clip_config.get_config(variant)
  model = M.InCTRL(clip_config=config, feature_layers=tuple(layers))
  variables = jax.jit(lambda r: M.init_variables(model, r, shots=shots))(
      jax.random.key(0))
  s = config.vision.image_size
  rng = np.random.default_rng(0)
  queries = jnp.asarray(rng.standard_normal((batch, s, s, 3), np.float32))
  prompt_px = jnp.asarray(rng.standard_normal((shots, s, s, 3), np.float32))
  n_text = sum(len(t) for t in inctrl_prompts.get_texts("bottle"))  # 242
  ids = jnp.asarray(rng.integers(1, 49407, (n_text, 77)), jnp.int32)
  ids = ids.at[:, -1].set(49407)

  enc_text = jax.jit(lambda v, x: model.apply(v, x,
                                              method=M.InCTRL.encode_text))
  enc_img = jax.jit(lambda v, x: model.apply(v, x,
                                             method=M.InCTRL.encode_prompts))
  score = jax.jit(lambda v, q, p, t: model.apply(v, q, p, t)[0])
  text = M.class_text_features(*jnp.split(enc_text(variables, ids), [154]))
  prompt_feats = enc_img(variables, prompt_px)
  score_cached = jax.jit(lambda v, q, p, t: model.apply(
      v, model.apply(v, q, method=M.InCTRL.encode_images), p, t,
      method=M.InCTRL.score_features)[0])

  t_batch = _time(lambda: score_cached(variables, queries, prompt_feats,
                                       text), reps)
  t_text = _time(lambda: enc_text(variables, ids), max(1, reps // 2))
  t_prompts = _time(lambda: enc_img(variables, prompt_px), reps)
  t_full = _time(lambda: score(variables, queries[:1], prompt_px, text), reps)
  per_query = t_batch / batch
  official = t_text + t_full  # text pass + (query + K prompts) per query
  return {
      "variant": variant, "shots": shots, "batch": batch, "reps": reps,
      "device": str(jax.devices()[0]), "num_text_prompts": n_text,
      "queries_per_s_cached": 1.0 / per_query,
      "queries_per_s_official_style": 1.0 / official,
      "seconds_text_pass_242_prompts": t_text,
      "seconds_encode_k_prompts": t_prompts,
      "seconds_batch_cached": t_batch,
      "seconds_query_with_prompt_encode_b1": t_full,
      "speedup_text_cache": (per_query + t_text) / per_query,
      "speedup_total": official / per_query,
  }


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--shots", type=int, default=8)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--reps", type=int, default=3)
  p.add_argument("--variant", default="ViT-B-16-plus-240")
  p.add_argument("--layers", default="6,8,10",
                 help="feature layers (use 1,2,3 with tiny-test)")
  p.add_argument("--out", default="inctrl_throughput.json")
  args = p.parse_args(argv)
  result = run(args.shots, args.batch, args.reps, args.variant,
               [int(x) for x in args.layers.split(",")])
  pathlib.Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
  print(json.dumps(result, indent=2))
  return 0


if __name__ == "__main__":
  main()
