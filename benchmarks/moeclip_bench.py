r"""MoECLIP speed: eval images/s and train step time, f32 vs bf16.

  python benchmarks/moeclip_bench.py --configs tiny,vitl518 --out moeclip_bench.json
  # CPU with < 32 GB RAM: time ViT-L@518 evaluation only
  python benchmarks/moeclip_bench.py --configs tiny,vitl518 --train-configs tiny

Random weights (speed does not depend on them). For each config and dtype:
jitted eval forward (anomaly map + image score) on a batch, and the jitted
train step (forward, backward, Adam). Ratios are reported against float32 of
the same config in the same run. Compile time is measured separately and
excluded from the rates.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = {
    "tiny": dict(variant="tiny-test", image_size=64, layers=(1, 3),
                 proj_dim=32, batch=8),
    "vitl518": dict(variant="ViT-L-14-336", image_size=518,
                    layers=(5, 11, 17, 23), proj_dim=768, batch=2),
}


def _config(name: str, dtype: str):
  path = REPO / "configs" / "moeclip_vitl14_336.py"
  spec = importlib.util.spec_from_file_location("cfg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  s = CONFIGS[name]
  c.backbone.variant, c.backbone.image_size = s["variant"], s["image_size"]
  c.backbone.dtype = dtype
  c.model.moe_layers = c.model.feature_layers = s["layers"]
  c.model.proj_dim = s["proj_dim"]
  c.model.dtype = dtype
  return c, s["batch"]


def _time(fn, reps: int) -> float:
  """Median seconds of `fn()` (which must block)."""
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def bench(name: str, dtype: str, reps: int, train: bool = True,
          remat: str = "none") -> dict:
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  from moeclip_jax.methods.moeclip import method as method_lib  # pylint: disable=g-import-not-at-top
  from moeclip_jax.optim import masks, optimizers  # pylint: disable=g-import-not-at-top
  from moeclip_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  from moeclip_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top

  config, batch = _config(name, dtype)
  config.backbone.remat = remat
  method = method_lib.MoECLIPMethod(config)
  params = jax.jit(lambda r: nn.unbox(method.init_fn(r)))(jax.random.key(0))
  context = method.make_context(params, ["bottle"])
  size = method.image_size
  rng = np.random.default_rng(0)
  data = {
      "image": jnp.asarray(rng.standard_normal((batch, size, size, 3)), jnp.float32),
      "mask": jnp.asarray(rng.random((batch, size, size)) > 0.9, jnp.float32),
      "label": jnp.asarray(np.arange(batch) % 2, jnp.int32),
      "class_id": jnp.zeros((batch,), jnp.int32),
  }
  predict = jax.jit(method.predict_fn)
  t0 = time.perf_counter()
  jax.block_until_ready(predict(params, data, context))
  compile_eval = time.perf_counter() - t0
  eval_s = _time(lambda: jax.block_until_ready(predict(params, data, context)), reps)
  row = {"config": name, "dtype": dtype, "batch": batch, "image_size": size,
         "remat": remat, "eval_images_per_s": batch / eval_s,
         "eval_batch_s": eval_s, "compile_eval_s": compile_eval}
  if not train:
    return row

  labels = masks.labels(params, method.trainable_patterns, method.frozen_patterns)
  tx = optimizers.make_tx(config.optim, labels)
  state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                               opt_state=tx.init(params))
  step = jax.jit(functools.partial(step_lib.train_step, loss_fn=method.loss_fn,
                                   tx=tx, param_labels=labels),
                 donate_argnums=(0,))
  key = jax.random.key(1)
  t0 = time.perf_counter()
  state, _ = step(state, data, context, key)
  jax.block_until_ready(state)
  compile_train = time.perf_counter() - t0

  def one_step():
    nonlocal state
    state, m = step(state, data, context, key)
    jax.block_until_ready(m)

  row.update(train_step_s=_time(one_step, reps), compile_train_s=compile_train)
  return row


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--configs", default="tiny", help="comma list of " + ",".join(CONFIGS))
  p.add_argument("--dtypes", default="float32,bfloat16")
  p.add_argument("--reps", type=int, default=3)
  p.add_argument("--train-configs", default=None,
                 help="configs whose train step is timed (default: all); "
                 "ViT-L@518 training needs ~25 GB host RAM on CPU")
  p.add_argument("--remat", default="none", help="none | blocks")
  p.add_argument("--out", default="moeclip_bench.json")
  args = p.parse_args(argv)
  train_configs = (args.train_configs or args.configs).split(",")
  rows = []
  for name in args.configs.split(","):
    ref = None
    for dtype in args.dtypes.split(","):
      row = bench(name, dtype, args.reps, name in train_configs, args.remat)
      ref = ref or row
      row["eval_speedup_vs_f32"] = row["eval_images_per_s"] / ref["eval_images_per_s"]
      if "train_step_s" in row:
        row["train_speedup_vs_f32"] = ref["train_step_s"] / row["train_step_s"]
      print(json.dumps(row))
      rows.append(row)
  meta = {"backend": jax.default_backend(), "devices": str(jax.devices()),
          "jax": jax.__version__}
  pathlib.Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows},
                                               indent=2) + "\n")
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
