"""`moeclip-jax data SUBCOMMAND ...` (also `python -m moeclip_jax.data`).

Subcommands (the `COMMANDS` table):
  prepare     check every input, then build a TFDS (array_record) dataset;
              with --out, write the papers' preprocessed copy (SDD slices,
              AITEX tiles, LOCO merged masks) + meta.json + full-shot.jsonl
  inspect     counts per split / class / label, mask coverage, bad inputs
  components  per-class k-means part masks from a DINOv2 backbone (the
              masks AnomalyMoE's component experts train on)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from typing import Callable, Optional, Sequence

from moeclip_jax.data import (
  checks,
  components,
  inspection,
  materialise,
  readers,
)
from moeclip_jax.data import records as rec
from moeclip_jax.utils import console, io


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


# Subcommand flags: (flags, argparse keyword arguments).
PREPARE_FLAGS = (
    ("--data-dir", dict(default=os.environ.get(
        "TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets")))),
    ("--config-name", dict(default=None,
                           help="builder config name (default: NAME)")),
    ("--skip-bad", dict(action="store_true", help="leave bad inputs out "
                        "(each is printed), exit 0")),
    ("--overwrite", dict(action="store_true",
                         help="rebuild if the dataset already exists")),
    ("--out", dict(default=None, help="write a preprocessed MVTec-style copy "
                   "here (with meta.json, full-shot.jsonl, manifest.json) "
                   "instead of a TFDS build; a rerun verifies the manifest")),
    ("--meta-only", dict(action="store_true", help="with --out: only "
                         "meta.json + full-shot.jsonl naming the original "
                         "files")),
)
COMPONENTS_FLAGS = (
    ("--root", dict(required=True, help="dataset folder")),
    ("--backbone", dict(required=True, help="converted DINOv2 checkpoint "
                        "(convert hf-dinov2)")),
    ("--out", dict(default="", help="mask output folder (default "
                   "<root>_components)")),
    ("--layers", dict(default="2,3,4,5,6,7,8,9", help="backbone blocks "
                      "averaged (model target_layers)")),
    ("--k", dict(type=int, default=5, help="clusters per class")),
    ("--ratio", dict(type=float, default=0.01,
                     help="coreset fraction per image")),
)


def _add_flags(parser: argparse.ArgumentParser, flags) -> None:
  for flag, kwargs in flags:
    parser.add_argument(flag, **kwargs)


def _prepare_args(parser: argparse.ArgumentParser) -> None:
  _dataset_args(parser)
  _add_flags(parser, PREPARE_FLAGS)


def _reader_options(args) -> dict:
  """--option pairs; with prepare --out, over the layout's preset."""
  preset = (materialise.PRESETS.get(args.name, {})
            if getattr(args, "out", None) and not args.meta_only else {})
  return {**preset, **_options(args.option)}


def _scan(args) -> rec.ScanResult:
  return readers.scan(args.name, args.root, **_reader_options(args))


def _report_bad(report: checks.CheckReport, skip_bad: bool) -> None:
  word = "SKIPPED" if skip_bad else "BAD"
  for issue in report.issues:
    _say(f"{word} {issue.path}: {issue.problem}")


def run_prepare(args: argparse.Namespace) -> int:
  """Checks every input, then builds (or stops with exit 1)."""
  scan = _scan(args)
  if (args.out and not args.meta_only and not args.overwrite
      and not args.skip_bad and os.path.exists(args.out)):
    manifest = materialise.verify(args.out, materialise.input_digest(
        scan.records, args.name, _reader_options(args)))
    _say(f"verified {len(manifest['files'])} files in {args.out} "
         "(nothing redone)")
    return 0
  report = checks.check(scan)
  for note in report.notes:
    _say(f"NOTE {note}")
  _report_bad(report, args.skip_bad)
  skipped = len(report.skipped)
  if report.issues and not args.skip_bad:
    _say(f"{len(report.issues)} bad input(s); nothing written "
         "(fix them, or pass --skip-bad to leave them out)")
    return 1
  if args.out:
    return _prepare_out(args, report)
  # Imported here so that `inspect` and `--out` never load tensorflow_datasets.
  from moeclip_jax.data import tfds_builders  # pylint: disable=g-import-not-at-top
  tfds_builders.build(args.name, args.root, args.data_dir,
                      config_name=args.config_name,
                      reader_options=_options(args.option),
                      records=report.kept, overwrite=args.overwrite)
  _say(f"items in: {report.items_in}, written: {len(report.kept)}, "
       f"skipped: {skipped}")
  assert report.items_in == len(report.kept) + skipped
  return 0


def _prepare_out(args, report: checks.CheckReport) -> int:
  """`prepare --out`: the preprocessed copy (or only the metadata files)."""
  if args.meta_only:
    for path in materialise.write_meta_only(report.kept, args.out):
      _say(f"wrote {path}")
  else:
    materialise.materialise(report.kept, args.out, args.name,
                            _reader_options(args), args.overwrite, say=_say)
  _say(f"items in: {report.items_in}, written: {len(report.kept)}, "
       f"skipped: {len(report.skipped)}")
  return 0


def _inspect_args(parser: argparse.ArgumentParser) -> None:
  _dataset_args(parser)
  parser.add_argument("--check", action="store_true",
                      help="also decode every image and mask (bad files, "
                      "mask areas, empty masks)")
  parser.add_argument("--json", default=None, metavar="PATH",
                      help="also write the report as JSON")


def run_inspect(args: argparse.Namespace) -> int:
  """Counts per split / class / label, sizes, modes; exit 1 on a fault."""
  summary = inspection.summarise(_scan(args), decode=args.check)
  for line in inspection.lines(summary):
    _say(line)
  if args.json:
    io.write_json(args.json, summary)
  return 1 if summary["faults"] else 0


def _components_args(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("name", choices=sorted(readers.READERS))
  _add_flags(parser, COMPONENTS_FLAGS)


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
  except materialise.PrepareError as e:
    return console.fail(e, 1)
  except (FileNotFoundError, KeyError, ValueError) as e:
    return console.fail(e)
