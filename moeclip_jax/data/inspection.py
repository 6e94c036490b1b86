"""What `data inspect` reports: counts, mask coverage, sizes, modes, faults.

`summarise(scan)` reads each file's header only (size and PIL mode: cheap,
so it always runs); `decode=True` also decodes every image and mask
(`checks.check`) and measures each mask's defect area. The result is a plain
dict (the `--json` output) that `lines(summary)` turns into the text report.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
from typing import Any, Optional

import numpy as np
from PIL import Image

from moeclip_jax.data import checks, images
from moeclip_jax.data import records as rec
from moeclip_jax.utils import console


def _header(path: str) -> tuple[Optional[str], Optional[str], Optional[str]]:
  """(size "WxH", mode, problem) from the file header."""
  try:
    with Image.open(path) as im:
      return f"{im.size[0]}x{im.size[1]}", im.mode, None
  except FileNotFoundError:
    return None, None, "file not found"
  except (OSError, SyntaxError, ValueError) as e:
    return None, None, f"unreadable image ({e})"


def _mask_area(r: rec.Record) -> Optional[float]:
  """Defect fraction of a record's mask (within its crop), None if none."""
  if r.mask_path is None:
    return None
  try:
    _, mask = images.load_pair(r.image_path, r.mask_path, r.crop)
  except images.BadInputError:
    return None
  return float(np.count_nonzero(mask)) / max(mask.size, 1)


def _faults(scan: rec.ScanResult, headers) -> list[dict[str, str]]:
  out = [{"path": i.path, "problem": i.problem} for i in scan.issues]
  for r, (_, _, problem) in zip(scan.records, headers):
    if problem:
      out.append({"path": r.image_path, "problem": problem})
  named = {i.path for i in scan.issues}
  for r in scan.records:
    if r.image_path in named:
      continue  # the reader already said what is wrong with it
    if r.label == rec.ANOMALOUS and r.mask_path is None and scan.expects_masks:
      out.append({"path": r.image_path, "problem": "missing mask"})
    elif r.mask_path is not None and not os.path.exists(r.mask_path):
      out.append({"path": r.mask_path, "problem": "mask file not found"})
  return out


def _groups(records) -> dict[str, dict[str, Any]]:
  out: dict[str, dict[str, Any]] = {}
  for r in records:
    g = out.setdefault(f"{r.split}/{r.class_name}", {
        "split": r.split, "class": r.class_name, "normal": 0,
        "anomalous": 0, "masks": 0,
        "defects": collections.Counter()})
    g["anomalous" if r.label else "normal"] += 1
    g["masks"] += r.mask_path is not None
    if r.label:
      g["defects"][r.defect_type] += 1
  for g in out.values():
    g["defects"] = dict(sorted(g["defects"].items()))
  return dict(sorted(out.items()))


def summarise(scan: rec.ScanResult, decode: bool = False,
              num_threads: int = 4) -> dict[str, Any]:
  """The inspect report of a scan (see the module docstring)."""
  paths = [r.image_path for r in scan.records]
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    headers = list(console.progress(pool.map(_header, paths), "headers",
                                    len(paths)))
  sizes = collections.Counter(s for s, _, _ in headers if s)
  modes = collections.Counter(m for _, m, _ in headers if m)
  out: dict[str, Any] = {
      "records": len(scan.records), "groups": _groups(scan.records),
      "image_sizes": dict(sizes.most_common()),
      "image_modes": dict(modes.most_common()),
      "expects_masks": scan.expects_masks,
      "image_level": any(r.split == "test" and r.label == rec.NORMAL
                         for r in scan.records),
      "notes": list(scan.notes), "faults": _faults(scan, headers)}
  if decode:
    report = checks.check(scan, num_threads)
    seen = {(f["path"], f["problem"]) for f in out["faults"]}
    out["faults"] += [{"path": i.path, "problem": i.problem}
                      for i in report.issues
                      if (i.path, i.problem) not in seen]
    out["notes"] = report.notes
    bad = [r for r in scan.records if r.mask_path is not None]
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
      areas = list(console.progress(pool.map(_mask_area, bad), "masks",
                                    len(bad)))
    per_group: dict[str, list[float]] = {}
    for r, a in zip(bad, areas):
      if a is not None:
        per_group.setdefault(f"{r.split}/{r.class_name}", []).append(a)
        if a == 0.0:
          out["faults"].append({"path": r.mask_path,
                                "problem": "empty mask of an anomalous image"})
    for key, values in per_group.items():
      out["groups"][key]["mask_area"] = {
          "mean": float(np.mean(values)), "min": float(np.min(values)),
          "max": float(np.max(values))}
  return out


def lines(summary: dict[str, Any]) -> list[str]:
  """The text report: per split, per class, sizes, modes, notes, faults."""
  out = []
  splits = sorted({g["split"] for g in summary["groups"].values()})
  for split in splits:
    gs = [g for g in summary["groups"].values() if g["split"] == split]
    n, a = sum(g["normal"] for g in gs), sum(g["anomalous"] for g in gs)
    m = sum(g["masks"] for g in gs)
    out.append(f"{split}: {n + a} images, {n} normal, {a} anomalous, "
               f"masks {f'{m}/{a}' if a else '-'}")
    for g in gs:
      area = g.get("mask_area")
      extra = (f", mask area mean {area['mean']:.2%} "
               f"(min {area['min']:.2%}, max {area['max']:.2%})"
               if area else "")
      out.append(f"  {g['class']}: {g['normal'] + g['anomalous']} "
                 f"({g['normal']} normal, {g['anomalous']} anomalous, masks "
                 f"{g['masks']}/{g['anomalous']}{extra})")
      if g["defects"]:
        out.append("    defects: " + ", ".join(
            f"{k} {v}" for k, v in g["defects"].items()))
  out.append("image sizes: " + (", ".join(
      f"{k} x{v}" for k, v in summary["image_sizes"].items()) or "-"))
  out.append("image modes: " + (", ".join(
      f"{k} x{v}" for k, v in summary["image_modes"].items()) or "-"))
  notes = " ".join(summary["notes"])
  if not summary["image_level"] and "no normal test images" not in notes:
    out.append("no normal test images: image-level metrics will be empty")
  if not summary["expects_masks"] and "no masks" not in notes:
    out.append("no masks: pixel-level metrics will be empty")
  out += [f"NOTE {n}" for n in summary["notes"]]
  out += [f"BAD {f['path']}: {f['problem']}" for f in summary["faults"]]
  return out
