"""Per-class tables, means and the report files.

Files (all written atomically: temp file in the same folder, then
`os.replace`):

* metrics.json: exactly {"per_class", "mean", "counts", "protocol"}; values
  are fractions in [0, 1]; undefined values are null, excluded from means and
  counted in `counts`.
* metrics.csv: one row per class plus a final "mean" row; null -> empty cell.
* protocol.json: every knob of the protocol plus run metadata.
* details.json: streaming error bounds, F1 thresholds, per-class mode, flags.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Any, Iterable, Mapping

from moeclip_jax.eval import protocols
from moeclip_jax.utils import io as io_utils

METRICS_FILE = "metrics.json"
CSV_FILE = "metrics.csv"
PROTOCOL_FILE = "protocol.json"
DETAILS_FILE = "details.json"


def _clean(value: Any) -> float | None:
  """None for undefined (None/NaN); plain float otherwise."""
  if value is None:
    return None
  value = float(value)
  return None if math.isnan(value) else value


def class_means(per_class: Mapping[str, Mapping[str, Any]],
                keys: Iterable[str] = protocols.ALL_METRICS):
  """Mean over classes of each metric, skipping nulls (None if all null)."""
  means = {}
  for key in keys:
    vals = [v[key] for v in per_class.values() if v.get(key) is not None]
    means[key] = sum(vals) / len(vals) if vals else None
  return means


def metric_counts(per_class: Mapping[str, Mapping[str, Any]],
                  protocol: protocols.Protocol):
  """Defined / undefined counts and the classes behind each null."""
  out = dict(defined={}, undefined={}, undefined_classes={},
             not_in_protocol=[k for k in protocols.ALL_METRICS
                              if k not in protocol.metrics])
  for key in protocols.ALL_METRICS:
    if key not in protocol.metrics:
      continue
    nulls = [c for c, v in per_class.items() if v.get(key) is None]
    out["defined"][key] = len(per_class) - len(nulls)
    out["undefined"][key] = len(nulls)
    out["undefined_classes"][key] = nulls
  return out


def build_report(per_class, counts, protocol_json, details):
  """Assembles the evaluate() result (metrics.json schema + details)."""
  per_class = {c: {k: _clean(v.get(k)) for k in protocols.ALL_METRICS}
               for c, v in per_class.items()}
  return {
      "per_class": per_class,
      "mean": class_means(per_class),
      "counts": counts,
      "protocol": protocol_json,
      "details": details,
  }


def to_csv(report: Mapping[str, Any]) -> str:
  """metrics.csv text: class rows then a "mean" row, empty cell = null."""
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(("class",) + protocols.ALL_METRICS)
  rows = list(report["per_class"].items()) + [("mean", report["mean"])]
  for name, vals in rows:
    writer.writerow([name] + ["" if vals[k] is None else f"{vals[k]:.10g}"
                              for k in protocols.ALL_METRICS])
  return buf.getvalue()


def write_reports(report: Mapping[str, Any], out_dir: str) -> dict[str, str]:
  """Writes metrics.json, metrics.csv, protocol.json and details.json.

  Args:
    report: an `evaluate` result.
    out_dir: folder (created if needed).

  Returns:
    {file kind: path}.
  """
  os.makedirs(out_dir, exist_ok=True)
  metrics = {k: report[k] for k in ("per_class", "mean", "counts", "protocol")}
  paths = {
      "metrics": os.path.join(out_dir, METRICS_FILE),
      "csv": os.path.join(out_dir, CSV_FILE),
      "protocol": os.path.join(out_dir, PROTOCOL_FILE),
      "details": os.path.join(out_dir, DETAILS_FILE),
  }
  dump = lambda obj: json.dumps(obj, indent=2, allow_nan=False) + "\n"
  io_utils.write_text(paths["metrics"], dump(metrics))
  io_utils.write_text(paths["csv"], to_csv(report))
  io_utils.write_text(paths["protocol"], dump(report["protocol"]))
  io_utils.write_text(paths["details"], dump(report.get("details", {})))
  return paths


def _shown_metrics(report: Mapping[str, Any]) -> list[str]:
  return [k for k in protocols.ALL_METRICS
          if k in report["protocol"].get("metrics", protocols.ALL_METRICS)]


def _why_undefined(counts: Mapping[str, Any], level: str) -> str:
  """Why a class's image / pixel metrics are undefined, from its counts."""
  if level == "image":
    if not counts.get("anomalous"):
      return "no anomalous image"
    if not counts.get("normal"):
      return "no normal image"
    return "undefined scores"
  if not counts.get("pixels"):
    return "no maps or masks"
  if not counts.get("defect_pixels"):
    return "no defect pixel"
  if counts.get("defect_pixels") == counts.get("pixels"):
    return "only defect pixels"
  return "undefined maps"


def table_notes(report: Mapping[str, Any]) -> list[str]:
  """One-line notes for the table: classes whose values the protocol
  substitutes (the official one-label rule) and why cells are `-`."""
  notes = []
  keys = _shown_metrics(report)
  proto = report["protocol"]
  flagged = (report.get("details") or {}).get("flagged") or {}
  flagged = {k: v for k, v in flagged.items() if k in keys and v}
  if flagged:
    classes = sorted({c for names in flagged.values() for c in names})
    values = proto.get("one_class_values") or {}
    subs = ", ".join(f"{k.replace('_', ' ')} {100 * float(values.get(k, 0)):.2f}"
                     for k in keys if k in flagged)
    notes.append(f"note: {', '.join(classes)}: one label only, so {subs} "
                 f"are the official rule's stand-ins, not measured "
                 f"({proto['name']}; --protocol raw leaves them undefined)")
  per_class_counts = (report.get("counts") or {}).get("per_class") or {}
  reasons = {}
  for name, vals in report["per_class"].items():
    for level in ("image", "pixel"):
      if any(vals.get(k) is None for k in keys if k.startswith(level)):
        why = _why_undefined(per_class_counts.get(name, {}), level)
        reasons.setdefault(name, []).append(f"{why} ({level})")
  if reasons:
    notes.append("note: '-' = undefined, excluded from the means (" + "; ".join(
        f"{name}: {', '.join(r)}" for name, r in reasons.items()) + ")")
  return notes


def rich_table(report: Mapping[str, Any], title: str | None = None):
  """A rich Table of per-class values (x100, 2 decimals) and the mean,
  followed by `table_notes` (one line each)."""
  from rich.console import Group  # pylint: disable=g-import-not-at-top
  from rich.table import Table  # pylint: disable=g-import-not-at-top
  from rich.text import Text  # pylint: disable=g-import-not-at-top
  keys = _shown_metrics(report)
  table = Table(title=title or f"protocol: {report['protocol']['name']}")
  table.add_column("class")
  for key in keys:
    table.add_column(key.replace("_", " "), justify="right")
  fmt = lambda v: "-" if v is None else f"{100 * v:.2f}"
  for name, vals in report["per_class"].items():
    table.add_row(name, *[fmt(vals[k]) for k in keys])
  table.add_section()
  table.add_row("mean", *[fmt(report["mean"][k]) for k in keys])
  notes = table_notes(report)
  return Group(table, *[Text(n) for n in notes]) if notes else table
