"""Validating records before they are written: the bad-input policy.

Policy (issue #5, item 5): convert what can be converted (each conversion is a
note the caller logs); everything else becomes an `Issue` naming the file and
the problem. The caller then either stops (non-zero exit, every issue
printed) or, with skip-bad, writes the good records and prints every skipped
path. Accounting always holds: items in = records kept + items skipped.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os

from moeclip_jax.data import images
from moeclip_jax.data import records as rec


@dataclasses.dataclass
class CheckReport:
  """Outcome of `check`.

  Attributes:
    kept: records that decode (possibly after conversion).
    issues: every problem found, reader issues included.
    notes: conversion notes and reader notes.
    items_in: input items seen (records plus items the reader could not
      even turn into a record).
  """

  kept: list[rec.Record]
  issues: list[rec.Issue]
  notes: list[str]
  items_in: int

  @property
  def skipped(self) -> list[rec.Issue]:
    """One issue per skipped item (the first problem of each)."""
    seen, out = set(), []
    for issue in self.issues:
      if not issue.is_item:
        continue
      key = id(issue.record) if issue.record is not None else id(issue)
      if key not in seen:
        seen.add(key)
        out.append(issue)
    return out


def _check_one(
    record: rec.Record, expects_masks: bool
) -> tuple[list[str], list[rec.Issue]]:
  """Decodes one record's image and mask; returns (notes, issues)."""
  notes: list[str] = []
  try:
    images.load_pair(record.image_path, record.mask_path, record.crop, notes)
  except images.BadInputError as e:
    return notes, [rec.Issue(e.path, e.problem, record)]
  if (record.mask_path is None and record.label == rec.ANOMALOUS
      and expects_masks):
    return notes, [rec.Issue(
        record.image_path, "missing mask for an anomalous image", record)]
  return notes, []


def _duplicates(records: list[rec.Record]) -> list[rec.Issue]:
  seen, issues = set(), []
  for r in records:
    key = (os.path.realpath(r.image_path), r.crop, r.split)
    if key in seen:
      issues.append(rec.Issue(
          r.image_path, f"duplicate path in split {r.split!r}", r))
    seen.add(key)
  return issues


def check(scan: rec.ScanResult, num_threads: int = 4) -> CheckReport:
  """Decodes every record of `scan` and applies the bad-input policy."""
  issues = list(scan.issues) + _duplicates(scan.records)
  bad_ids = {id(i.record) for i in issues if i.record is not None}
  todo = [r for r in scan.records if id(r) not in bad_ids]
  notes = list(scan.notes)
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    results = list(pool.map(
        lambda r: _check_one(r, scan.expects_masks), todo))
  kept = []
  for record, (record_notes, record_issues) in zip(todo, results):
    notes += record_notes
    issues += record_issues
    if not record_issues:
      kept.append(record)
  orphans = sum(1 for i in scan.issues if i.is_item and i.record is None)
  return CheckReport(kept, issues, notes, len(scan.records) + orphans)
