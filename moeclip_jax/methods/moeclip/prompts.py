"""MoECLIP's fixed, class-specific prompt ensembles (data in prompts.json).

The data file holds the official tables verbatim (typos included, e.g. MVTec
capsule -> "black asd orange capsule"): prompt states and templates,
REAL_NAMES (class -> descriptive noun) for the 14 datasets of the spec,
DOMAINS (dataset -> industrial / medical) and the class lists.

Sentences for a noun n: every state ("{}", "a {}", "the {}" normal; "a damaged
{}", ... abnormal) filled with n, then put into every template ("{}.",
"a photo of {}."), state-major: 6 normal then 10 abnormal sentences.

Unknown classes: with `strict=False` (default) the generic noun "object" is
used (the official code's own special case for class_name == "object") and a
warning is logged; with `strict=True` a KeyError names the known classes.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import logging
import re

import numpy as np

FALLBACK_NOUN = "object"
_DTD_VARIANT = re.compile(r"^(?P<cls>[A-Za-z]+)_\d+$")


@functools.lru_cache(maxsize=1)
def table() -> dict:
  """The parsed prompts.json."""
  path = importlib.resources.files(__package__) / "prompts.json"
  return json.loads(path.read_text(encoding="utf-8"))


def prompt_states() -> tuple[list[str], list[str]]:
  """(normal states, abnormal states), each with one "{}" slot."""
  p = table()["prompts"]
  return list(p["normal"]), list(p["abnormal"])


def templates() -> list[str]:
  return list(table()["prompts"]["templates"])


def datasets() -> list[str]:
  return sorted(table()["real_names"])


def canonical_dataset(name: str) -> str:
  """Case-insensitive dataset name -> its spelling in the tables."""
  by_lower = {d.lower(): d for d in table()["real_names"]}
  key = str(name).lower()
  if key not in by_lower:
    raise KeyError(
        f"unknown dataset {name!r}; known: {', '.join(datasets())}"
    )
  return by_lower[key]


def domain_of(dataset: str) -> str:
  """'industrial' or 'medical' (official DOMAINS)."""
  return table()["domains"][canonical_dataset(dataset)]


def class_names(dataset: str) -> list[str]:
  return list(table()["class_names"][canonical_dataset(dataset)])


def _lookup(class_name: str, dataset: str | None) -> str | None:
  names = table()["real_names"]
  candidates = [canonical_dataset(dataset)] if dataset else sorted(names)
  match = _DTD_VARIANT.match(class_name)
  keys = [class_name] + ([match["cls"]] if match else [])
  for ds in candidates:
    for key in keys:
      if key in names[ds]:
        return names[ds][key]
  return None


def real_name(
    class_name: str, dataset: str | None = None, *, strict: bool = False
) -> str:
  """The official prompt noun of a class.

  Args:
    class_name: a class of the dataset (e.g. VisA "macaroni1", BTAD "02",
      DTD-Synthetic "Woven" or the variant folder "Woven_001").
    dataset: dataset name (any case); None searches every dataset.
    strict: raise on an unknown class instead of using "object".

  Returns:
    The descriptive noun ("dark bottle", "scan", ...).

  Raises:
    KeyError: unknown dataset, or unknown class with strict=True.
  """
  if class_name == FALLBACK_NOUN:
    return FALLBACK_NOUN
  noun = _lookup(str(class_name), dataset)
  if noun is not None:
    return noun
  where = f"dataset {dataset!r}" if dataset else "any dataset"
  if strict:
    known = class_names(dataset) if dataset else "see prompts.json"
    raise KeyError(f"class {class_name!r} not in {where}; known: {known}")
  logging.warning(
      "class %r not in %s: using the generic noun %r", class_name, where,
      FALLBACK_NOUN)
  return FALLBACK_NOUN


def sentences(noun: str) -> tuple[list[str], np.ndarray]:
  """All prompt sentences for a noun and their state.

  Returns:
    (sentences [N], is_abnormal int32[N]); normal sentences first.
  """
  out, flags = [], []
  for flag, states in enumerate(prompt_states()):
    for state in states:
      for template in templates():
        out.append(template.format(state.format(noun)))
        flags.append(flag)
  return out, np.asarray(flags, np.int32)


def class_sentences(
    class_name: str, dataset: str | None = None, *, strict: bool = False
) -> tuple[list[str], np.ndarray]:
  """`sentences(real_name(class_name, dataset))`."""
  return sentences(real_name(class_name, dataset, strict=strict))
