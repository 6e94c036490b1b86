"""`moeclip-jax data SUBCOMMAND ...` (also `python -m moeclip_jax.data`).

Subcommands (the `COMMANDS` table):
  prepare     check every input, then build a TFDS (array_record) dataset
  inspect     counts per split / class / label, mask coverage, bad inputs
  components  per-class k-means part masks from a DINOv2 backbone (the
              masks AnomalyMoE's component experts train on)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Callable, Optional, Sequence

from moeclip_jax.data import checks, components, readers
from moeclip_jax.data import records as rec


@dataclasses.dataclass(frozen=True)
class Command:
  help: str
  add_arguments: Callable[[argparse.ArgumentParser], None]
  run: Callable[[argparse.Namespace], int]



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
  from moeclip_jax.data import tfds_builders  # pylint: disable=g-import-not-at-top
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


def _components_args(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("name", choices=sorted(readers.READERS))
  parser.add_argument("--root", required=True, help="dataset folder")
  parser.add_argument("--backbone", required=True,
                      help="converted DINOv2 checkpoint (convert hf-dinov2)")
  parser.add_argument("--out", default="",
                      help="mask output folder (default <root>_components)")
  parser.add_argument("--layers", default="2,3,4,5,6,7,8,9",
                      help="backbone blocks averaged (model target_layers)")
  parser.add_argument("--k", type=int, default=5, help="clusters per class")
  parser.add_argument("--ratio", type=float, default=0.01,
                      help="coreset fraction per image")


def run_components(args: argparse.Namespace) -> int:
  """Masks of every image, matched by image id (see data/components.py);
  point the trainer's `config.data.component_masks` at `--out`."""
  scan = readers.scan(args.name, args.root)
  layers = tuple(int(x) for x in str(args.layers).split(",") if x.strip())
  featurize = components.make_featurizer(args.backbone, layers)
  components.write_dataset_masks(
      scan.records, featurize, args.root,
      args.out or components.default_out(args.root), args.k, args.ratio,
      say=_say)
  return 0


COMMANDS: dict[str, Command] = {
    "prepare": Command("build a TFDS (array_record) dataset", _prepare_args,
                       run_prepare),
    "inspect": Command("print counts per split / class / label",
                       _inspect_args, run_inspect),
    "components": Command("per-class k-means part masks (AnomalyMoE)",
                          _components_args, run_components),
}


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Parses `argv` (default sys.argv[1:]) and runs the verb; returns rc."""
  parser = argparse.ArgumentParser(prog="moeclip-jax data")
  sub = parser.add_subparsers(dest="verb", required=True)
  for name, command in COMMANDS.items():
    command.add_arguments(sub.add_parser(name, help=command.help))
  args = parser.parse_args(argv)
  try:
    return COMMANDS[args.verb].run(args)
  except (FileNotFoundError, KeyError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
