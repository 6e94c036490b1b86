"""PNG bar charts (ours vs reference) drawn with Pillow, one per metric.

Horizontal bars, one pair per summary row: ours (blue) and the reference
(grey, when it has the cell), values printed at the bar ends, 0-100 %.
"""

from __future__ import annotations

import pathlib
from typing import Sequence

from moeclip_jax.benchmark import tables
from moeclip_jax.utils import io

OURS, REF, AXIS = (52, 101, 164), (170, 170, 170), (60, 60, 60)
LABEL_W, BAR_W, ROW_H, TOP = 210, 420, 30, 48


def _label(row: tables.Row) -> str:
  shots = "" if row.shots is None else f" (K={row.shots})"
  return f"{row.target}{shots}"[:30]


def bar_chart(rows: Sequence[tables.Row], metric: str, title: str,
              reference_name: str | None = None):
  """A PIL image of the metric's bars (rows without a value are skipped)."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  rows = [r for r in rows if r.mean.get(metric) is not None
          and r.status != tables.ERROR]
  height = TOP + ROW_H * max(len(rows), 1) + 24
  image = Image.new("RGB", (LABEL_W + BAR_W + 70, height), "white")
  draw = ImageDraw.Draw(image)
  draw.text((8, 6), title, fill=AXIS)
  draw.rectangle((8, 26, 20, 36), fill=OURS)
  draw.text((24, 25), "ours", fill=AXIS)
  if reference_name:
    draw.rectangle((70, 26, 82, 36), fill=REF)
    draw.text((86, 25), reference_name, fill=AXIS)
  for i, row in enumerate(rows):
    y = TOP + i * ROW_H
    draw.text((8, y + 8), _label(row), fill=AXIS)
    bars = [(row.mean[metric], OURS, 0)]
    if row.reference.get(metric) is not None:
      bars.append((row.reference[metric], REF, 12))
    for value, colour, dy in bars:
      width = int(BAR_W * max(0.0, min(value, 100.0)) / 100.0)
      draw.rectangle((LABEL_W, y + 3 + dy, LABEL_W + max(width, 1),
                      y + 13 + dy), fill=colour)
      draw.text((LABEL_W + width + 4, y + 2 + dy), f"{value:.1f}", fill=AXIS)
  bottom = TOP + ROW_H * max(len(rows), 1)
  draw.line((LABEL_W, TOP - 4, LABEL_W, bottom), fill=AXIS)
  for tick in range(0, 101, 25):
    x = LABEL_W + BAR_W * tick // 100
    draw.line((x, bottom, x, bottom + 4), fill=AXIS)
    draw.text((x - 6, bottom + 6), str(tick), fill=AXIS)
  return image


def write_charts(rows: Sequence[tables.Row], folder,
                 reference_name: str | None = None) -> list[pathlib.Path]:
  """charts/<metric>.png for every metric with a value."""
  import io as std_io  # pylint: disable=g-import-not-at-top
  written = []
  for metric in tables.shown_metrics(rows):
    image = bar_chart(rows, metric, tables.LABELS[metric], reference_name)
    buf = std_io.BytesIO()
    image.save(buf, format="PNG")
    path = pathlib.Path(folder) / f"{metric}.png"
    io.write_bytes(path, buf.getvalue())
    written.append(path)
  return written

