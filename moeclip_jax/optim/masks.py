"""Trainable / frozen labels from regexes over '/'-joined parameter paths.

A method lists the *trainable* patterns (and, for a loud coverage check, the
frozen ones). Every leaf must match exactly one of the lists, at least one
leaf must be trainable, and the full table can be logged.

A third, optional list names *state* leaves: variables that are not trained
but change during training (BatchNorm running statistics). The optimizer
leaves them alone, the train step overwrites them with the values the loss
returns, and checkpoints keep them (unlike the frozen backbone).
"""

from __future__ import annotations

import re
from typing import Sequence

from moeclip_jax.utils import tree as tree_utils

TRAINABLE, FROZEN, STATE = "trainable", "frozen", "state"


def _match(path: str, patterns: Sequence[str]) -> str | None:
  for p in patterns:
    if re.fullmatch(p, path):
      return p
  return None


def label_table(params, trainable: Sequence[str],
                frozen: Sequence[str] | None = None,
                state: Sequence[str] = ()) -> list[tuple[str, str, str]]:
  """[(path, label, matching pattern)] for every leaf.

  Raises:
    ValueError: a leaf matches two lists or (with `frozen` given) none,
      or nothing is trainable.
  """
  rows, problems = [], []
  for path, _ in tree_utils.flatten_with_names(params):
    hits = [(label, _match(path, patterns)) for label, patterns in (
        (TRAINABLE, trainable), (FROZEN, frozen or ()), (STATE, state))]
    hits = [(label, pattern) for label, pattern in hits if pattern]
    if len(hits) > 1:
      problems.append(f"{path} matches " + " and ".join(
          f"{label} {pattern!r}" for label, pattern in hits))
    elif hits:
      rows.append((path, *hits[0]))
    elif frozen is None:
      rows.append((path, FROZEN, "(default)"))
    else:
      problems.append(f"{path} matches no trainable, frozen or state pattern")
  if not any(label == TRAINABLE for _, label, _ in rows):
    problems.append("no parameter is trainable")
  if problems:
    raise ValueError("parameter labels:\n  " + "\n  ".join(sorted(problems)))
  return rows


def labels(params, trainable: Sequence[str],
           frozen: Sequence[str] | None = None, state: Sequence[str] = ()):
  """A tree like `params` with 'trainable' / 'frozen' / 'state' leaves."""
  table = {p: label for p, label, _ in label_table(params, trainable, frozen,
                                                     state)}
  return tree_utils.map_with_names(lambda p, _: table[p], params)
