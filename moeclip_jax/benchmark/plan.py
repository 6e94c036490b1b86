"""Units of a suite: (suite, target, class, shots, draw), and their groups.

  suite -> targets (each scanned once: its records, or the reader's error)
        -> groups (target, class, K): one `eval_runs` pass of a detector,
           which yields every prompt draw of that (class, K)
        -> units (target, class, K, draw): what the store records

A target whose scan fails (missing root, bad data) still has units: one
per listed class (or class "*" when none is listed), each failing with
the reader's error. `--shard I/N` takes every N-th group (a group's draws
share one pass, so they stay on one process; with one draw a group is a
unit).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

from moeclip_jax.benchmark import suite as suite_lib
from moeclip_jax.data import records as rec
from moeclip_jax.inference import runner

ALL_CLASSES = "*"


@dataclasses.dataclass(frozen=True)
class Unit:
  """One stored result: a class of a target at K shots, prompt draw d."""

  suite: str
  target: str
  class_name: str
  shots: int | None
  draw: int

  @property
  def uid(self) -> str:
    k = "-" if self.shots is None else self.shots
    return f"{self.suite}/{self.target}/{self.class_name}/k{k}/d{self.draw}"

  def to_json(self) -> dict[str, Any]:
    return {"suite": self.suite, "target": self.target,
            "class": self.class_name, "shots": self.shots, "draw": self.draw}


@dataclasses.dataclass
class Group:
  """The units one detector pass produces: every draw of (class, K)."""

  target: "TargetPlan"
  class_name: str
  shots: int | None
  units: list[Unit]

  @property
  def key(self) -> str:
    return self.units[0].uid.rsplit("/", 1)[0]

  def records(self) -> list[rec.Record]:
    return [r for r in self.target.records if r.class_name == self.class_name]


@dataclasses.dataclass
class TargetPlan:
  """A target with its scanned records (or the scan's error)."""

  index: int
  spec: dict[str, Any]
  domain: str
  protocol: str | None
  reference: str
  records: list[rec.Record] | None = None
  all_records: list[rec.Record] | None = None
  error: str | None = None
  groups: list[Group] = dataclasses.field(default_factory=list)

  @property
  def name(self) -> str:
    return self.spec["name"]

  def classes(self) -> list[str]:
    if self.records is not None:
      return rec.class_names(self.records)
    return [str(c) for c in suite_lib.as_list(self.spec.get("classes"))] \
        or [ALL_CLASSES]


def class_counts(records: Sequence[rec.Record]) -> dict[str, int]:
  """images / normal / anomalous / masked (anomalous with a mask)."""
  bad = [r for r in records if r.label == 1]
  return {"images": len(records), "normal": len(records) - len(bad),
          "anomalous": len(bad),
          "masked": sum(r.mask_path is not None for r in bad)}


def scan_target(spec: dict[str, Any]) -> tuple[list, list]:
  """(test records of the listed classes, every record) of a target."""
  classes = [str(c) for c in suite_lib.as_list(spec.get("classes"))] or None
  dataset = runner.DatasetSpec(spec["reader"], spec.get("root"), "test",
                               classes, dict(spec.get("reader_options") or {}))
  all_records = runner.scan_all(dataset)
  return runner.scan_records(dataset, all_records), all_records


def plan(config) -> list[TargetPlan]:
  """Scans every target and lists its groups and units (suite order)."""
  targets = []
  for i, spec in enumerate(config.targets):
    spec = dict(spec)
    target = TargetPlan(
        index=i, spec=spec, domain=suite_lib.target_domain(config, spec),
        protocol=suite_lib.target_protocol(config, spec),
        reference=str(spec.get("reference") or spec["name"]))
    try:
      target.records, target.all_records = scan_target(spec)
    except (OSError, ValueError, KeyError) as err:
      text, root = _text(err), str(spec.get("root"))
      target.error = f"{spec['reader']}: " + (
          text if root in text else f"{root}: {text}")
    draws = suite_lib.target_draws(config, spec)
    for shots in suite_lib.target_shots(config, spec):
      for name in target.classes():
        units = [Unit(config.name, target.name, name, shots, d)
                 for d in range(draws)]
        target.groups.append(Group(target, name, shots, units))
    targets.append(target)
  return targets


def _text(err: BaseException) -> str:
  """An exception as one line (KeyError's quotes dropped)."""
  text = err.args[0] if isinstance(err, KeyError) and err.args else err
  return " ".join(str(text).split())


def all_groups(targets: Sequence[TargetPlan]) -> list[Group]:
  return [g for t in targets for g in t.groups]


def parse_shard(text: str | None) -> tuple[int, int]:
  """"I/N" -> (I, N) with 0 <= I < N; None -> (0, 1)."""
  if text is None:
    return 0, 1
  match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
  if not match or not 0 <= int(match[1]) < int(match[2]):
    raise ValueError(f"--shard {text!r}: expected I/N with 0 <= I < N")
  return int(match[1]), int(match[2])


def array_shard(env: Mapping[str, str]) -> tuple[int, int] | None:
  """(I, N) of a SLURM job array task (`sbatch --array=0-3`), else None."""
  if "SLURM_ARRAY_TASK_ID" not in env or "SLURM_ARRAY_TASK_COUNT" not in env:
    return None
  low = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
  index = int(env["SLURM_ARRAY_TASK_ID"]) - low
  count = int(env["SLURM_ARRAY_TASK_COUNT"])
  if not 0 <= index < count:
    raise ValueError(f"SLURM array task {env['SLURM_ARRAY_TASK_ID']} is "
                     f"outside {low}..{low + count - 1} (use a contiguous "
                     f"--array range or pass --shard I/N)")
  return index, count


def shard(groups: Sequence[Group], index: int, count: int) -> list[Group]:
  """Every `count`-th group, starting at `index` (suite order)."""
  return [g for i, g in enumerate(groups) if i % count == index]
