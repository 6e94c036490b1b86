"""`moeclip-jax eval`: a detector checkpoint on a labelled dataset.

Jitted, batched forward (static batch shapes; padding dropped via
`valid`), the chosen protocol of the metrics engine (default
`moeclip-released`: per-class min-max and MoECLIP's fusion), a per-class
table with means, OUT/metrics.json, metrics.csv, protocol.json,
details.json, a sample of overlays in OUT/overlays/, TensorBoard scalars
in OUT/tb/ and a log file OUT/eval.log.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import sys
from typing import Any

import numpy as np

from moeclip_jax.eval import protocols
from moeclip_jax.eval import reports
from moeclip_jax.inference import evaluation
from moeclip_jax.utils import images as image_utils
from moeclip_jax.utils import io
from moeclip_jax.verbs import adapters
from moeclip_jax.verbs import common
from moeclip_jax.verbs import draws
from moeclip_jax.verbs import inference
from moeclip_jax.verbs import overlay

log = logging.getLogger("moeclip_jax.verbs")
DEFAULT_PROTOCOL = "moeclip-released"  # MoECLIP's; others default to raw
EXTRA_KEYS = ("std", "prompt_draws")

EXAMPLES = """
  moeclip-jax eval --checkpoint runs/visa/detector --dataset mvtec \\
      --root /data/mvtec --out results/mvtec
  moeclip-jax eval --checkpoint ckpt --dataset visa --root /data/VisA \\
      --class-names candle pcb1 --protocol raw --out results/visa
  python -m moeclip_jax.eval --checkpoint ckpt --dataset elpv --out res/
  moeclip-jax eval --checkpoint ckpt/inctrl_k2 --dataset visa \\
      --root /data/VisA --shots 4 --prompt-draws 5 --out results/inctrl
"""


def build_parser():
  p = common.parser("moeclip-jax eval", __doc__.split("\n\n")[0], EXAMPLES)
  p.add_argument("--checkpoint", required=True, help="detector folder")
  p.add_argument("--dataset", required=True,
                 help="dataset layout (mvtec, visa, btad, elpv, folder, ...)")
  p.add_argument("--root", default=None, help="dataset root folder")
  p.add_argument("--split", default="test", help="split to evaluate ('all')")
  p.add_argument("--class-names", nargs="*", help="classes to evaluate")
  p.add_argument("--protocol", default=None,
                 help=f"one of {sorted(protocols.PROTOCOLS)} (+ ':opt=v'); "
                      f"default {DEFAULT_PROTOCOL} for MoECLIP, raw for "
                      "InCTRL / AnomalyMoE")
  p.add_argument("--domain", default=None,
                 help="industrial | medical (MoECLIP)")
  p.add_argument("--dataset-prompts", default=None,
                 help="dataset whose prompt nouns to use (MoECLIP; "
                      "default: search)")
  p.add_argument("--batch-size", type=int, default=8)
  p.add_argument("--map-size", type=int, default=None,
                 help="evaluate maps at this size (must divide the model "
                      "size; bounds memory)")
  p.add_argument("--overlays", type=int, default=4,
                 help="overlays per class (half anomalous, half normal)")
  p.add_argument("--out", required=True, help="output folder")
  adapters.add_method_flags(p, "eval")
  return p


checkpoint_hash = evaluation.checkpoint_hash  # kept for importers


def evaluate_checkpoint(detector, spec: inference.DatasetSpec, out,
                        protocol: str | None = None,
                        domain: str | None = None, batch_size: int = 8,
                        dataset_prompts: str | None = None,
                        map_size: int | None = None,
                        overlays_per_class: int = 4,
                        options: adapters.Options | None = None
                        ) -> dict[str, Any]:
  """Predicts, evaluates and writes every report file; returns the report.

  `detector`: a loaded detector or its `adapters.Adapter`; `domain` and
  `dataset_prompts` are MoECLIP's options (also accepted in `options`).
  """
  out = pathlib.Path(out)
  given = {k: v for k, v in (("domain", domain),
                             ("dataset_prompts", dataset_prompts))
           if v is not None}
  if given:
    options = dataclasses.replace(options or adapters.Options(), **given)
  adapter = adapters.make_adapter(detector, options=options)
  protocol = protocol or adapter.default_protocol
  all_records = inference.scan_all(spec)
  records = inference.scan_records(spec, all_records)
  meta = {"dataset": spec.name, "root": spec.root, "split": spec.split}
  runs, first = [], None
  for report, facts, pred in evaluation.evaluate_runs(
      adapter, records, all_records, protocol, batch_size, map_size, meta):
    runs.append((report, facts))
    first = first or pred
  if adapter.name == "inctrl":
    report = draws.aggregate([r for r, _ in runs], [f for _, f in runs],
                             getattr(adapter, "shots", None))
    if len(runs) > 1:
      for i, (r, _) in enumerate(runs):
        reports.write_reports(r, str(out / "draws" / f"draw_{i}"))
  else:
    report = runs[0][0]
  write_all_reports(report, out)
  write_overlays(first, records, out / "overlays", overlays_per_class,
                 adapter.map_to_image)
  common.tensorboard_scalars(out / "tb", {f"eval/{k}": v for k, v in
                                          report["mean"].items()})
  return report


def write_all_reports(report, out) -> None:
  """metrics.json/csv, protocol.json, details.json; metrics.json also
  gets "std" and "prompt_draws" when the report has them."""
  paths = reports.write_reports(report, str(out))
  extra = {k: report[k] for k in EXTRA_KEYS if k in report}
  if extra:
    path = pathlib.Path(paths["metrics"])
    metrics = json.loads(path.read_text())
    io.write_text(path, json.dumps({**metrics, **extra}, indent=2,
                                   allow_nan=False) + "\n")


def _sample(pred, cid: int, per_class: int) -> list[int]:
  """Up to per_class positions: anomalous first half, normal second."""
  sel = np.flatnonzero(pred["class_ids"] == cid)
  bad = [i for i in sel if pred["labels"][i] == 1][:(per_class + 1) // 2]
  good = [i for i in sel if pred["labels"][i] == 0]
  return bad + good[:per_class - len(bad)]


def write_overlays(pred, records, folder, per_class: int,
                   to_image=overlay.resize_map) -> list[str]:
  """[original | heatmap | contour] PNGs of a sample per class.

  Maps are shown after the class's joint min-max (the protocol's view);
  the contour is drawn at 0.5 of that range. `to_image(map, (H, W))`
  puts a model-size map on the original image.
  """
  written = []
  for cid, name in enumerate(pred["class_names"]):
    sel = pred["class_ids"] == cid
    lo, hi = pred["maps"][sel].min(), pred["maps"][sel].max()
    for i in _sample(pred, cid, per_class):
      record = records[int(pred["index"][i])]
      image = image_utils.load_rgb(record.image_path)
      shown = to_image((pred["maps"][i] - lo) / max(hi - lo, 1e-12),
                       image.shape[:2])
      tag = "anomalous" if pred["labels"][i] else "normal"
      stem = pathlib.Path(record.image_path).stem
      target = pathlib.Path(folder) / name / f"{tag}_{stem}_{i}.png"
      path = overlay.save_png(target, overlay.panels(image, shown, 0.5))
      written.append(str(path))
  return written


def run(args) -> dict[str, Any]:
  out = pathlib.Path(args.out)
  common.add_log_file(out, "eval")
  adapter = common.load_adapter(args.checkpoint,
                                adapters.Options.from_args(args))
  spec = inference.DatasetSpec(args.dataset, args.root, args.split,
                               common.parse_class_names(args.class_names))
  report = evaluate_checkpoint(
      adapter, spec, out, args.protocol, batch_size=args.batch_size,
      map_size=args.map_size, overlays_per_class=args.overlays)
  common.console().print(reports.rich_table(report))
  if "std" in report:
    _print_draws(report)
  log.info("eval means %s", json.dumps(report["mean"]))
  print(f"wrote {out / reports.METRICS_FILE}")
  return report


def _print_draws(report) -> None:
  draws_ = report["prompt_draws"]
  parts = [f"{k} {v:.4f} +- {report['std']['mean'][k]:.4f}"
           for k, v in report["mean"].items() if v is not None]
  common.console().print(f"K={draws_['shots']} over {draws_['num_draws']} "
                         f"prompt draw(s): " + ", ".join(parts))


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  try:
    run(args)
  except (ValueError, FileNotFoundError, KeyError) as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  return 0
