"""Mean +- std of evaluation reports over InCTRL prompt draws.

The aggregate keeps the metrics.json schema: "per_class" and "mean" hold
the mean over draws (None where any draw is undefined), "counts" and
"protocol" are the first draw's; it adds "std" ({"mean": {...},
"per_class": {...}}, ddof = 0 as `methods.inctrl.fewshot.summarize`) and
"prompt_draws" (shots, seeds, every draw's means and prompt sets).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np


def _stat(values: Sequence[float | None], fn) -> float | None:
  if not values or any(v is None for v in values):
    return None
  return float(fn(np.asarray(values, np.float64)))


def _table(tables: Sequence[Mapping[str, Any]], fn) -> dict:
  keys = list(tables[0])
  return {k: _stat([t.get(k) for t in tables], fn) for k in keys}


def aggregate(reports: Sequence[Mapping[str, Any]],
              draws: Sequence[Mapping[str, Any]], shots: int | None
              ) -> dict[str, Any]:
  """One report (metrics.json schema + std + prompt_draws) from N draws."""
  first = reports[0]
  classes = list(first["per_class"])
  per_class = {c: _table([r["per_class"][c] for r in reports], np.mean)
               for c in classes}
  per_class_std = {c: _table([r["per_class"][c] for r in reports], np.std)
                   for c in classes}
  means = [r["mean"] for r in reports]
  return {
      "per_class": per_class,
      "mean": _table(means, np.mean),
      "counts": first["counts"],
      "protocol": first["protocol"],
      "details": {"draws": [r.get("details", {}) for r in reports]},
      "std": {"mean": _table(means, np.std), "per_class": per_class_std},
      "prompt_draws": {
          "num_draws": len(reports), "shots": shots,
          "seeds": [d.get("seed") for d in draws],
          "draws": [{**dict(d), "mean": r["mean"]}
                    for d, r in zip(draws, reports)]},
  }
