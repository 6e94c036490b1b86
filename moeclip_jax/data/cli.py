"""`python -m moeclip_jax.data VERB ...`: a small subcommand registry.

Verbs here: `prepare` (build a TFDS dataset, bad-input policy of issue #5)
and `inspect` (counts per split / class / label, mask coverage). Another
module adds a verb with `register(...)` and by being listed in
`COMMAND_MODULES`, which `main` imports before parsing.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
from typing import Callable, Optional, Sequence

from moeclip_jax.data import checks
from moeclip_jax.data import readers
from moeclip_jax.data import records as rec


@dataclasses.dataclass(frozen=True)
class Command:
  help: str
  add_arguments: Callable[[argparse.ArgumentParser], None]
  run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}
# Modules that call `register` when imported (e.g. a later `components` verb).
COMMAND_MODULES: tuple[str, ...] = (
    "moeclip_jax.methods.anomalymoe.components_cli",  # `components`
)


def register(name: str, help_text: str,
             add_arguments: Callable[[argparse.ArgumentParser], None],
             run: Callable[[argparse.Namespace], int]) -> None:
  """Adds a verb; re-registering a name is an error."""
  if name in COMMANDS:
    raise ValueError(f"command {name!r} is already registered")
  COMMANDS[name] = Command(help_text, add_arguments, run)


def _say(line: str) -> None:
  print(line, flush=True)


def _options(pairs: Sequence[str]) -> dict:
  """`key=value` strings -> reader options (JSON values where they parse)."""
  out = {}
  for pair in pairs:
    key, sep, value = pair.partition("=")
    if not sep:
      raise SystemExit(f"--option expects key=value, got {pair!r}")
    try:
      out[key] = json.loads(value)
    except json.JSONDecodeError:
      out[key] = value
  return out


def _dataset_args(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("name", choices=sorted(readers.READERS),
                      help="dataset layout")
  parser.add_argument("--root", default=None,
                      help="dataset folder (elpv: defaults to the package)")
  parser.add_argument("--option", action="append", default=[],
                      metavar="KEY=VALUE",
                      help="reader option, e.g. label_rule=threshold:0.5")


def _prepare_args(parser: argparse.ArgumentParser) -> None:
  _dataset_args(parser)
  parser.add_argument("--data-dir", default=os.environ.get(
      "TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets")))
  parser.add_argument("--config-name", default=None,
                      help="builder config name (default: NAME)")
  parser.add_argument("--skip-bad", action="store_true",
                      help="leave bad inputs out (each is printed), exit 0")
  parser.add_argument("--overwrite", action="store_true",
                      help="rebuild if the dataset already exists")


def _scan(args) -> rec.ScanResult:
  return readers.scan(args.name, args.root, **_options(args.option))


def _report_bad(report: checks.CheckReport, skip_bad: bool) -> None:
  word = "SKIPPED" if skip_bad else "BAD"
  for issue in report.issues:
    _say(f"{word} {issue.path}: {issue.problem}")


def run_prepare(args: argparse.Namespace) -> int:
  """Checks every input, then builds (or stops with exit 1)."""
  # Imported here so that `inspect` never loads tensorflow_datasets.
  tfds_builders = importlib.import_module("moeclip_jax.data.tfds_builders")
  report = checks.check(_scan(args))
  for note in report.notes:
    _say(f"NOTE {note}")
  _report_bad(report, args.skip_bad)
  skipped = len(report.skipped)
  if report.issues and not args.skip_bad:
    _say(f"{len(report.issues)} bad input(s); nothing written "
         "(fix them, or pass --skip-bad to leave them out)")
    return 1
  tfds_builders.build(args.name, args.root, args.data_dir,
                      config_name=args.config_name,
                      reader_options=_options(args.option),
                      records=report.kept, overwrite=args.overwrite)
  _say(f"items in: {report.items_in}, written: {len(report.kept)}, "
       f"skipped: {skipped}")
  assert report.items_in == len(report.kept) + skipped
  return 0


def _inspect_args(parser: argparse.ArgumentParser) -> None:
  _dataset_args(parser)
  parser.add_argument("--check", action="store_true",
                      help="also decode every file and list bad inputs")


def _print_counts(records: list[rec.Record]) -> None:
  c = rec.counts(records)
  for split, n in sorted(c["split"].items()):
    normal, anomalous = c["label"][(split, 0)], c["label"][(split, 1)]
    masked = c["mask"][(split, True)]
    cover = f"{masked}/{anomalous}" if anomalous else "-"
    _say(f"{split}: {n} images, {normal} normal, {anomalous} anomalous, "
         f"masks {cover}")
    for (s, name), k in sorted(c["class"].items()):
      if s == split:
        _say(f"  {name}: {k}")


def run_inspect(args: argparse.Namespace) -> int:
  scan = _scan(args)
  _print_counts(scan.records)
  for note in scan.notes:
    _say(f"NOTE {note}")
  issues = checks.check(scan).issues if args.check else scan.issues
  for issue in issues:
    _say(f"BAD {issue.path}: {issue.problem}")
  return 1 if issues else 0


register("prepare", "build a TFDS (array_record) dataset", _prepare_args,
         run_prepare)
register("inspect", "print counts per split / class / label", _inspect_args,
         run_inspect)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Parses `argv` (default sys.argv[1:]) and runs the verb; returns rc."""
  for module in COMMAND_MODULES:
    importlib.import_module(module)
  parser = argparse.ArgumentParser(prog="python -m moeclip_jax.data")
  sub = parser.add_subparsers(dest="verb", required=True)
  for name, command in COMMANDS.items():
    command.add_arguments(sub.add_parser(name, help=command.help))
  args = parser.parse_args(argv)
  try:
    return COMMANDS[args.verb].run(args)
  except (FileNotFoundError, KeyError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
