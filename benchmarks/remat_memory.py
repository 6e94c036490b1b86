r"""Peak bytes of the MoECLIP ViT-L/14@518 train step per remat policy (AOT).

  python benchmarks/remat_memory.py --batch 8 \
      --out benchmarks/results/remat_memory_cpu.json

Nothing is allocated or run: the train step (forward, backward, optimizer
update; donated state) is lowered and compiled from `jax.ShapeDtypeStruct`
inputs and `compiled.memory_analysis()` is read. For every policy of
`CLIPConfig.remat` (`--policies`) and every mesh of `--meshes`:

  single  one CPU device, the whole model and batch on it;
  fsdp    the `fsdp` preset over `--devices` fake CPU devices (per device).

peak = argument + output + temp - alias bytes (donated buffers counted once).
"""

from __future__ import annotations

import argparse
import os
import sys

DEVICES_FLAG = "--xla_force_host_platform_device_count"


def _set_devices(argv) -> None:
  count = 8
  for i, arg in enumerate(argv):
    if arg == "--devices" and i + 1 < len(argv):
      count = int(argv[i + 1])
    elif arg.startswith("--devices="):
      count = int(arg.split("=", 1)[1])
  flags = os.environ.get("XLA_FLAGS", "")
  if DEVICES_FLAG not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} {DEVICES_FLAG}={count}".strip()


_set_devices(sys.argv)

import importlib.util  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from moeclip_jax.methods import registry  # noqa: E402
from moeclip_jax.models import clip_config  # noqa: E402
from moeclip_jax.sharding import partition, presets  # noqa: E402
from moeclip_jax.train import aot  # noqa: E402


def load_config(name="moeclip_vitl14_336.py"):
  path = REPO / "configs" / name
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def measure(policy: str, mesh_name: str, batch_size: int, devices: int,
            config_name: str = "moeclip_vitl14_336.py"):
  config = load_config(config_name).copy_and_resolve_references()
  config.backbone.remat = policy
  if mesh_name == "single":
    config.mesh = {"data": 1, "fsdp": 1, "tensor": 1, "expert": 1}
    mesh = presets.configure(config, devices=jax.devices()[:1])
  else:
    presets.apply(config, mesh_name)
    mesh = presets.configure(config, devices=jax.devices()[:devices])
  method = registry.make_method(config)
  t0 = time.perf_counter()
  compiled, _ = aot.compile_train_step(method, config.optim, mesh, batch_size)
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis() or {}
  if isinstance(cost, list):
    cost = cost[0]
  partition.set_rules(None)
  out = {
      "policy": policy, "mesh": mesh_name, "devices": int(mesh.devices.size),
      "batch": batch_size, "image_size": method.image_size,
      "compile_s": time.perf_counter() - t0,
      "argument_bytes": int(mem.argument_size_in_bytes),
      "output_bytes": int(mem.output_size_in_bytes),
      "temp_bytes": int(mem.temp_size_in_bytes),
      "alias_bytes": int(mem.alias_size_in_bytes),
      "xla_flops": float(cost.get("flops", 0.0)),
  }
  out["peak_bytes"] = (out["argument_bytes"] + out["output_bytes"]
                       + out["temp_bytes"] - out["alias_bytes"])
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--policies", default=",".join(clip_config.REMAT))
  parser.add_argument("--meshes", default="single,fsdp")
  parser.add_argument("--config", default="moeclip_vitl14_336.py",
                      help="a MoECLIP config under configs/")
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  rows = []
  for mesh_name in args.meshes.split(","):
    for policy in args.policies.split(","):
      row = measure(policy, mesh_name, args.batch, args.devices,
                    args.config)
      rows.append(row)
      print(json.dumps(row), flush=True)
  if args.out:
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({
        "command": " ".join(["python"] + sys.argv),
        "backend": jax.default_backend(), "rows": rows}, indent=1) + "\n")
    tmp.replace(out)


if __name__ == "__main__":
  main()
