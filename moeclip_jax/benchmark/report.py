"""Tables and charts rebuilt from one or more stores (shards merge).

  TO/tables/summary.{csv,md,tex}    one row per (target, K) + averages
  TO/tables/per_class.{csv,md,tex}  one row per (target, K, class)
  TO/charts/<metric>.png            ours vs the first reference

Only the stores are read, so `benchmark report` reproduces what `run`
wrote, and shards' stores merge into the tables of one run.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Sequence

from moeclip_jax.benchmark import charts, references, store, tables
from moeclip_jax.utils import io


@dataclasses.dataclass
class Report:
  """What was written, and the units behind it."""

  files: list[pathlib.Path]
  units: int
  errors: list[dict[str, Any]]
  summary: list[tables.Row]


def _reference(suites: Sequence[dict]) -> dict[str, Any] | None:
  names = suites[0].get("references") if suites else None
  return references.load(names[0]) if names else None


def _reference_keys(suites, units) -> dict[str, str]:
  keys = {u["unit"]["target"]: u.get("reference") or u["unit"]["target"]
          for u in units}
  for suite in suites:
    for target in suite.get("targets", []):
      keys.setdefault(target["name"], target.get("reference")
                      or target["name"])
  return keys


def write_report(outs: Sequence, to) -> Report:
  """Reads the stores under `outs`, writes tables/ and charts/ under `to`."""
  suites, units = store.load(outs)
  to = pathlib.Path(to)
  reference = _reference(suites)
  keys = _reference_keys(suites, units)
  summary = tables.summary_rows(units) if units else []
  per_class = tables.per_class_rows(units) if units else []
  tables.add_deltas(summary, reference, keys)
  with_delta = reference is not None
  title = suites[0]["name"] if suites else "benchmark"
  caption = title + (f" (delta: ours - {reference['name']})"
                     if reference else "")
  files = []
  for name, rows, pc, delta in (("summary", summary, False, with_delta),
                                ("per_class", per_class, True, False)):
    folder = to / "tables"
    files.append(io.write_text(folder / f"{name}.csv",
                               tables.to_csv(rows, pc, delta)))
    files.append(io.write_text(folder / f"{name}.md", tables.to_markdown(
        rows, pc, delta, title=f"{title}: {name.replace('_', ' ')}")))
    files.append(io.write_text(folder / f"{name}.tex", tables.to_latex(
        rows, pc, delta, caption=f"{caption}: {name.replace('_', ' ')}")))
  files += charts.write_charts(summary, to / "charts",
                               reference["name"] if reference else None)
  errors = [u for u in units if u.get("status") != "ok"]
  return Report(files, len(units), errors, summary)
