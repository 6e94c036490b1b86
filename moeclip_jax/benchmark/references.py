"""Reference numbers (percent) shipped as data in references/*.json.

  {"name", "title", "source", "units": "percent",
   "rows": {target_key | "target_key@kK" | "Average (all)": {metric: %}}}

A suite's `references` lists names (files here) or paths; the first one
gives the report's delta column and the charts' reference bars.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

REFERENCE_DIR = pathlib.Path(__file__).resolve().parent / "references"


def available() -> list[str]:
  return sorted(p.stem for p in REFERENCE_DIR.glob("*.json"))


def load(name: str) -> dict[str, Any]:
  """A reference table by name (references/NAME.json) or path."""
  path = pathlib.Path(name)
  if not path.suffix:
    path = REFERENCE_DIR / f"{name}.json"
  if not path.is_file():
    raise ValueError(f"{name}: no reference table (shipped: "
                     f"{', '.join(available())})")
  try:
    table = json.loads(path.read_text())
  except ValueError as err:
    raise ValueError(f"{path}: not a JSON reference table ({err})") from err
  if not isinstance(table.get("rows"), dict):
    raise ValueError(f"{path}: a reference table needs a 'rows' dict")
  table.setdefault("name", path.stem)
  return table
