"""Console output for long work: rich console on stderr, tqdm bars, stage
lines, and the one-line `error: ...` of every verb (`fail`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from typing import Iterable

DEBUG_ENV = "MOECLIP_JAX_DEBUG"  # "1": errors print their traceback
DEBUG_FLAG = "--debug"


def console():
  from rich.console import Console  # pylint: disable=g-import-not-at-top
  return Console(stderr=True)


def progress(iterable: Iterable | None, desc: str | None,
             total: int | None = None, **kwargs):
  """tqdm progress bar (silent when stderr is not a terminal or desc is
  None); `kwargs` go to tqdm (unit, ...)."""
  import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(iterable, desc=desc, total=total,
                   disable=True if desc is None else None, **kwargs)


def stage(index: int, total: int, text: str) -> None:
  """One console line per stage of a long run: `[3/7] training ...`."""
  print(f"[{index}/{total}] {text}", file=sys.stderr, flush=True)


# ---- errors ---------------------------------------------------------------
def debug() -> bool:
  return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def set_debug(on: bool = True) -> None:
  os.environ[DEBUG_ENV] = "1" if on else "0"


def pop_debug_flag(argv: list[str]) -> list[str]:
  """argv without `--debug` (which turns tracebacks on)."""
  if DEBUG_FLAG in argv:
    set_debug()
  return [a for a in argv if a != DEBUG_FLAG]


class _DebugAction(argparse.Action):

  def __init__(self, option_strings, dest, **kwargs):
    super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

  def __call__(self, parser, namespace, values, option_string=None):
    set_debug()
    setattr(namespace, self.dest, True)


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(DEBUG_FLAG, action=_DebugAction,
                      help="on an error, also print its traceback")


def one_line(err: BaseException) -> str:
  """The error's message on one line (its first non-empty line)."""
  lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
  return lines[0] if lines else type(err).__name__


def silence_teardown_noise() -> None:
  """After a failed checkpoint read, orbax's async readers may still log or
  raise while the interpreter shuts down (`Event loop is closed`): keep
  that off the console so the error stays one line."""
  sys.unraisablehook = lambda _: None
  for name in ("asyncio", "absl", "orbax", "jax"):
    logging.getLogger(name).setLevel(logging.CRITICAL)
  try:
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
    absl_logging.set_verbosity(absl_logging.FATAL)
  except ImportError:  # pragma: no cover
    pass


def fail(err: BaseException, code: int = 2) -> int:
  """Prints `error: <one line>` on stderr (with --debug, the traceback
  first) and returns the exit status."""
  if debug():
    traceback.print_exception(err)
  else:
    silence_teardown_noise()
  print(f"error: {one_line(err)}", file=sys.stderr, flush=True)
  return code
