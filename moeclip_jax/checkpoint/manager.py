"""Orbax checkpoints of the trainable state (never the frozen backbone).

Layout: `<workdir>/ckpt/<step>/{state, meta}`; `state` = {step, trainable
params, opt_state}, `meta` = JSON (config, backbone hash, data-iterator
state). Saving is asynchronous with a keep-N policy; `wait()` before exit and
on preemption.
"""

from __future__ import annotations

from typing import Any

import orbax.checkpoint as ocp

from moeclip_jax.checkpoint import params as ckpt_params
from moeclip_jax.checkpoint import paths


def make_manager(workdir, *, save_interval_steps: int = 1000,
                 max_to_keep: int = 3, async_save: bool = True
                 ) -> ocp.CheckpointManager:
  directory = paths.checkpoint_root(workdir) / "ckpt"  # local or gs://
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=save_interval_steps, max_to_keep=max_to_keep,
      create=True, enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(directory, item_names=("state", "meta"),
                               options=options)


def save(manager: ocp.CheckpointManager, step: int, item: Any, meta: dict,
         force: bool = False) -> bool:
  return manager.save(
      step, args=ocp.args.Composite(state=ocp.args.StandardSave(item),
                                    meta=ocp.args.JsonSave(meta)),
      force=force)


def restore(manager: ocp.CheckpointManager, abstract_item: Any,
            step: int | None = None) -> tuple[Any, dict] | None:
  """(state item, meta) of `step` (default latest), or None if none saved."""
  step = manager.latest_step() if step is None else step
  if step is None:
    return None
  ckpt_params.drop_orphaned_read_reports()
  try:
    out = manager.restore(
        step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_item),
            meta=ocp.args.JsonRestore()))
  except (KeyboardInterrupt, SystemExit):
    raise
  except Exception as err:  # pylint: disable=broad-except
    raise ckpt_params.damaged_error(manager.directory / str(step), err
                                    ) from err
  return out.state, out.meta


def restore_meta(workdir, step: int | None = None) -> dict | None:
  manager = make_manager(workdir, async_save=False)
  step = manager.latest_step() if step is None else step
  if step is None:
    return None
  return manager.restore(
      step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
