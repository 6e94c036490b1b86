"""`moeclip-jax eval`: a detector checkpoint on a labelled dataset.

Jitted, batched forward (static batch shapes; padding dropped via
`valid`), the chosen protocol of the metrics engine (default
`moeclip-released`: per-class min-max and MoECLIP's fusion), a per-class
table with means, OUT/metrics.json, metrics.csv, protocol.json,
details.json, a sample of overlays in OUT/overlays/, TensorBoard scalars
in OUT/tb/ and a log file OUT/eval.log.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pathlib
import sys
from typing import Any

import numpy as np

from moeclip_jax.eval import evaluate as eval_lib
from moeclip_jax.eval import protocols
from moeclip_jax.eval import reports
from moeclip_jax.methods.moeclip import maps
from moeclip_jax.utils import images as image_utils
from moeclip_jax.verbs import common
from moeclip_jax.verbs import inference
from moeclip_jax.verbs import overlay

log = logging.getLogger("moeclip_jax.verbs")
DEFAULT_PROTOCOL = "moeclip-released"

EXAMPLES = """
  moeclip-jax eval --checkpoint runs/visa/detector --dataset mvtec \\
      --root /data/mvtec --out results/mvtec
  moeclip-jax eval --checkpoint ckpt --dataset visa --root /data/VisA \\
      --class-names candle pcb1 --protocol raw --out results/visa
  python -m moeclip_jax.eval --checkpoint ckpt --dataset elpv --out res/
"""


def build_parser():
  p = common.parser("moeclip-jax eval", __doc__.split("\n\n")[0], EXAMPLES)
  p.add_argument("--checkpoint", required=True, help="detector folder")
  p.add_argument("--dataset", required=True,
                 help="dataset layout (mvtec, visa, btad, elpv, folder, ...)")
  p.add_argument("--root", default=None, help="dataset root folder")
  p.add_argument("--split", default="test", help="split to evaluate ('all')")
  p.add_argument("--class-names", nargs="*", help="classes to evaluate")
  p.add_argument("--protocol", default=DEFAULT_PROTOCOL,
                 help=f"one of {sorted(protocols.PROTOCOLS)} (+ ':opt=v')")
  p.add_argument("--domain", default=None, help="industrial | medical")
  p.add_argument("--dataset-prompts", default=None,
                 help="dataset whose prompt nouns to use (default: search)")
  p.add_argument("--batch-size", type=int, default=8)
  p.add_argument("--map-size", type=int, default=None,
                 help="evaluate maps at this size (must divide the model "
                      "size; bounds memory)")
  p.add_argument("--overlays", type=int, default=4,
                 help="overlays per class (half anomalous, half normal)")
  p.add_argument("--out", required=True, help="output folder")
  return p


def checkpoint_hash(checkpoint_dir) -> str:
  """sha256 of the checkpoint's config.json and params metadata files."""
  digest = hashlib.sha256()
  root = pathlib.Path(checkpoint_dir)
  for path in sorted(root.rglob("*")):
    if path.is_file() and path.stat().st_size < (1 << 20):
      digest.update(path.relative_to(root).as_posix().encode())
      digest.update(path.read_bytes())
  return digest.hexdigest()[:16]


def evaluate_checkpoint(detector, spec: inference.DatasetSpec, out,
                        protocol: str = DEFAULT_PROTOCOL,
                        domain: str | None = None, batch_size: int = 8,
                        dataset_prompts: str | None = None,
                        map_size: int | None = None,
                        overlays_per_class: int = 4) -> dict[str, Any]:
  """Predicts, evaluates and writes every report file; returns the report."""
  out = pathlib.Path(out)
  domain = maps.canonical_domain(domain or detector.default_domain)
  records = inference.scan_records(spec)
  pred = inference.predict_records(detector, records, domain, batch_size,
                                   dataset_prompts, map_size)
  names = np.asarray(pred["class_names"])[pred["class_ids"]]
  with_masks = bool(pred["has_mask"].any())
  meta = {"checkpoint": str(detector.checkpoint_dir),
          "checkpoint_hash": checkpoint_hash(detector.checkpoint_dir),
          "dataset": spec.name, "root": spec.root, "split": spec.split,
          "producer_smoothing": f"MoECLIP {domain} blur on the patch grid"}
  report = eval_lib.evaluate(
      pred["image_scores"], pred["labels"], names,
      anomaly_maps=pred["maps"] if with_masks else None,
      masks=(pred["masks"] > 0.5) if with_masks else None,
      protocol=protocol, domains=domain, metadata=meta)
  reports.write_reports(report, str(out))
  write_overlays(pred, records, out / "overlays", overlays_per_class)
  common.tensorboard_scalars(out / "tb", {f"eval/{k}": v for k, v in
                                          report["mean"].items()})
  return report


def _sample(pred, cid: int, per_class: int) -> list[int]:
  """Up to per_class positions: anomalous first half, normal second."""
  sel = np.flatnonzero(pred["class_ids"] == cid)
  bad = [i for i in sel if pred["labels"][i] == 1][:(per_class + 1) // 2]
  good = [i for i in sel if pred["labels"][i] == 0]
  return bad + good[:per_class - len(bad)]


def write_overlays(pred, records, folder, per_class: int) -> list[str]:
  """[original | heatmap | contour] PNGs of a sample per class.

  Maps are shown after the class's joint min-max (the protocol's view);
  the contour is drawn at 0.5 of that range.
  """
  written = []
  for cid, name in enumerate(pred["class_names"]):
    sel = pred["class_ids"] == cid
    lo, hi = pred["maps"][sel].min(), pred["maps"][sel].max()
    for i in _sample(pred, cid, per_class):
      record = records[int(pred["index"][i])]
      image = image_utils.load_rgb(record.image_path)
      shown = (pred["maps"][i] - lo) / max(hi - lo, 1e-12)
      tag = "anomalous" if pred["labels"][i] else "normal"
      stem = pathlib.Path(record.image_path).stem
      target = pathlib.Path(folder) / name / f"{tag}_{stem}_{i}.png"
      path = overlay.save_png(target, overlay.panels(image, shown, 0.5))
      written.append(str(path))
  return written


def run(args) -> dict[str, Any]:
  out = pathlib.Path(args.out)
  common.add_log_file(out, "eval")
  detector = common.load_detector(args.checkpoint)
  spec = inference.DatasetSpec(args.dataset, args.root, args.split,
                               common.parse_class_names(args.class_names))
  report = evaluate_checkpoint(
      detector, spec, out, args.protocol, args.domain, args.batch_size,
      args.dataset_prompts, args.map_size, args.overlays)
  common.console().print(reports.rich_table(report))
  log.info("eval means %s", json.dumps(report["mean"]))
  print(f"wrote {out / reports.METRICS_FILE}")
  return report


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  try:
    run(args)
  except (ValueError, FileNotFoundError, KeyError) as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  return 0
