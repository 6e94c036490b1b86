"""`moeclip-jax benchmark`: a suite of datasets -> the paper's tables.

  run     evaluate every unit (target, class, shots, draw) of a suite into
          the results store under --out (finished units are skipped;
          --force redoes them; --shard I/N takes every N-th), then write
          the tables and charts
  report  rebuild tables/ and charts/ from one or more stores (shards merge)
  merge   copy several stores into one (--to) and report it

Exit code: 0 when every unit succeeded, 1 when any failed (its error is
in the store and `error` in the tables), 2 for a bad suite or flags.
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import sys

import jax

from moeclip_jax.benchmark import execute, plan, report, store, suite
from moeclip_jax.sharding import multihost
from moeclip_jax.verbs import common

log = logging.getLogger("moeclip_jax.verbs")

EXAMPLES = """
  moeclip-jax benchmark run --suite moeclip_zsad13 --out bench/zsad \\
      --suite.targets.mvtec.root=/data/mvtec --dry-run
  moeclip-jax benchmark run --suite inctrl_fewshot --out bench/inctrl \\
      --suite.detector=ckpt/inctrl_k{shots} --shard 0/4
  moeclip-jax benchmark run --suite my_suite.py --out bench/mine --force
  moeclip-jax benchmark report --out bench/s0 --out bench/s1 --to bench/all
  python -m moeclip_jax.benchmark run --suite anomalymoe_unified --out b/
"""


def build_parser() -> argparse.ArgumentParser:
  p = common.parser("moeclip-jax benchmark", __doc__.split("\n\n")[0],
                    EXAMPLES)
  sub = p.add_subparsers(dest="command", required=True)
  run = sub.add_parser("run", help="run a suite's units into the store")
  run.add_argument("--suite", required=True,
                   help=f"suite file or preset ({', '.join(suite.PRESETS)})")
  run.add_argument("--out", required=True,
                   help="results folder ('{shard}' in it becomes the shard "
                        "index: one local store per host)")
  run.add_argument("--shard", default=None,
                   help="I/N: run every N-th unit group, starting at I; "
                        "'auto': I/N of this process in a jax.distributed "
                        "job (TPU slice, SLURM, MPI) or a SLURM job array")
  run.add_argument("--distributed", default="auto",
                   choices=("auto", "on", "off"),
                   help="with --shard auto: jax.distributed.initialize() "
                        "(auto = when TPU/SLURM/MPI variables exist)")
  run.add_argument("--force", action="store_true",
                   help="redo finished units")
  run.add_argument("--dry-run", action="store_true",
                   help="list the units and what is missing; no compute")
  rep = sub.add_parser("report", help="tables and charts of stores")
  rep.add_argument("--out", required=True, action="append",
                   help="a results folder (repeat to merge shards)")
  rep.add_argument("--to", default=None,
                   help="where tables/ and charts/ go (default: the first "
                        "--out)")
  mer = sub.add_parser("merge", help="copy stores into one and report it")
  mer.add_argument("--out", required=True, action="append",
                   help="a results folder (repeat)")
  mer.add_argument("--to", required=True, help="the merged results folder")
  return p


def _split_overrides(argv):
  """(--suite.FIELD=VALUE items, the rest of argv)."""
  overrides, rest = [], []
  for arg in argv:
    if arg.startswith("--suite."):
      overrides.append(arg[len("--suite."):])
    else:
      rest.append(arg)
  return overrides, rest


def cmd_run(args, overrides) -> int:
  config = suite.load(args.suite, overrides)
  shard = (_auto_shard(args.distributed) if args.shard == "auto"
           else plan.parse_shard(args.shard))
  out = pathlib.Path(args.out.format(shard=shard[0]))
  if not args.dry_run:
    common.add_log_file(out, "benchmark")
  log.info("benchmark %s: suite %s, shard %s/%s", config.name, args.suite,
           *shard)
  outcome = execute.run(config, execute.RunOptions(
      out=str(out), shard=shard, force=args.force, dry_run=args.dry_run))
  if args.dry_run:
    return 0
  print(f"{outcome.done} unit(s) run, {outcome.skipped} skipped, "
        f"{len(outcome.failed)} failed; tables in {out / 'tables'}")
  for uid in outcome.failed:
    print(f"failed: {uid}", file=sys.stderr)
  return 1 if outcome.failed else 0


def _auto_shard(distributed: str) -> tuple[int, int]:
  """This process's (I, N): a SLURM job array's task, else its index in a
  jax.distributed job (initialised here), else (0, 1)."""
  array = plan.array_shard(os.environ)
  if array is not None:
    return array
  multihost.maybe_initialize_distributed(distributed)
  return jax.process_index(), jax.process_count()


def cmd_report(outs, to) -> int:
  result = report.write_report(outs, to)
  print(f"{result.units} unit(s), {len(result.errors)} failed; tables in "
        f"{pathlib.Path(to) / 'tables'}")
  return 1 if result.errors else 0


def cmd_merge(args) -> int:
  suites, units = store.load(args.out)
  if suites:
    store.write_suite(args.to, suites[0])
  store.write_records(args.to, units)
  return cmd_report([args.to], args.to)


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  overrides, rest = _split_overrides(argv)
  args = build_parser().parse_args(rest)
  if overrides and args.command != "run":
    print("error: --suite.FIELD=VALUE is a `run` option", file=sys.stderr)
    return 2
  try:
    if args.command == "run":
      return cmd_run(args, overrides)
    if args.command == "report":
      return cmd_report(args.out, args.to or args.out[0])
    return cmd_merge(args)
  except (suite.SuiteError, store.StoreError, ValueError) as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
