"""`moeclip-jax calibrate`: thresholds + per-class statistics for predict.

From normal images only (a folder, no labels): the (1 - fpr) quantile of
their fused scores. From a labelled dataset: the F1-optimal threshold
(--f1) or the threshold reaching a target false-positive rate (--fpr).
The statistics and thresholds go to CHECKPOINT/calibration.json, which
`predict --threshold auto` reads.
"""

from __future__ import annotations

import logging
import sys

from moeclip_jax.inference import calibration, runner
from moeclip_jax.utils import images as image_utils
from moeclip_jax.verbs import common

log = logging.getLogger("moeclip_jax.verbs")

EXAMPLES = """
  moeclip-jax calibrate --checkpoint runs/tiny/detector --normal good/ \\
      --class-name bottle --fpr 0.01
  moeclip-jax calibrate --checkpoint runs/tiny/detector --dataset mvtec \\
      --root /data/mvtec --f1
  moeclip-jax calibrate --checkpoint ckpt/inctrl_k2 --normal good/ \\
      --class-name candle --prompts prompts/ --fpr 0.05
"""


def build_parser():
  p = common.parser("moeclip-jax calibrate", __doc__.split("\n\n")[0],
                    EXAMPLES)
  p.add_argument("--checkpoint", required=True, help="detector folder")
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--normal", nargs="+", help="normal images / folders")
  src.add_argument("--dataset", help="labelled dataset layout (e.g. mvtec)")
  p.add_argument("--root", help="dataset root (with --dataset)")
  p.add_argument("--split", default="test", help="dataset split (or 'all')")
  p.add_argument("--class-name", default=None,
                 help="class of the --normal images (default: '*', any)")
  p.add_argument("--class-names", nargs="*", help="dataset classes to use")
  rule = p.add_mutually_exclusive_group()
  rule.add_argument("--fpr", type=float, default=0.01,
                    help="target false-positive rate (default 0.01)")
  rule.add_argument("--f1", action="store_true",
                    help="F1-optimal threshold (labelled data only)")
  p.add_argument("--batch-size", type=int, default=8)
  p.add_argument("--replace", action="store_true",
                 help="drop classes calibrated earlier")
  common.add_method_options(p, "calibrate")
  return p


def _from_normal(detector, args):
  paths, problems = common.list_images(args.normal)
  images = []
  for path in paths:
    try:
      images.append(image_utils.load_rgb(path))
    except (ValueError, FileNotFoundError) as err:
      problems.append(str(err))
  for problem in problems:
    log.warning("calibrate: skipped %s", problem)
  if not images:
    raise ValueError(f"no readable images in {args.normal}")
  name = args.class_name or calibration.ANY_CLASS
  prompt_class = args.class_name or "object"
  detector.begin_predict(None, prompt_class, None)
  extra = detector.calibration_entry(images, prompt_class, args.batch_size)
  raw_maps, scores = detector.predict_images(
      images, prompt_class, args.batch_size, extra or None, desc="calibrate")
  entry = calibration.calibrate_class(raw_maps, scores,
                                      detector.score_fusion, "quantile",
                                      args.fpr)
  entry.update(extra, **detector.calibration_extras(None, None))
  return {name: entry}, {"kind": "normal", "inputs": list(args.normal),
                         "skipped": problems}


def _from_dataset(detector, args):
  if args.root is None and args.dataset != "elpv":
    raise ValueError("--dataset needs --root")
  spec = runner.DatasetSpec(args.dataset, args.root, args.split,
                               common.parse_class_names(args.class_names))
  all_records = runner.scan_all(spec)
  pred, _ = next(iter(detector.eval_runs(
      runner.scan_records(spec, all_records), all_records,
      args.batch_size)))
  rule = "f1" if args.f1 else "fpr"
  classes = {}
  for cid, name in enumerate(pred["class_names"]):
    sel = pred["class_ids"] == cid
    masks = pred["masks"][sel] if pred["has_mask"][sel].any() else None
    classes[name] = calibration.calibrate_class(
        pred["maps"][sel], pred["image_scores"][sel], detector.score_fusion,
        rule, args.fpr, labels=pred["labels"][sel], masks=masks)
    classes[name].update(detector.calibration_extras(pred, cid))
  return classes, {"kind": "dataset", "dataset": args.dataset,
                   "root": args.root, "split": args.split}


def run(args) -> dict:
  """Loads the detector, calibrates, writes calibration.json."""
  common.add_log_file(args.checkpoint, "calibrate")
  return calibrate_detector(common.load_detector(
      args.checkpoint, common.method_options(args)), args)


def calibrate_detector(detector, args) -> dict:
  """Calibrates a loaded detector (parsed `args` of this verb) and writes
  calibration.json into args.checkpoint; returns it."""
  if not args.replace:
    calibration.check_method(calibration.load(args.checkpoint),
                             detector.method, args.checkpoint)
  build = _from_normal if args.normal else _from_dataset
  classes, source = build(detector, args)
  result = {"format": calibration.FORMAT, "domain": detector.domain,
            "method": detector.method,
            "score_rule": ("image_score" if detector.score_fusion is None
                           else f"{detector.method}_fusion"),
            "rule": "f1" if args.f1 else ("quantile" if args.normal
                                          else "fpr"),
            "fpr": None if args.f1 else args.fpr, "source": source,
            "classes": classes}
  path = calibration.save(args.checkpoint, result, merge=not args.replace)
  _print_table(classes)
  log.info("calibration written to %s", path)
  print(f"wrote {path}")
  return result


def _print_table(classes: dict) -> None:
  from rich.table import Table  # pylint: disable=g-import-not-at-top
  table = Table(title="calibration")
  for col in ("class", "images", "anomalous", "threshold", "map threshold",
              "score min..max", "map min..max"):
    table.add_column(col, justify="left" if col == "class" else "right")
  for name, e in classes.items():
    table.add_row(name, str(e["num_images"]), str(e["num_anomalous"]),
                  f"{e['threshold']:.4g}", f"{e['map_threshold']:.4g}",
                  f"{e['score_min']:.3g}..{e['score_max']:.3g}",
                  f"{e['map_min']:.3g}..{e['map_max']:.3g}")
  common.console().print(table)


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  if args.f1 and args.normal:
    print("error: --f1 needs a labelled --dataset", file=sys.stderr)
    return 2
  try:
    run(args)
  except (ValueError, FileNotFoundError, KeyError) as err:
    print(f"error: {err}", file=sys.stderr)
    return 2
  return 0
