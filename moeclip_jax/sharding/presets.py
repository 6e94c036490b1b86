"""Mesh presets: named (mesh sizes, rule overrides) overlays, and the one
place the trainer turns a config into a mesh plus active logical rules.

Presets (each sized for 8 devices; -1 takes the rest, so they scale):

  pure_dp          data 8                  parameters replicated
  fsdp             fsdp 8                  `embed` split over fsdp
  tensor_parallel  data 2 x tensor 4       `mlp`, `heads` over tensor
  expert_parallel  data 2 x expert 4       `exp` (MoE experts) over expert
                                          (AnomalyMoE's expert_loop="auto"
                                          becomes "vmap" on such a mesh)

Config keys read (all optional, so older configs keep working):
  mesh_preset      one of the names above ("" = keep `config.mesh`)
  mesh             {data, fsdp, tensor, expert} sizes (-1 = the rest)
  sharding_rules   {logical name: mesh axis | [axes] | None} overrides
  compile_cache    folder for jax's persistent compilation cache ("" = off;
                   env MOECLIP_JAX_COMPILE_CACHE is the fallback)

From the command line either `--config.mesh_preset=fsdp` (when the config
defines the field) or the overlay files `--config configs/mesh/fsdp.py:
moeclip_vitl14_336` (any config under configs/, no field needed).
"""

from __future__ import annotations

import logging
import os
import pathlib
import runpy
from typing import Any, Mapping

import jax

from moeclip_jax.sharding import mesh as mesh_lib
from moeclip_jax.sharding import partition
from moeclip_jax.sharding import rules as rules_lib

log = logging.getLogger("moeclip_jax.sharding")

Rules = tuple[tuple[str, Any], ...]

PRESETS: dict[str, dict[str, Any]] = {
    "pure_dp": {
        "mesh": {"data": -1, "fsdp": 1, "tensor": 1, "expert": 1},
        "rules": {"embed": None, "mlp": None, "heads": None, "exp": None,
                  "act_heads": None, "act_mlp": None, "act_exp": None},
    },
    "fsdp": {
        "mesh": {"data": 1, "fsdp": -1, "tensor": 1, "expert": 1},
        "rules": {},
    },
    "tensor_parallel": {
        "mesh": {"data": -1, "fsdp": 1, "tensor": 4, "expert": 1},
        "rules": {},
    },
    "expert_parallel": {
        "mesh": {"data": -1, "fsdp": 1, "tensor": 1, "expert": 4},
        "rules": {},
    },
}
COMPILE_CACHE_ENV = "MOECLIP_JAX_COMPILE_CACHE"


def _set(config, key: str, value) -> None:
  """Sets `config[key]` even on a locked ConfigDict (new keys too)."""
  try:
    config[key] = value
  except (AttributeError, KeyError):
    with config.unlocked():
      config[key] = value


def apply(config, name: str):
  """Selects preset `name` in `config` (in place): `mesh_preset` and `mesh`.

  Returns:
    the same config.
  """
  if name not in PRESETS:
    raise ValueError(f"unknown mesh preset {name!r}; known: {sorted(PRESETS)}")
  preset = PRESETS[name]
  import ml_collections  # pylint: disable=g-import-not-at-top
  _set(config, "mesh", ml_collections.ConfigDict(dict(preset["mesh"])))
  _set(config, "mesh_preset", name)  # implies the preset's rules
  if "sharding_rules" not in config:  # user overrides on top of the preset
    _set(config, "sharding_rules", ml_collections.ConfigDict())
  return config


def _axes(value):
  if value is None or isinstance(value, str):
    return value
  return tuple(value)


def rules_from_config(config) -> Rules:
  """DEFAULT_RULES with `config.sharding_rules` (and the preset's) applied."""
  overrides: dict[str, Any] = {}
  preset = config.get("mesh_preset", "") or ""
  if preset:
    if preset not in PRESETS:
      raise ValueError(
          f"config.mesh_preset={preset!r}; known: {sorted(PRESETS)}")
    overrides.update(PRESETS[preset]["rules"])
  overrides.update(dict(config.get("sharding_rules", None) or {}))
  return merge_rules(overrides)


def merge_rules(overrides: Mapping[str, Any]) -> Rules:
  """DEFAULT_RULES with `overrides` (logical name -> axes) applied."""
  unknown = set(overrides) - set(rules_lib.LOGICAL_AXES)
  if unknown:
    raise ValueError(f"sharding_rules: unknown logical names {sorted(unknown)}"
                     f"; known: {list(rules_lib.LOGICAL_AXES)}")
  out = []
  for name, axes in rules_lib.DEFAULT_RULES:
    axes = _axes(overrides.get(name, axes))
    for axis in (axes,) if isinstance(axes, str) else (axes or ()):
      if axis not in rules_lib.MESH_AXES:
        raise ValueError(f"sharding rule {name!r} -> unknown mesh axis "
                         f"{axis!r}; mesh axes: {rules_lib.MESH_AXES}")
    out.append((name, axes))
  return tuple(out)


def mesh_sizes_from_config(config) -> dict[str, int]:
  preset = config.get("mesh_preset", "") or ""
  if preset:
    if preset not in PRESETS:
      raise ValueError(
          f"config.mesh_preset={preset!r}; known: {sorted(PRESETS)}")
    return dict(PRESETS[preset]["mesh"])
  return dict(config.get("mesh", None) or {"data": -1})


def enable_compilation_cache(path: str | None) -> bool:
  """Turns on jax's persistent compilation cache in `path` (local or gs://)."""
  path = path or os.environ.get(COMPILE_CACHE_ENV, "")
  if not path:
    return False
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  log.info("persistent compilation cache: %s", path)
  return True


def configure(config, devices=None) -> jax.sharding.Mesh:
  """Mesh + active logical rules (+ compile cache) for a training config.

  Sets the process-wide rules table (`partition.set_rules`), so sharded
  init, batch shardings and block-boundary constraints use the same table.

  Returns:
    the mesh (AxisType.Auto axes).
  """
  enable_compilation_cache(config.get("compile_cache", "") or "")
  rules = rules_from_config(config)
  partition.set_rules(rules)
  mesh = mesh_lib.make_mesh(mesh_sizes_from_config(config), devices=devices)
  log.info("mesh %s, rules %s", dict(mesh.shape),
           {k: v for k, v in rules if v is not None})
  return mesh


def load_config_file(path, arg=None):
  """`get_config(arg)` of a config file given by path (configs/*.py)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such config file")
  get_config = runpy.run_path(str(path), run_name=path.stem)["get_config"]
  return get_config(arg) if arg is not None else get_config()


def overlay_config(preset: str, overlay_file: str, arg: str | None):
  """What configs/mesh/<preset>.py's `get_config(arg)` returns.

  `arg` = "BASE" or "BASE:BASE_ARG": configs/BASE.py (default
  moeclip_vitl14_336) with the preset applied.
  """
  import pathlib  # pylint: disable=g-import-not-at-top
  base, _, base_arg = (arg or "moeclip_vitl14_336").partition(":")
  configs_dir = pathlib.Path(overlay_file).resolve().parent.parent
  base_path = pathlib.Path(base)
  if not base_path.suffix:
    base_path = configs_dir / f"{base}.py"
  config = load_config_file(base_path, base_arg or None)
  return apply(config, preset)
