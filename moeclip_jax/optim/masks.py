"""Trainable / frozen labels from regexes over '/'-joined parameter paths.

A method lists the *trainable* patterns (and, for a loud coverage check, the
frozen ones). Every leaf must match exactly one of the two lists, at least one
leaf must be trainable, and the full table can be logged.
"""

from __future__ import annotations

import re
from typing import Sequence

from moeclip_jax.utils import tree as tree_utils

TRAINABLE, FROZEN = "trainable", "frozen"


def _match(path: str, patterns: Sequence[str]) -> str | None:
  for p in patterns:
    if re.fullmatch(p, path):
      return p
  return None


def label_table(params, trainable: Sequence[str],
                frozen: Sequence[str] | None = None) -> list[tuple[str, str, str]]:
  """[(path, label, matching pattern)] for every leaf.

  Raises:
    ValueError: a leaf matches both lists or (with `frozen` given) neither,
      or nothing is trainable.
  """
  rows, problems = [], []
  for path, _ in tree_utils.flatten_with_names(params):
    t = _match(path, trainable)
    f = _match(path, frozen) if frozen is not None else None
    if t and f:
      problems.append(f"{path} matches trainable {t!r} and frozen {f!r}")
    elif t:
      rows.append((path, TRAINABLE, t))
    elif f or frozen is None:
      rows.append((path, FROZEN, f or "(default)"))
    else:
      problems.append(f"{path} matches no trainable or frozen pattern")
  if not any(label == TRAINABLE for _, label, _ in rows):
    problems.append("no parameter is trainable")
  if problems:
    raise ValueError("parameter labels:\n  " + "\n  ".join(sorted(problems)))
  return rows


def labels(params, trainable: Sequence[str],
           frozen: Sequence[str] | None = None):
  """A tree like `params` with 'trainable' / 'frozen' leaves."""
  table = {p: label for p, label, _ in label_table(params, trainable, frozen)}
  return tree_utils.map_with_names(lambda p, _: table[p], params)
