"""The results store: one JSON file per finished unit, written atomically.

  DIR/store/suite.json          the resolved suite (targets, references)
  DIR/store/units/<unit>.json   one unit: key, status ("ok" | "error"),
                                metrics (fractions, the eval report's
                                per-class entry), counts, error, protocol,
                                checkpoint + hash, config, version, timings

A file exists only once its unit is finished (temp + rename), so a kill
at any moment leaves finished units and nothing half-written; shards
writing into one DIR never touch the same file. `load` merges several
stores (shards): a unit found twice keeps its "ok" record.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import re
from typing import Any, Iterable

from moeclip_jax.utils import io

STORE = "store"
UNITS = "units"
SUITE_FILE = "suite.json"


class StoreError(ValueError):
  """A store that cannot be read (exit code 2)."""


def filename(uid: str) -> str:
  """A unit's file name: readable prefix + hash of its uid."""
  safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", uid.replace("/", "__"))
  digest = hashlib.sha1(uid.encode()).hexdigest()[:10]
  return f"{safe[:120]}__{digest}.json"


def units_dir(out) -> pathlib.Path:
  return pathlib.Path(out) / STORE / UNITS


def unit_path(out, unit) -> pathlib.Path:
  return units_dir(out) / filename(unit.uid)


def write_suite(out, suite: dict[str, Any]) -> pathlib.Path:
  return io.write_json(pathlib.Path(out) / STORE / SUITE_FILE, suite)


def write_unit(out, unit, record: dict[str, Any]) -> pathlib.Path:
  return io.write_json(unit_path(out, unit),
                       {"unit": unit.to_json(), "uid": unit.uid, **record})


def read_unit(out, unit) -> dict[str, Any] | None:
  """The stored record of a unit, or None when it has none."""
  path = unit_path(out, unit)
  if not path.is_file():
    return None
  return _read(path)


def is_done(out, unit) -> bool:
  """Finished successfully (error units are retried by a rerun)."""
  record = read_unit(out, unit)
  return record is not None and record.get("status") == "ok"


def _read(path: pathlib.Path) -> dict[str, Any]:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as err:
    raise StoreError(f"{path}: unreadable unit record ({err})") from err


def load(outs: Iterable) -> tuple[list[dict], list[dict[str, Any]]]:
  """(suites, unit records) of one or more stores, merged by unit uid."""
  suites, units = [], {}
  for out in outs:
    root = pathlib.Path(out) / STORE
    if not root.is_dir():
      raise StoreError(f"{out}: no benchmark store ({root} is missing)")
    suite_path = root / SUITE_FILE
    if suite_path.is_file():
      suites.append(_read(suite_path))
    for path in sorted((root / UNITS).glob("*.json")):
      record = _read(path)
      old = units.get(record["uid"])
      if old is None or (old.get("status") != "ok"
                         and record.get("status") == "ok"):
        units[record["uid"]] = record
  return suites, [units[k] for k in sorted(units)]


def write_records(out, records: Iterable[dict[str, Any]]) -> int:
  """Writes loaded unit records (`load`) into the store at `out`."""
  n = 0
  for record in records:
    io.write_json(units_dir(out) / filename(record["uid"]), record)
    n += 1
  return n
