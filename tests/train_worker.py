"""A training subprocess for the resume and multi-host tests.

  python tests/train_worker.py --data DIR --workdir W --steps N --out H.json
      [--sleep S]                 pause S s before each batch (kill window)
      [--fake_data]               deterministic global batches, each process
                                  feeding only the rows its devices hold
      [--preset NAME]             mesh preset (configs/mesh/NAME.py)
      [--coordinator HOST:PORT --num_processes P --process_id I]

Prints "batch <k>" (flushed) before each step; process 0 writes the loss
history as JSON to --out. Numerics match the test process: 8 fake devices
unless XLA_FLAGS says otherwise, "highest" matmul precision.
"""

import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

jax.config.update("jax_default_matmul_precision", "highest")


def _args(argv):
  p = argparse.ArgumentParser()
  p.add_argument("--data", required=True)
  p.add_argument("--workdir", required=True)
  p.add_argument("--steps", type=int, required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--ckpt_every", type=int, default=2)
  p.add_argument("--sleep", type=float, default=0.0)
  p.add_argument("--fake_data", action="store_true")
  p.add_argument("--preset", default="")
  p.add_argument("--coordinator", default="")
  p.add_argument("--num_processes", type=int, default=1)
  p.add_argument("--process_id", type=int, default=0)
  return p.parse_args(argv)


class FakeData:
  """Seeded global batches; this process feeds the rows its devices hold."""

  def __init__(self, config, method, batch_multiple=1):
    del method, batch_multiple
    self.class_names, self.holdout = ["a", "b"], []
    self.batch_size = config.batch_size
    self.size = 32
    self.count = 0

  def _global(self, k):
    rng = np.random.default_rng(1000 + k)
    b, s = self.batch_size, self.size
    mask = (rng.random((b, s, s)) > 0.8).astype(np.float32)
    mask[: b // 2] = 0.0
    return {"image": rng.normal(size=(b, s, s, 3)).astype(np.float32),
            "mask": mask, "label": (mask.max((1, 2)) > 0).astype(np.int32),
            "class_id": rng.integers(0, 2, b).astype(np.int32)}

  def next(self):
    from moeclip_jax.sharding import partition  # pylint: disable=g-import-not-at-top
    batch = self._global(self.count)
    self.count += 1
    sharding = partition.batch_sharding(_MESH[0])
    rows = set()
    for idx in sharding.addressable_devices_indices_map(
        (self.batch_size,)).values():
      rows.update(range(self.batch_size)[idx[0]])
    take = np.asarray(sorted(rows))
    return {k: v[take] for k, v in batch.items()}

  def state(self):
    return json.dumps({"count": self.count})

  def restore(self, state):
    self.count = json.loads(state)["count"]


_MESH = [None]


def main(argv):
  args = _args(argv)
  if args.coordinator:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=args.coordinator,
                               num_processes=args.num_processes,
                               process_id=args.process_id)
  import train_fixtures as tf  # pylint: disable=g-import-not-at-top
  from moeclip_jax.sharding import presets  # pylint: disable=g-import-not-at-top
  from moeclip_jax.train import loop  # pylint: disable=g-import-not-at-top

  config = tf.tiny_config(args.data, total_steps=args.steps, log_every=1,
                          ckpt_every=args.ckpt_every)
  if args.preset:
    presets.apply(config, args.preset)
  real_configure = presets.configure

  def configure(cfg, devices=None):
    _MESH[0] = real_configure(cfg, devices)
    return _MESH[0]

  presets.configure = configure
  if args.fake_data:
    loop.data_lib.TrainData = FakeData
  if args.sleep:
    real_next = loop.data_lib.TrainData.next

    def slow_next(self):
      time.sleep(args.sleep)
      return real_next(self)

    loop.data_lib.TrainData.next = slow_next
  real_step = loop._jit_step  # pylint: disable=protected-access

  def announcing_jit(run):
    fn = real_step(run)

    def step(state, *rest):
      print(f"batch {int(state.step) + 1}", flush=True)
      return fn(state, *rest)
    return step

  loop._jit_step = announcing_jit  # pylint: disable=protected-access
  run = loop.train(config, args.workdir)
  if jax.process_index() == 0:
    pathlib.Path(args.out).write_text(json.dumps(run.history))
  print("worker done", flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
