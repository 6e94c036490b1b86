"""Helpers every verb shares: parsers, log file, method options, loading.

Log file: `<out>/<verb>.log` (INFO and above of the `moeclip_jax` logger).
"""

from __future__ import annotations

import argparse
import logging
import pathlib
from typing import Any, Callable, Sequence

from moeclip_jax.inference import tiling
from moeclip_jax.methods import registry
from moeclip_jax.utils import console as console_lib
from moeclip_jax.utils import images as image_utils

log = logging.getLogger("moeclip_jax.verbs")
console = console_lib.console
progress = console_lib.progress
fail = console_lib.fail
stage = console_lib.stage
list_images = image_utils.list_images

# What a user's input can raise: one line `error: ...`, exit code 2.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, KeyError)


def guarded(fn: Callable[..., Any], *args, **kwargs) -> tuple[Any, int]:
  """(fn(*args, **kwargs), 0), or (None, 2) after printing a user error."""
  try:
    return fn(*args, **kwargs), 0
  except USER_ERRORS as err:
    return None, fail(err)



def parser(prog: str, description: str, examples: str
           ) -> argparse.ArgumentParser:
  """An argparse parser whose --help ends with the verb's examples (with
  `--debug`: errors also print their traceback)."""
  p = argparse.ArgumentParser(
      prog=prog, description=description,
      epilog="examples:\n" + examples.strip("\n"),
      formatter_class=argparse.RawDescriptionHelpFormatter)
  console_lib.add_debug_flag(p)
  return p


def add_log_file(out_dir, verb: str) -> pathlib.Path:
  """Appends INFO logs of `moeclip_jax` to `<out_dir>/<verb>.log`."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  path = out_dir / f"{verb}.log"
  quiet_console()
  root = logging.getLogger("moeclip_jax")
  if not any(getattr(h, "baseFilename", None) == str(path.absolute())
             for h in root.handlers):
    handler = logging.FileHandler(path)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.addHandler(handler)
  root.setLevel(logging.INFO)
  return path


def quiet_console() -> None:
  """Console shows warnings only (INFO goes to the log file): installs a
  WARNING stderr handler on the root logger before anyone's basicConfig;
  console handlers an import installed at level NOTSET (grain's / absl's
  import does) are raised to WARNING."""
  root = logging.getLogger()
  for handler in root.handlers:
    if (type(handler) is logging.StreamHandler  # pylint: disable=unidiomatic-typecheck
        and handler.level == logging.NOTSET):
      handler.setLevel(logging.WARNING)
  if not root.handlers:
    handler = logging.StreamHandler()
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root.addHandler(handler)


def parse_class_names(values: Sequence[str] | None) -> list[str] | None:
  """--class-names a b,c -> [a, b, c] (None when not given)."""
  if not values:
    return None
  return [n for v in values for n in v.split(",") if n]


def add_method_options(parser: argparse.ArgumentParser, verb: str) -> None:
  """Every method's own flags of `verb` (registry.cli_options), one argument
  group per method; a flag of another method than the checkpoint's is an
  error at load time (`load_detector`)."""
  for method, options in registry.cli_options(verb):
    title = (f"{method} options (an error for other methods)"
             if method != registry.EVERY_METHOD else "options of every method")
    group = parser.add_argument_group(title)
    for option in options:
      group.add_argument(option.flag, default=None, help=option.help,
                         **dict(option.kwargs))


def method_options(args: argparse.Namespace) -> dict:
  """The method flags given on the command line: {dest: value}."""
  return {dest: getattr(args, dest) for dest in sorted(registry.option_dests())
          if getattr(args, dest, None) is not None}


def load_detector(checkpoint_dir, options: dict | None = None):
  """The checkpoint's detector (method from config.json) with the verbs'
  method options; the options are checked before the (slow) load.

  Raises:
    ValueError: a method without a detector, or options it does not use.
  """
  options = dict(options or {})
  cls = registry.detector_class(checkpoint_dir)
  cls.check_options(checkpoint_dir, options)
  return cls.load(checkpoint_dir, **options)


def add_tile_options(parser: argparse.ArgumentParser) -> None:
  """--tile SIZE[,OVERLAP] and --tile-score (predict, eval, serve;
  inference/tiling)."""
  parser.add_argument(
      "--tile", default=None, metavar="SIZE[,OVERLAP]",
      help="cut each image into SIZE px tiles sharing OVERLAP px, predict "
           "them in batches and blend the maps (large images)")
  parser.add_argument("--tile-score", default="max", choices=tiling.SCORES,
                      help="image score of a tiled image (default: max "
                           "over the tiles)")


def tile_spec(args: argparse.Namespace) -> tiling.TileSpec | None:
  return tiling.parse(getattr(args, "tile", None),
                      getattr(args, "tile_score", "max"))
