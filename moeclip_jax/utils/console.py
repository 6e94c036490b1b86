"""Console output for long work: rich console on stderr, tqdm bars."""

from __future__ import annotations

from typing import Iterable


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


