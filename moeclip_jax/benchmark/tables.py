"""The paper tables of a store: rows, aggregation rules, CSV / md / LaTeX.

Aggregation (shared/spec/moeclip.md §8, the paper's "Average" rows):
  * a class's value is its metric rounded to 4 decimals x 100 (the
    released `metrics_eval`);
  * image metrics do not apply to a class without normal (or without
    anomalous) images; pixel metrics do not apply to a class without any
    mask. Such cells are empty (never 0), whatever the protocol wrote;
  * a target's value at draw d is the mean over its classes (NaN skipped);
    the average rows (industrial, medical, all) are the mean over the
    targets with a value, per K;
  * with several prompt draws a cell is mean +- std (ddof 0) over draws.
A row with a failed unit shows `error` in its metric cells and is left out
of the averages. Tables hold metrics only (no paths or timings), so equal
stores give byte-equal files.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from typing import Any, Mapping, Sequence

import numpy as np

METRICS = ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap",
           "pixel_aupro")
LABELS = {"image_auroc": "image AUROC", "image_ap": "image AP",
          "pixel_auroc": "pixel AUROC", "pixel_ap": "pixel AP",
          "pixel_aupro": "pixel AUPRO"}
DOMAINS = ("industrial", "medical")
ERROR = "error"
AVERAGE = "Average ({})"


@dataclasses.dataclass
class Row:
  """One table row; `mean`/`std`/`delta` map metric -> value or None."""

  target: str
  shots: int | None
  domain: str
  draws: int
  status: str
  class_name: str | None = None
  mean: dict[str, float | None] = dataclasses.field(default_factory=dict)
  std: dict[str, float | None] = dataclasses.field(default_factory=dict)
  delta: dict[str, float | None] = dataclasses.field(default_factory=dict)
  reference: dict[str, float | None] = dataclasses.field(
      default_factory=dict)
  is_average: bool = False


def unit_value(unit: Mapping[str, Any], metric: str) -> float | None:
  """A unit's metric in % (4-decimal rounding), None where it does not
  apply (no normals / no anomalies for image metrics, no masks for pixel
  metrics) or was not computed."""
  if unit.get("status") != "ok":
    return None
  counts = unit["counts"]
  if metric.startswith("image") and not (counts["normal"]
                                         and counts["anomalous"]):
    return None
  if metric.startswith("pixel") and not counts["masked"]:
    return None
  value = unit["metrics"].get(metric)
  return None if value is None else round(float(value), 4) * 100.0


def _mean(values) -> float | None:
  values = [v for v in values if v is not None]
  return float(np.mean(values)) if values else None


def _mean_std(per_draw: Sequence[float | None]):
  values = [v for v in per_draw if v is not None]
  if not values:
    return None, None
  return float(np.mean(values)), float(np.std(values))


def _draws(units) -> list[int]:
  return sorted({u["unit"]["draw"] for u in units})


def _by(units, *keys) -> dict:
  out: dict = {}
  for u in units:
    out.setdefault(tuple(u["unit"][k] for k in keys), []).append(u)
  return out


def _status(units) -> str:
  return ERROR if any(u.get("status") != "ok" for u in units) else "ok"


def per_class_rows(units: Sequence[Mapping[str, Any]]) -> list[Row]:
  """One row per (target, K, class), in suite / class order."""
  rows = []
  groups = _by(units, "target", "shots", "class")
  for (target, shots, name), group in sorted(
      groups.items(), key=lambda kv: _order(kv[1][0])):
    draws = {u["unit"]["draw"]: u for u in group}
    row = Row(target, shots, group[0]["domain"], len(draws), _status(group),
              class_name=name)
    for metric in METRICS:
      row.mean[metric], row.std[metric] = _mean_std(
          [unit_value(draws[d], metric) for d in sorted(draws)])
    rows.append(row)
  return rows


def _order(unit) -> tuple:
  shots = unit["unit"]["shots"]
  return (unit["target_index"], -1 if shots is None else shots,
          unit["class_index"], unit["unit"]["class"])


def _target_per_draw(group, metric) -> dict[int, float | None]:
  """draw -> the target's class mean at that draw."""
  return {d: _mean(unit_value(u, metric) for u in group
                   if u["unit"]["draw"] == d) for d in _draws(group)}


def summary_rows(units: Sequence[Mapping[str, Any]]) -> list[Row]:
  """One row per (target, K) in suite order, then the average rows of
  each K (industrial, medical when present, all)."""
  rows, per_draw = [], {}
  groups = _by(units, "target", "shots")
  for (target, shots), group in sorted(
      groups.items(), key=lambda kv: _order(kv[1][0])[:2]):
    row = Row(target, shots, group[0]["domain"], len(_draws(group)),
              _status(group))
    for metric in METRICS:
      values = _target_per_draw(group, metric)
      per_draw[(target, shots, metric)] = values
      row.mean[metric], row.std[metric] = _mean_std(list(values.values()))
    rows.append(row)
  for shots in dict.fromkeys(r.shots for r in rows):
    rows += _average_rows([r for r in rows if r.shots == shots], per_draw)
  return rows


def _average_rows(rows: Sequence[Row], per_draw) -> list[Row]:
  out = []
  present = [d for d in DOMAINS if any(r.domain == d for r in rows)]
  for domain in present + ["all"]:
    members = [r for r in rows if r.status == "ok"
               and (domain == "all" or r.domain == domain)]
    chosen = [r for r in rows if domain == "all" or r.domain == domain]
    row = Row(AVERAGE.format(domain), rows[0].shots, domain,
              _common_draws(members, per_draw),
              "ok" if len(members) == len(chosen) else "partial",
              is_average=True)
    for metric in METRICS:
      row.mean[metric], row.std[metric] = _average(members, per_draw,
                                                   metric)
    out.append(row)
  return out


def _common_draws(members, per_draw) -> int:
  """The draw count shared by every member (1 when they differ)."""
  counts = {len(per_draw[(r.target, r.shots, m)]) for r in members
            for m in METRICS}
  return counts.pop() if len(counts) == 1 else 1


def _average(members, per_draw, metric):
  """(mean, std) of an average row: the mean over members of their value;
  with the same draws everywhere, mean +- std over draws of the per-draw
  average (the same mean), else no std."""
  tables_ = [per_draw[(r.target, r.shots, metric)] for r in members]
  tables_ = [t for t in tables_ if any(v is not None for v in t.values())]
  if not tables_:
    return None, None
  draws = {tuple(sorted(t)) for t in tables_}
  if len(draws) == 1:
    return _mean_std([_mean(t[d] for t in tables_) for d in draws.pop()])
  return _mean(_mean_std(list(t.values()))[0] for t in tables_), None


# ---- references ----------------------------------------------------------------
def add_deltas(rows: Sequence[Row], reference: Mapping[str, Any] | None,
               keys: Mapping[str, str]) -> None:
  """Fills `reference` and `delta` (ours - reference, in points) of each
  row from a reference table ({"rows": {key: {metric: %}}}); `keys` maps
  a target to its reference key."""
  if not reference:
    return
  table = reference.get("rows", {})
  for row in rows:
    key = row.target if row.is_average else keys.get(row.target, row.target)
    entry = (table.get(f"{key}@k{row.shots}") if row.shots is not None
             else None) or table.get(key) or {}
    for metric in METRICS:
      ref = entry.get(metric)
      row.reference[metric] = ref
      ours = row.mean.get(metric)
      row.delta[metric] = (None if ref is None or ours is None
                           or row.status == ERROR else ours - ref)


# ---- formats -------------------------------------------------------------------
def _fmt(value: float | None) -> str:
  return "" if value is None else f"{value:.1f}"


def _signed(value: float | None) -> str:
  return "" if value is None else f"{value:+.1f}"


def _cell(row: Row, metric: str, pm: str = " ± ") -> str:
  if row.status == ERROR:
    return ERROR
  mean, std = row.mean.get(metric), row.std.get(metric)
  if mean is None:
    return ""
  if row.draws > 1 and std is not None:
    return f"{mean:.1f}{pm}{std:.1f}"
  return f"{mean:.1f}"


def to_csv(rows: Sequence[Row], per_class: bool = False,
           with_delta: bool = False) -> str:
  """Fixed columns: target[, class], shots, domain, draws, status, the
  five metrics (%, 1 decimal; `error` for a failed row), their std over
  draws[, the reference and delta columns]."""
  header = ["target"] + (["class"] if per_class else []) + [
      "shots", "domain", "draws", "status", *METRICS,
      *(f"{m}_std" for m in METRICS)]
  if with_delta:
    header += [f"{m}_ref" for m in METRICS] + [f"{m}_delta" for m in METRICS]
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(header)
  for row in rows:
    error = row.status == ERROR
    cells = [row.target] + ([row.class_name] if per_class else []) + [
        "" if row.shots is None else row.shots, row.domain, row.draws,
        row.status]
    cells += [ERROR if error else _fmt(row.mean.get(m)) for m in METRICS]
    cells += ["" if error or row.draws < 2 else _fmt(row.std.get(m))
              for m in METRICS]
    if with_delta:
      cells += [_fmt(row.reference.get(m)) for m in METRICS]
      cells += [_signed(row.delta.get(m)) for m in METRICS]
    writer.writerow(cells)
  return buf.getvalue()


def shown_metrics(rows: Sequence[Row]) -> list[str]:
  """The metrics with at least one value (md / LaTeX / charts)."""
  return [m for m in METRICS if any(r.mean.get(m) is not None for r in rows)]


def _columns(rows, per_class: bool, with_delta: bool):
  metrics = shown_metrics(rows)
  shots = any(r.shots is not None for r in rows)
  head = ["target"] + (["class"] if per_class else []) + (
      ["K"] if shots else [])
  cols = [(LABELS[m], m, False) for m in metrics]
  if with_delta:
    cols += [(f"Δ {LABELS[m]}", m, True) for m in metrics
             if any(r.delta.get(m) is not None for r in rows)]
  return head, cols, shots


def _lead(row: Row, per_class: bool, shots: bool) -> list[str]:
  return [row.target] + ([row.class_name or ""] if per_class else []) + (
      ["" if row.shots is None else str(row.shots)] if shots else [])


def to_markdown(rows: Sequence[Row], per_class: bool = False,
                with_delta: bool = False, title: str | None = None) -> str:
  head, cols, shots = _columns(rows, per_class, with_delta)
  lines = [f"## {title}", ""] if title else []
  names = head + [c[0] for c in cols]
  lines.append("| " + " | ".join(names) + " |")
  lines.append("|" + "|".join(["---"] * len(head) + ["---:"] * len(cols))
               + "|")
  for row in rows:
    cells = _lead(row, per_class, shots)
    cells = [f"**{c}**" if row.is_average and c else c for c in cells]
    cells += [_signed(row.delta.get(m)) if delta else _cell(row, m)
              for _, m, delta in cols]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$",
        "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\~{}",
        "^": r"\^{}"}


def tex_escape(text: str) -> str:
  return "".join(_TEX.get(ch, ch) for ch in str(text))


def to_latex(rows: Sequence[Row], per_class: bool = False,
             with_delta: bool = False, caption: str | None = None) -> str:
  """A booktabs tabular (\\toprule / \\midrule before the averages /
  \\bottomrule); mean $\\pm$ std over draws; needs \\usepackage{booktabs}."""
  head, cols, shots = _columns(rows, per_class, with_delta)
  spec = "l" * len(head) + "r" * len(cols)
  names = head + [c[0].replace("Δ", r"$\Delta$") for c in cols]
  lines = [r"\begin{table}[t]", r"\centering"]
  if caption:
    lines.append(r"\caption{" + tex_escape(caption) + "}")
  lines += [r"\begin{tabular}{" + spec + "}", r"\toprule",
            " & ".join(tex_escape(n) if "$" not in n else n
                       for n in names) + r" \\", r"\midrule"]
  seen_average = False
  for row in rows:
    if row.is_average and not seen_average:
      lines.append(r"\midrule")
      seen_average = True
    cells = [tex_escape(c) for c in _lead(row, per_class, shots)]
    cells += [_signed(row.delta.get(m)) if delta
              else _cell(row, m, r" $\pm$ ") for _, m, delta in cols]
    lines.append(" & ".join(cells) + r" \\")
  lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
  return "\n".join(lines) + "\n"
