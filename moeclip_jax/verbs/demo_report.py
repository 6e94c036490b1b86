"""OUT/report.md of the demo: what ran, the numbers, the pictures, and what
they do (and do not) show."""

from __future__ import annotations

import os
import pathlib

from moeclip_jax.eval import protocols
from moeclip_jax.utils import io

HONEST_NOTE = """\
**What this shows.** Every stage of moeclip_jax ran offline on this machine:
weight conversion (`convert hf-clip`), data readers and synthetic defects,
the MoECLIP trainer (frozen CLIP towers, FOFS-LoRA experts, router, heads,
losses), jitted batched evaluation under the official per-class protocol,
label-free calibration and `predict` with overlays.

**What it does not show.** The CLIP backbone here is a tiny *random*
network (no download is possible offline), so it has no visual or language
knowledge: the numbers below only reflect what the small adapters learnt
about these synthetic defects on monocrystalline cells and how that
transfers to polycrystalline cells, from a few dozen images in a few hundred
steps. Expect values near chance level (50 %), above or below it; compare
with the untrained row. They say nothing about MoECLIP's zero-shot
accuracy. For real numbers convert real CLIP weights (`moeclip-jax convert
openclip ...`) and train on a real dataset (README, "Reproducing the
paper"). ELPV's own defect labels are not used: the defects are synthetic,
with exact masks.
"""


def _fmt(value) -> str:
  return "–" if value is None else f"{100 * value:.1f}"


def metrics_table(report: dict) -> str:
  keys = [k for k in protocols.ALL_METRICS
          if k in report["protocol"].get("metrics", protocols.ALL_METRICS)]
  lines = ["| class | " + " | ".join(keys) + " |",
           "|---" * (len(keys) + 1) + "|"]
  rows = list(report["per_class"].items()) + [("**mean**", report["mean"])]
  for name, vals in rows:
    lines.append(f"| {name} | " + " | ".join(_fmt(vals[k]) for k in keys)
                 + " |")
  return "\n".join(lines)


def comparison(report: dict, baseline: dict | None) -> str:
  """Mean metrics before (step 0) and after training, one row each."""
  if baseline is None:
    return ""
  keys = [k for k, v in report["mean"].items() if v is not None]
  lines = ["| model | " + " | ".join(keys) + " |",
           "|---" * (len(keys) + 1) + "|"]
  for name, rep in (("untrained adapters (step 0)", baseline),
                    ("trained on mono cells", report)):
    lines.append(f"| {name} | " + " | ".join(_fmt(rep["mean"].get(k))
                                             for k in keys) + " |")
  return "Before vs after training (same protocol):\n\n" + "\n".join(lines)


def _images(out: pathlib.Path, folder: pathlib.Path, limit: int) -> str:
  pngs = sorted(folder.rglob("*.png"))[:limit]
  return "\n".join(f"![{p.stem}]({os.path.relpath(p, out)})" for p in pngs)


def _predictions(summary: dict) -> str:
  preds = summary["predictions"]
  flagged = sum(1 for p in preds if p["is_anomalous"])
  truly = sum(1 for p in preds if "/good/" not in p["path"].replace(
      "\\", "/"))
  return (f"{len(preds)} images, {flagged} flagged anomalous at threshold "
          f"{summary['threshold']:.4g} ({summary['threshold_source']}; "
          f"{truly} of the images carry a synthetic defect). "
          "One JSON line per image in `predictions/predictions.jsonl`.")


def write(out: pathlib.Path, opts, report: dict, summary: dict,
          times: dict, baseline: dict | None = None) -> pathlib.Path:
  """Writes OUT/report.md; returns its path."""
  timing = "\n".join(f"| {k} | {v:.0f} |" for k, v in times.items())
  text = f"""# moeclip_jax offline demo

Trained a tiny MoECLIP for {opts.steps} steps on synthetic defects over real
ELPV **mono**crystalline solar cells, then evaluated it **zero-shot** on
**poly**crystalline cells it never saw ({opts.images} test images,
half defective; model input {opts.image_size} px).

{HONEST_NOTE}
## Zero-shot metrics (protocol `{report['protocol']['name']}`, %)

{metrics_table(report)}

{comparison(report, baseline)}

Files: `metrics.json`, `metrics.csv`, `protocol.json`, `details.json`.

## Heatmaps (original | heatmap | thresholded contour)

{_images(out, out / 'overlays', 6)}

## Label-free decisions (`calibrate`, then `predict --threshold auto`)

{_predictions(summary)}

{_images(out, out / 'predictions' / 'overlays', 4)}

## Time (seconds since start)

| stage | s |
|---|---|
{timing}

Logs: `demo.log`, `train/train.log`; TensorBoard: `tensorboard --logdir {out}`.
"""
  return io.write_text(out / "report.md", text)
