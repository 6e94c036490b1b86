"""Helpers every verb shares: log file, image lists, console.

Log file: `<out>/<verb>.log` (INFO and above of the `moeclip_jax` logger).
Scalars and images go through `moeclip_jax.utils.tracking`.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
from typing import Iterable, Sequence

log = logging.getLogger("moeclip_jax.verbs")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def parser(prog: str, description: str, examples: str
           ) -> argparse.ArgumentParser:
  """An argparse parser whose --help ends with the verb's examples."""
  return argparse.ArgumentParser(
      prog=prog, description=description,
      epilog="examples:\n" + examples.strip("\n"),
      formatter_class=argparse.RawDescriptionHelpFormatter)


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


def console():
  from rich.console import Console  # pylint: disable=g-import-not-at-top
  return Console(stderr=True)


def progress(iterable: Iterable | None, desc: str | None,
             total: int | None = None):
  """tqdm progress bar (silent when stderr is not a terminal or desc is
  None)."""
  import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(iterable, desc=desc, total=total,
                   disable=True if desc is None else None)


def list_images(inputs: Sequence[str]) -> tuple[list[pathlib.Path],
                                                  list[str]]:
  """Files (and image files found recursively under folders), sorted.

  Returns:
    (paths, problems): paths that do not exist are listed in `problems`.
  """
  paths, problems = [], []
  for item in inputs:
    p = pathlib.Path(item)
    if p.is_dir():
      paths += sorted(f for f in p.rglob("*") if f.is_file()
                      and f.suffix.lower() in IMAGE_SUFFIXES)
    elif p.is_file():
      paths.append(p)
    else:
      problems.append(f"{p}: no such file or folder")
  return paths, problems


def parse_class_names(values: Sequence[str] | None) -> list[str] | None:
  """--class-names a b,c -> [a, b, c] (None when not given)."""
  if not values:
    return None
  return [n for v in values for n in v.split(",") if n]


def load_detector(checkpoint_dir):
  """`moeclip_jax.load_detector`: the method comes from config.json."""
  import moeclip_jax  # pylint: disable=g-import-not-at-top
  return moeclip_jax.load_detector(checkpoint_dir)


def load_adapter(checkpoint_dir, options=None):
  """The loaded detector wrapped in its method's verb adapter.

  Raises:
    ValueError: a method these verbs do not serve, or method flags
      (`options`) the method does not use.
  """
  import json  # pylint: disable=g-import-not-at-top
  from moeclip_jax.verbs import adapters  # pylint: disable=g-import-not-at-top
  config = pathlib.Path(checkpoint_dir) / "config.json"
  if config.is_file():  # flags are checked before the (slow) load
    method = json.loads(config.read_text()).get("method")
    adapters.check_flags(adapters.adapter_class(method, checkpoint_dir),
                         options, checkpoint_dir)
  return adapters.make_adapter(load_detector(checkpoint_dir), checkpoint_dir,
                               options)
