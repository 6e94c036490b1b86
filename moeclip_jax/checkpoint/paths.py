"""Workdirs that may live on gs:// (pod hosts share no filesystem).

Orbax checkpoints go straight to the workdir (local or gs://, via
etils.epath). Everything else the trainer writes (log, config.json, reports,
tensorboard, the exported detector) uses plain file APIs, so for a remote
workdir it is written into a local staging folder and copied up by
`sync_up` (process 0) at the end of training.

  local_workdir("runs/a")         -> runs/a (itself)
  local_workdir("gs://b/runs/a")  -> $MOECLIP_JAX_STAGING/b/runs/a
                                     (default ~/.cache/moeclip_jax/staging)
  checkpoint_root(<that staging folder>) -> gs://b/runs/a
"""

from __future__ import annotations

import logging
import os
import pathlib

from etils import epath

log = logging.getLogger("moeclip_jax.checkpoint")
STAGING_ENV = "MOECLIP_JAX_STAGING"
_REMOTE_OF: dict[str, str] = {}


def is_remote(path) -> bool:
  return "://" in str(path)


def local_workdir(workdir) -> pathlib.Path:
  """`workdir` itself when local; a staging folder for gs:// and co."""
  if not is_remote(workdir):
    return pathlib.Path(str(workdir))
  scheme, rest = str(workdir).split("://", 1)
  root = os.environ.get(STAGING_ENV) or pathlib.Path.home() / ".cache" / (
      "moeclip_jax/staging")
  local = pathlib.Path(root) / scheme / rest.strip("/")
  _REMOTE_OF[str(local.absolute())] = str(workdir).rstrip("/")
  return local


def checkpoint_root(workdir) -> epath.Path:
  """Where checkpoints of `workdir` live (the remote one if staged)."""
  key = str(pathlib.Path(str(workdir)).absolute()) if not is_remote(
      workdir) else ""
  remote = _REMOTE_OF.get(key)
  if remote is not None:
    return epath.Path(remote)
  if is_remote(workdir):
    return epath.Path(str(workdir))
  return epath.Path(pathlib.Path(str(workdir)).absolute())


def sync_up(workdir) -> int:
  """Copies a staged workdir's files (not ckpt/) to its remote; process 0.

  Returns:
    number of files copied (0 for a local workdir or another process).
  """
  import jax  # pylint: disable=g-import-not-at-top
  local = pathlib.Path(str(workdir))
  remote = _REMOTE_OF.get(str(local.absolute()))
  if remote is None or jax.process_index() != 0:
    return 0
  count = 0
  for src in sorted(local.rglob("*")):
    rel = src.relative_to(local)
    if not src.is_file() or rel.parts[0] == "ckpt":
      continue
    dst = epath.Path(remote) / rel.as_posix()
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())
    count += 1
  log.info("copied %d files from %s to %s", count, local, remote)
  return count
