"""Host coordination helpers for multi-controller runs (every process runs
the same program). Collectives here must be called by every process."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

# Variables whose presence means "a launcher started this process as one of
# several" (TPU VM slice, SLURM, Open MPI, an explicit coordinator).
CLUSTER_VARS = ("TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE",
                "JAX_COORDINATOR_ADDRESS")


def maybe_initialize_distributed(mode: str) -> bool:
  """jax.distributed.initialize() for mode "on", or for "auto" when one of
  CLUSTER_VARS is set; "off" never. True when it initialised."""
  if mode == "off":
    return False
  if mode == "auto" and not any(v in os.environ for v in CLUSTER_VARS):
    return False
  jax.distributed.initialize()
  return True


def gather_strings(text: str) -> list[str]:
  """Every process's `text`, in process order (a collective)."""
  if jax.process_count() == 1:
    return [text]
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  raw = np.frombuffer(text.encode(), np.uint8)
  size = int(np.max(multihost_utils.process_allgather(
      np.asarray([raw.size], np.int32))))
  padded = np.zeros((size + 1,), np.uint8)
  padded[:raw.size] = raw
  rows = multihost_utils.process_allgather(padded[None], tiled=True)
  return [bytes(r).rstrip(b"\0").decode() for r in np.asarray(rows)]


def per_process(state: str) -> Any:
  """A data-iterator state to save: the string itself on one process, the
  list of every process's state on several (only process 0's metadata is
  written by orbax, so each process's position must be in it)."""
  states = gather_strings(state)
  return states[0] if len(states) == 1 else states


def this_process(saved: Any) -> str:
  """Inverse of `per_process` for the calling process."""
  if isinstance(saved, str):
    return saved
  if len(saved) != jax.process_count():
    raise ValueError(
        f"checkpoint holds data-iterator states of {len(saved)} processes, "
        f"this run has {jax.process_count()} (resume on the same topology, "
        "or drop the data position)")
  return saved[jax.process_index()]
