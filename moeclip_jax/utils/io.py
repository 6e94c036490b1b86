"""Atomic file writes: nothing a user produced is left half-written."""

from __future__ import annotations

import json
import os
import pathlib
import tempfile

import numpy as np


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _atomic(path, write_fn, mode="wb"):
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
  try:
    with os.fdopen(fd, mode) as f:
      write_fn(f)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp files are 0600
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return path


def write_npz(path, **arrays) -> pathlib.Path:
  return _atomic(path, lambda f: np.savez(f, **arrays))


def write_json(path, obj) -> pathlib.Path:
  return _atomic(
      path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n"),
      mode="w")


def write_text(path, text: str) -> pathlib.Path:
  return _atomic(path, lambda f: f.write(text), mode="w")


def write_bytes(path, data: bytes) -> pathlib.Path:
  return _atomic(path, lambda f: f.write(data))
