r"""One performance suite for CPU, GPU and TPU (issue #23, item 6).

  python benchmarks/suite.py --quick                     # tiny models, ~minutes
  python benchmarks/suite.py --methods moeclip --sizes 518,336,168 \
      --batches 1,2 --dtypes float32                     # ViT-L/14 MoECLIP
  python benchmarks/suite.py --methods moeclip --sizes 518 \
      --batches 1,2,4,8,16,32,64 --dtypes bfloat16       # on a GPU / TPU
  python benchmarks/suite.py --methods anomalymoe --batches 2 \
      --official anomalymoe=PATH/TO/AnomalyMoE           # + official ratio

Per setting (method x image size x batch x dtype), random weights, one
process:
  * eval: `method.predict_fn` (maps + scores) jitted; compile seconds (AOT
    `lower().compile()`), XLA `cost_analysis()` FLOPs, first call, then the
    median of `--rounds` calls -> images/s; peak memory from
    `device.memory_stats()` where the backend has it, else the RSS growth of
    the first call (CPU);
  * train (`--train`, default on): the trainer's step (forward, backward,
    optimizer) jitted with the state donated, at batch max(B, 2) (InCTRL's
    BatchNorm trains on 2+ samples); median ms of `--rounds` steps;
  * efficiency = FLOPs / median time / the reference rate: on CPU the XLA
    GEMM rate of the same dtype (benchmarks/gemm_rate.py) measured just
    before and just after the setting's rounds (their mean); on an
    accelerator the chip's dense bf16 peak (PEAK_TFLOPS), i.e. MFU;
  * `--official METHOD=PATH`: the official PyTorch model of a user's clone
    (nothing of it enters this repo), same weights, interleaved rounds;
    ratio = official / ours (> 1: we are faster). Only AnomalyMoE has an
    official-model builder here (benchmarks/anomalymoe_bench.py).

Writes `--out` (default benchmarks/results/suite_<host>.json), the same name
with .md (markdown table) and .png (images/s against batch, one panel per
method and size, a line per dtype; official in grey). `--quick` is the tiny
setting the unit test (tests/test_benchmark_suite.py) checks for plumbing;
no number of it is asserted.

XLA counts a `scan` body once, not once per trip, so the FLOPs (and the
efficiency) of AnomalyMoE's scanned expert loop are a lower bound.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import pathlib
import platform
import socket
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(HERE)]

import anomalymoe_bench  # noqa: E402
import flax.linen as nn  # noqa: E402
import gemm_rate  # noqa: E402

from moeclip_jax.methods import registry  # noqa: E402
from moeclip_jax.models import precision  # noqa: E402
from moeclip_jax.train import aot  # noqa: E402
from moeclip_jax.train import state as state_lib  # noqa: E402
from moeclip_jax.train import step as step_lib  # noqa: E402
from moeclip_jax.utils import io  # noqa: E402

# device_kind substring -> dense bf16 peak TFLOP/s (vendor datasheets; SXM
# parts for the GPUs). MFU divides by this for every dtype.
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,  # v5e
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v5": 459.0,  # v5p reports "TPU v5"
    "TPU v6 lite": 918.0,  # v6e (Trillium)
    "TPU v6e": 918.0,
}

# method -> (config file, get_config arg, per-size config edit). The full
# configs are the papers' models; --quick swaps in the tiny ones (QUICK).
METHOD_CONFIGS = {
    "moeclip": ("moeclip_vitl14_336.py", None),
    "inctrl": ("inctrl_vitb16p_240.py", None),
    "anomalymoe": ("anomalymoe_dinov2_b14.py", None),
}
QUICK_CONFIGS = {
    "moeclip": ("moeclip_tiny.py", None),
    "inctrl": ("inctrl_vitb16p_240.py", "tiny"),
    "anomalymoe": ("anomalymoe_dinov2_b14.py", "tiny"),
}
# method -> image sizes of the default / quick runs (AnomalyMoE: 392 only).
SIZES = {"moeclip": (518, 336, 168), "inctrl": (240,), "anomalymoe": (392,)}
QUICK_SIZES = {"moeclip": (32, 64), "inctrl": (32,), "anomalymoe": (392,)}
CLASSES = ["bottle"]


# ---- building one setting -------------------------------------------------
def load_config(name: str, arg=None):
  path = REPO / "configs" / name
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def method_config(method: str, size: int, dtype: str, quick: bool):
  name, arg = (QUICK_CONFIGS if quick else METHOD_CONFIGS)[method]
  config = load_config(name, arg)
  config.backbone.dtype = dtype
  if method == "moeclip":
    config.model.dtype = dtype  # the adapters
  if method != "anomalymoe":
    config.backbone.image_size = size
  elif size != 392:
    raise ValueError(f"anomalymoe runs at 392 px only, got {size}")
  return config


def random_batch(method, batch: int, seed: int = 0) -> dict:
  """Concrete arrays of the train step's batch fields (aot.BATCH_FIELDS)."""
  rng = np.random.default_rng(seed)
  out = {}
  for key, sds in aot.abstract_batch(method, batch).items():
    if jnp.issubdtype(sds.dtype, jnp.floating):
      value = rng.standard_normal(sds.shape).astype(np.float32)
      if "mask" in key:
        value = (value > 1.0).astype(np.float32)
    else:  # labels alternate 0 / 1; every image of class 0
      value = np.arange(sds.shape[0]) % 2 * (key == "label")
    out[key] = jnp.asarray(value, sds.dtype)
  return out


def eval_context(method, params):
  context = method.make_context(params, CLASSES)
  if hasattr(method, "with_prompt_features"):  # InCTRL: K prompt images
    s, k = method.image_size, method.shots
    pixels = np.zeros((len(CLASSES), k, s, s, 3), np.uint8)
    context = method.with_prompt_features(params, context, pixels)
  return context


@dataclasses.dataclass
class Setting:
  method: str
  size: int
  batch: int
  dtype: str  # as asked ("auto" allowed)

  @property
  def compute_dtype(self) -> str:
    return precision.resolve(self.dtype)


# ---- measuring ------------------------------------------------------------
def device_peak_bytes() -> int | None:
  stats = jax.devices()[0].memory_stats()
  if not stats:
    return None
  return int(stats.get("peak_bytes_in_use", stats.get("bytes_in_use", 0)))


def median_seconds(fn, rounds: int) -> float:
  times = []
  for _ in range(rounds):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def peak_tflops(device) -> float | None:
  kind = getattr(device, "device_kind", "")
  for key, value in PEAK_TFLOPS.items():
    if key.lower() in kind.lower():
      return value
  return None


class Reference:
  """The rate an achieved FLOP rate is divided by (see the module doc)."""

  def __init__(self, gemm_rounds: int = 1):
    self.device = jax.devices()[0]
    self.peak = (None if jax.default_backend() == "cpu"
                 else peak_tflops(self.device))
    self.gemm_rounds = gemm_rounds

  def around(self, dtype: str, fn):
    """(fn(), reference GFLOP/s, its kind): CPU GEMM rate before + after."""
    if jax.default_backend() != "cpu":
      value = fn()
      rate = None if self.peak is None else self.peak * 1e3
      return value, rate, "chip bf16 peak" if rate else "unknown chip"
    before = gemm_rate.gemm_rates((dtype,), rounds=self.gemm_rounds)[dtype]
    value = fn()
    after = gemm_rate.gemm_rates((dtype,), rounds=self.gemm_rounds)[dtype]
    return value, 0.5 * (before + after), f"XLA {dtype} GEMM"


def measure_eval(method, params, context, setting, rounds):
  batch = random_batch(method, setting.batch)
  images = batch.get("image", batch.get("query"))
  eval_batch = {"image": images, "class_id": batch["class_id"]}
  t0 = time.perf_counter()
  compiled = jax.jit(method.predict_fn).lower(params, eval_batch,
                                              context).compile()
  compile_s = time.perf_counter() - t0
  call = lambda: compiled(params, eval_batch, context)
  first_s, rss_growth = anomalymoe_bench.timed_with_rss(
      lambda: jax.block_until_ready(call()))
  seconds = median_seconds(call, rounds)
  peak = device_peak_bytes()
  return {
      "eval_compile_s": compile_s, "eval_first_call_s": first_s,
      "eval_batch_s": seconds, "images_per_s": setting.batch / seconds,
      "eval_flops": gemm_rate.xla_flops(compiled),
      "peak_bytes": peak if peak is not None else rss_growth,
      "peak_kind": ("device peak_bytes_in_use" if peak is not None
                    else "RSS growth, first call"),
  }


def measure_train(method, config, params, context, setting, rounds):
  labels = aot.param_labels(method, params)
  tx = aot.make_tx(method, config.optim, labels)
  state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                               opt_state=jax.jit(tx.init)(params))
  # InCTRL's BatchNorm trains on 2+ samples: batch-1 settings train at 2.
  train_batch = max(setting.batch, 2)
  batch = random_batch(method, train_batch, seed=1)
  fn = jax.jit(lambda s, b, c, r: step_lib.train_step(
      s, b, c, r, loss_fn=method.loss_fn, tx=tx, param_labels=labels),
               donate_argnums=(0,))
  rng = jax.random.key(1)
  t0 = time.perf_counter()
  compiled = fn.lower(state, batch, context, rng).compile()
  compile_s = time.perf_counter() - t0
  box = {"state": state}

  def one():
    box["state"], metrics = compiled(box["state"], batch, context, rng)
    return metrics

  jax.block_until_ready(one())
  seconds = median_seconds(one, rounds)
  return {"train_batch": train_batch, "train_compile_s": compile_s,
          "train_step_ms": 1e3 * seconds, "train_flops": gemm_rate.xla_flops(compiled)}


def official_ratio(path: str, method, setting, rounds):
  """Interleaved official / ours eval rounds (AnomalyMoE only)."""
  if setting.method != "anomalymoe":
    raise ValueError(f"--official: no official-model builder for "
                     f"{setting.method} in benchmarks/ (anomalymoe only)")
  import torch  # pylint: disable=g-import-not-at-top

  from moeclip_jax.convert import anomalymoe_official  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count())
  official = anomalymoe_bench.build_official(path, method.config)
  state = {k: v.detach().numpy() for k, v in official.state_dict().items()}
  weights, _, _ = anomalymoe_official.convert_state(
      state, method.config, source_name="official (torch default init)")
  images, images_ae, masks = anomalymoe_bench.inputs(setting.batch,
                                                     setting.size)
  theirs = anomalymoe_bench.official_call(official, images, images_ae, masks)
  fwd = anomalymoe_bench.forward_fn(method.module)
  args = (jax.tree.map(jnp.asarray, weights), jnp.asarray(images),
          jnp.asarray(images_ae), jnp.asarray(masks))
  jax.block_until_ready(fwd(*args))
  times = {"ours": [], "official": []}
  for _ in range(rounds):
    for name, fn in (("ours", lambda: jax.block_until_ready(fwd(*args))),
                     ("official", theirs)):
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
  ours, off = (float(np.median(times[k])) for k in ("ours", "official"))
  return {"official_batch_s": off, "official_forward_ours_s": ours,
          "ratio_official_over_ours": off / ours}


def run_setting(setting: Setting, args) -> dict:
  config = method_config(setting.method, setting.size, setting.dtype,
                         args.quick)
  method = registry.make_method(config)
  params = nn.unbox(jax.jit(method.init_fn)(jax.random.key(0)))
  params = method.load_pretrained(params)
  context = eval_context(method, params)
  row = {**dataclasses.asdict(setting),
         "compute_dtype": setting.compute_dtype}
  reference = args.reference

  def work():
    out = measure_eval(method, params, context, setting, args.rounds)
    if args.train and setting.method in args.train_methods:
      out.update(measure_train(method, config, params, context, setting,
                               args.rounds))
    return out

  measured, rate, kind = reference.around(setting.compute_dtype, work)
  row.update(measured, reference_gflops=rate, reference_kind=kind)
  if rate:
    row["eval_efficiency"] = (row["eval_flops"] / row["eval_batch_s"]
                              / (rate * 1e9))
    if "train_step_ms" in row:
      row["train_efficiency"] = (row["train_flops"]
                                 / (row["train_step_ms"] / 1e3) / (rate * 1e9))
  official = dict(args.official).get(setting.method)
  if official:
    row.update(official_ratio(official, method, setting, args.rounds))
  return row


# ---- outputs --------------------------------------------------------------
def machine() -> dict:
  device = jax.devices()[0]
  return {"host": socket.gethostname(), "backend": jax.default_backend(),
          "device": getattr(device, "device_kind", str(device)),
          "device_count": jax.device_count(), "cpu": gemm_rate.cpu_model(),
          "cpu_flags": gemm_rate.cpu_flags(), "cores": os.cpu_count(),
          "python": platform.python_version(), "jax": jax.__version__}


COLUMNS = (
    ("method", "method", "{}"), ("size", "px", "{}"), ("batch", "batch", "{}"),
    ("compute_dtype", "dtype", "{}"), ("images_per_s", "images/s", "{:.3g}"),
    ("eval_compile_s", "compile s", "{:.1f}"),
    ("peak_bytes", "peak MB", lambda v: f"{v / 1e6:.0f}"),
    ("train_batch", "train batch", "{}"),
    ("train_step_ms", "train ms", "{:.4g}"),
    ("eval_efficiency", "eval eff.", "{:.1%}"),
    ("train_efficiency", "train eff.", "{:.1%}"),
    ("reference_gflops", "ref GFLOP/s", "{:.4g}"),
    ("ratio_official_over_ours", "x official", "{:.2f}"),
)


def markdown(result: dict) -> str:
  m = result["machine"]
  lines = [f"# benchmarks/suite.py on {m['device']} ({m['backend']}; CPU "
           f"{m['cpu']}, {m['cores']} cores)", "",
           f"`{result['command']}`", "",
           "| " + " | ".join(c[1] for c in COLUMNS) + " |",
           "|" + "---|" * len(COLUMNS)]
  for row in result["rows"]:
    cells = []
    for key, _, fmt in COLUMNS:
      value = row.get(key)
      if value is None:
        cells.append("–")
      else:
        cells.append(fmt(value) if callable(fmt) else fmt.format(value))
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", "efficiency = XLA cost_analysis FLOPs / time / ref "
            "(CPU: the XLA GEMM rate of the dtype, measured around the "
            "setting; accelerator: chip bf16 peak = MFU)."]
  return "\n".join(lines) + "\n"


def chart(rows, path) -> None:
  """images/s vs batch, one panel per (method, size), a line per dtype."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  panels = sorted({(r["method"], r["size"]) for r in rows})
  w, h, pad = 420, 220, 40
  image = Image.new("RGB", (w, h * max(len(panels), 1)), "white")
  draw = ImageDraw.Draw(image)
  colours = [(52, 101, 164), (204, 0, 0), (78, 154, 6), (117, 80, 123)]
  for i, (method, size) in enumerate(panels):
    top = i * h
    sub = [r for r in rows if (r["method"], r["size"]) == (method, size)]
    series = {}
    for r in sub:
      series.setdefault(r["compute_dtype"], []).append(
          (r["batch"], r["images_per_s"]))
      if r.get("official_batch_s"):
        series.setdefault("official", []).append(
            (r["batch"], r["batch"] / r["official_batch_s"]))
    batches = sorted({b for pts in series.values() for b, _ in pts})
    ymax = max(v for pts in series.values() for _, v in pts) * 1.1
    x = lambda b: pad + (batches.index(b) + 0.5) * (w - 2 * pad) / len(batches)
    y = lambda v: top + h - pad - v / ymax * (h - 2 * pad)
    draw.text((pad, top + 6), f"{method} @ {size} px: images/s vs batch",
              fill="black")
    draw.line((pad, top + h - pad, w - pad, top + h - pad), fill="black")
    draw.line((pad, top + pad, pad, top + h - pad), fill="black")
    draw.text((4, top + pad - 6), f"{ymax:.3g}", fill="black")
    for b in batches:
      draw.text((x(b) - 4, top + h - pad + 4), str(b), fill="black")
    for j, (name, pts) in enumerate(sorted(series.items())):
      colour = (150, 150, 150) if name == "official" else colours[j % 4]
      pts = sorted(pts)
      xy = [(x(b), y(v)) for b, v in pts]
      if len(xy) > 1:
        draw.line(xy, fill=colour, width=2)
      for px, py in xy:
        draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=colour)
      draw.text((w - pad - 90, top + 20 + 12 * j), name, fill=colour)
  io.write_bytes(path, _png_bytes(image))


def _png_bytes(image) -> bytes:
  import io as std_io  # pylint: disable=g-import-not-at-top
  buf = std_io.BytesIO()
  image.save(buf, format="PNG")
  return buf.getvalue()


# ---- command line ---------------------------------------------------------
def _ints(text: str) -> tuple[int, ...]:
  return tuple(int(x) for x in text.split(",") if x)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true",
                 help="tiny models (tests, smoke runs; ~minutes on 2 cores)")
  p.add_argument("--methods", default="moeclip,inctrl,anomalymoe")
  p.add_argument("--sizes", default="",
                 help="image sizes (default: each method's own; quick: tiny)")
  p.add_argument("--batches", default="1,2")
  p.add_argument("--dtypes", default="auto",
                 help="comma list of auto,float32,bfloat16,float16")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--gemm-rounds", type=int, default=1)
  p.add_argument("--train", action=argparse.BooleanOptionalAction,
                 default=True)
  p.add_argument("--train-methods", default="moeclip,inctrl,anomalymoe",
                 help="methods whose train step is timed")
  p.add_argument("--official", action="append", default=[],
                 metavar="METHOD=PATH", help="a clone of the official repo")
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  args.methods = [m for m in args.methods.split(",") if m]
  unknown = set(args.methods) - set(METHOD_CONFIGS)
  if unknown:
    p.error(f"unknown methods {sorted(unknown)}; known {sorted(METHOD_CONFIGS)}")
  args.train_methods = set(args.train_methods.split(","))
  if any("=" not in o for o in args.official):
    p.error("--official takes METHOD=PATH")
  args.official = [tuple(o.split("=", 1)) for o in args.official]
  for dtype in args.dtypes.split(","):
    if dtype not in precision.CHOICES:
      p.error(f"--dtypes: {dtype!r} not in {precision.CHOICES}")
  args.out = pathlib.Path(args.out or HERE / "results" /
                          f"suite_{socket.gethostname()}.json")
  return args


def settings(args) -> list[Setting]:
  sizes_of = QUICK_SIZES if args.quick else SIZES
  out = []
  for method in args.methods:
    sizes = _ints(args.sizes) if args.sizes else sizes_of[method]
    if method == "anomalymoe":
      sizes = (392,)
    for size in sizes:
      for batch in _ints(args.batches):
        for dtype in args.dtypes.split(","):
          out.append(Setting(method, size, batch, dtype))
  return out


def main(argv=None) -> dict:
  args = parse_args(argv)
  args.reference = Reference(args.gemm_rounds)
  result = {"command": " ".join(["python", "benchmarks/suite.py"]
                                + list(sys.argv[1:] if argv is None
                                       else argv)),
            "machine": machine(), "rows": []}
  for setting in settings(args):
    row = run_setting(setting, args)
    result["rows"].append(row)
    print(json.dumps(row), flush=True)
    io.write_json(args.out, result)  # a partial result survives a kill
  io.write_text(args.out.with_suffix(".md"), markdown(result))
  chart(result["rows"], args.out.with_suffix(".png"))
  print(markdown(result))
  return result


if __name__ == "__main__":
  main()
