"""Runs a suite's units through the `Detector` protocol into the store.

  plan (scan every target) -> this shard's groups -> skip the finished
  ones (unless force) -> train the sources they need (once per source;
  `train.loop` resumes a killed training) -> per group: the detector
  (loaded once per (folder, options), so its jitted forward compiles once
  per input shape for the whole suite) -> `evaluation.run_reports` over
  the class's records -> one store record per draw as soon as it is
  evaluated -> tables and charts of the store.

A unit that fails (missing root, bad data, missing checkpoint, a reader
or model error) is stored with status "error" and its one-line error;
the other units still run. Nothing here names a method.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import time
import traceback
from typing import Any, Callable

import moeclip_jax
from moeclip_jax.benchmark import plan as plan_lib
from moeclip_jax.benchmark import report as report_lib
from moeclip_jax.benchmark import store
from moeclip_jax.benchmark import suite as suite_lib
from moeclip_jax.inference import evaluation
from moeclip_jax.methods import registry
from moeclip_jax.utils import console

log = logging.getLogger("moeclip_jax.benchmark")
DEFAULT_BATCH = 8


class UnitError(RuntimeError):
  """A unit's failure whose message is already the one-line error."""


@dataclasses.dataclass
class RunOptions:
  """`benchmark run` flags."""

  out: str
  shard: tuple[int, int] = (0, 1)
  force: bool = False
  dry_run: bool = False
  echo: Callable[[str], None] = print


@dataclasses.dataclass
class Outcome:
  """What a run did (the verb's exit code: 1 when `failed`)."""

  units: int = 0
  skipped: int = 0
  done: int = 0
  failed: list[str] = dataclasses.field(default_factory=list)
  missing: list[str] = dataclasses.field(default_factory=list)


def suite_record(config, targets) -> dict[str, Any]:
  """suite.json: the suite, its target order, domains and references."""
  return {"name": config.name, "method": config.method,
          "references": suite_lib.as_list(config.get("references")),
          "targets": [{"name": t.name, "domain": t.domain,
                       "reference": t.reference,
                       "classes": t.classes()} for t in targets],
          "config": suite_lib.to_json(config)}


def run(config, opts: RunOptions) -> Outcome:
  """Plans, (dry-)runs this shard's units and writes the report."""
  out = pathlib.Path(opts.out)
  targets = plan_lib.plan(config)
  groups = plan_lib.shard(plan_lib.all_groups(targets), *opts.shard)
  outcome = Outcome(units=sum(len(g.units) for g in groups))
  todo = [g for g in groups if opts.force or not all(
      store.is_done(out, u) for u in g.units)]
  outcome.skipped = outcome.units - sum(len(g.units) for g in todo)
  train_dirs = _train_dirs(config, out)
  outcome.missing = _missing(config, targets, todo, train_dirs)
  if opts.dry_run:
    _print_plan(groups, todo, outcome, opts.echo)
    return outcome
  store.write_suite(out, suite_record(config, targets))
  train_errors = _train_sources(config, todo, train_dirs)
  bar = console.progress(None, "benchmark units", total=outcome.units,
                         unit="unit", initial=outcome.skipped)
  detectors = DetectorCache(config.method)
  try:
    for group in todo:
      failed = run_group(config, group, out, detectors, train_dirs,
                         train_errors, bar.update)
      outcome.failed += failed
      outcome.done += len(group.units) - len(failed)
  finally:
    bar.close()
  report_lib.write_report([out], out)
  return outcome


# ---- detectors -----------------------------------------------------------------
class DetectorCache:
  """One detector per (folder, options); a failed load is kept as its
  error so that every unit it serves records it."""

  def __init__(self, method: str):
    self.method = method
    self._cache: dict[Any, Any] = {}

  def get(self, folder: str, options: dict[str, Any]):
    key = (folder, repr(sorted(options.items())))
    if key not in self._cache:
      try:
        self._cache[key] = self._load(folder, options)
      except Exception as err:  # pylint: disable=broad-except
        log.info("detector %s: %s", folder, traceback.format_exc())
        self._cache[key] = UnitError(f"detector {folder}: {_one_line(err)}")
    found = self._cache[key]
    if isinstance(found, Exception):
      raise found
    return found

  def _load(self, folder, options):
    if not (pathlib.Path(folder) / "config.json").is_file():
      raise FileNotFoundError(f"{folder}/config.json: no such detector "
                              "checkpoint")
    cls = registry.detector_class(folder)
    if cls.method != self.method:
      raise ValueError(f"a {cls.method} checkpoint; the suite's method is "
                       f"{self.method}")
    cls.check_options(folder, options)
    return cls.load(folder, **options)


# ---- one group -----------------------------------------------------------------
def run_group(config, group: plan_lib.Group, out, detectors: DetectorCache,
              train_dirs, train_errors, advance) -> list[str]:
  """Evaluates every draw of a (target, class, K); returns failed uids."""
  target = group.target
  pending = {u.draw: u for u in group.units}
  try:
    if target.error:
      raise UnitError(target.error)
    folder = suite_lib.detector_folder(config, target.name, group.shots,
                                       train_dirs)
    spec = suite_lib.serving_spec(config, target.name)
    if spec is not None and spec["name"] in train_errors:
      raise UnitError(train_errors[spec["name"]])
    options = suite_lib.method_options(config, target.spec, group.shots)
    detector = detectors.get(folder, options)
    records = group.records()
    counts = plan_lib.class_counts(records)
    meta = {"checkpoint": str(folder),
            "checkpoint_hash": evaluation.checkpoint_hash(folder),
            "dataset": target.name, "root": target.spec.get("root"),
            **detector.run_facts()}
    start = time.perf_counter()
    for report, facts, _ in evaluation.run_reports(
        detector, records, target.all_records, target.protocol,
        target.domain, meta, int(config.get("batch_size") or DEFAULT_BATCH),
        config.get("map_size")):
      unit = pending.pop(int(facts.get("draw", 0)))
      now = time.perf_counter()
      _write_ok(out, unit, group, report, facts, meta, counts, config,
                now - start)
      start = now
      advance(1)
    if pending:
      raise UnitError(f"the detector produced no run for draw(s) "
                         f"{sorted(pending)}")
  except Exception as err:  # pylint: disable=broad-except
    message = _one_line(err)
    log.warning("unit %s failed: %s", group.key, message)
    log.info("unit %s: %s", group.key, traceback.format_exc())
    for unit in pending.values():
      store.write_unit(out, unit, _base_record(group, config) | {
          "status": "error", "error": message})
      advance(1)
    return [u.uid for u in pending.values()]
  return []


def _base_record(group, config) -> dict[str, Any]:
  target = group.target
  classes = target.classes()
  return {"target_index": target.index, "domain": target.domain,
          "reference": target.reference,
          "class_index": classes.index(group.class_name),
          "version": moeclip_jax.__version__,
          "config": suite_lib.to_json(config)}


def _write_ok(out, unit, group, report, facts, meta, counts, config,
              seconds: float) -> None:
  per_class = report["per_class"]
  metrics = per_class.get(group.class_name) or next(iter(per_class.values()))
  store.write_unit(out, unit, _base_record(group, config) | {
      "status": "ok", "error": None, "metrics": metrics, "counts": counts,
      "protocol": report["protocol"], "checkpoint": meta["checkpoint"],
      "checkpoint_hash": meta["checkpoint_hash"],
      "facts": _jsonable(facts),
      "timing": {"seconds": seconds, "images": counts["images"],
                 "images_per_s": counts["images"] / max(seconds, 1e-9),
                 "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                              time.gmtime())}})


def _jsonable(value):
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (str, int, float, bool)) or value is None:
    return value
  return str(value)


def _one_line(err: BaseException) -> str:
  if isinstance(err, UnitError):
    return str(err)
  text = err.args[0] if isinstance(err, KeyError) and err.args else err
  return f"{type(err).__name__}: " + " ".join(str(text).split())


# ---- train sources ---------------------------------------------------------------
def _train_dirs(config, out) -> dict[str, str]:
  return {spec["name"]: str(spec.get("workdir")
                            or pathlib.Path(out) / "train" / spec["name"])
          for spec in suite_lib.train_specs(config)}


def _needed_sources(config, todo) -> list[dict]:
  names = {t.name for t in (g.target for g in todo) if not t.error}
  specs = [suite_lib.serving_spec(config, n) for n in sorted(names)]
  unique = {s["name"]: s for s in specs if s is not None}
  return list(unique.values())


def _train_sources(config, todo, train_dirs) -> dict[str, str]:
  """Trains each needed source whose detector is missing; {name: error}."""
  errors = {}
  for spec in _needed_sources(config, todo):
    workdir = pathlib.Path(train_dirs[spec["name"]])
    if (workdir / "detector" / "config.json").is_file():
      continue
    log.info("training source %s into %s", spec["name"], workdir)
    try:
      train_source(spec, workdir)
    except Exception as err:  # pylint: disable=broad-except
      log.warning("train %s failed: %s", spec["name"], _one_line(err))
      log.info("train %s: %s", spec["name"], traceback.format_exc())
      errors[spec["name"]] = f"train source {spec['name']}: {_one_line(err)}"
  return errors


def train_source(spec: dict[str, Any], workdir: pathlib.Path) -> None:
  """`train` of one spec: its config file with `overrides`, into workdir
  (resumes from the workdir's checkpoints; exports workdir/detector)."""
  from moeclip_jax.sharding import presets  # pylint: disable=g-import-not-at-top
  from moeclip_jax.train import loop  # pylint: disable=g-import-not-at-top
  config = presets.load_config_file(spec["config"])
  for field, value in _leaves(spec.get("overrides") or {}):
    node, *path = [config, *field.split(".")]
    for part in path[:-1]:
      node = node[part]
    node[path[-1]] = value
  loop.train(config, str(workdir))


def _leaves(overrides, prefix: str = ""):
  """("data.root", value) pairs of nested overrides ({"data": {"root":
  ...}}, as a ConfigDict holds them; a key may itself be dotted)."""
  for key, value in overrides.items():
    field = f"{prefix}{key}"
    if hasattr(value, "items"):
      yield from _leaves(value, field + ".")
    else:
      yield field, value


# ---- dry run -------------------------------------------------------------------
def _missing(config, targets, todo, train_dirs) -> list[str]:
  """What would fail or be trained: missing roots, bad data, detectors."""
  missing = [f"target {t.name}: {t.error}" for t in targets if t.error]
  folders = set()
  for group in todo:
    if group.target.error:
      continue
    folder = suite_lib.detector_folder(config, group.target.name,
                                       group.shots, train_dirs)
    if folder not in folders and not (
        pathlib.Path(folder) / "config.json").is_file():
      spec = suite_lib.serving_spec(config, group.target.name)
      what = (f"(trained first by train spec {spec['name']!r})" if spec
              else "(missing)")
      missing.append(f"detector {folder} {what}")
    folders.add(folder)
  return missing


def _print_plan(groups, todo, outcome: Outcome, echo) -> None:
  todo_keys = {g.key for g in todo}
  echo(f"{outcome.units} unit(s) in this shard, {outcome.skipped} finished, "
       f"{outcome.units - outcome.skipped} to run:")
  for group in groups:
    target = group.target
    n = (len(group.records()) if target.records is not None else "?")
    state = "todo" if group.key in todo_keys else "done"
    note = "  [scan error]" if target.error else ""
    echo(f"  {state}  {group.key}  draws={len(group.units)}  "
         f"images={n}{note}")
  if outcome.missing:
    echo("missing:")
    for item in outcome.missing:
      echo(f"  {item}")
