"""Benchmark suites: Python configs (`get_config()` -> ConfigDict) as data.

A suite names the method, where its detector comes from (`detector`: a
folder, `{shots}` filled per shot count; or `train`: train specs run once
per source) and the targets. `--suite.FIELD=VALUE` overrides any field
(`--suite.targets.mvtec.root=/data/mvtec`: a list of named dicts is
indexed by name or position). Unknown keys anywhere are a `SuiteError`
naming them.

  name = "my_suite"; method = "moeclip"; detector = "runs/visa/detector"
  targets = [dict(name="parts", reader="folder", root="/data/parts",
                  domain="industrial")]
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib
from typing import Any, Mapping, Sequence

import ml_collections

PRESET_DIR = pathlib.Path(__file__).resolve().parents[2] / "configs" / \
    "benchmarks"
PRESETS = ("moeclip_zsad13", "inctrl_fewshot", "anomalymoe_unified")
METHODS = ("moeclip", "inctrl", "anomalymoe")

# key -> one-line meaning (the docs list these).
SUITE_KEYS = {
    "name": "suite name (recorded with every unit)",
    "description": "free text",
    "method": "moeclip | inctrl | anomalymoe",
    "detector": "detector folder ('{shots}' -> K), or {target|'*': folder}",
    "train": "train spec(s) {name, config, overrides, targets, workdir}",
    "targets": "list of target dicts (TARGET_KEYS)",
    "protocol": "metrics protocol for every target (default: the method's)",
    "domain": "default domain of targets (industrial | medical)",
    "shots": "InCTRL K (int or list) for every target",
    "prompt_draws": "InCTRL prompt draws per (class, K)",
    "prompt_seed": "seed of draw 0 (draw d uses seed + d)",
    "batch_size": "images per batch (static shape, last batch padded)",
    "map_size": "evaluate maps at this size (divides the model size)",
    "references": "reference tables compared in the report (first: delta)",
}
TARGET_KEYS = {
    "name": "target name (table row; reference lookup key)",
    "reader": "data reader (moeclip_jax.data.readers.READERS)",
    "root": "dataset root folder",
    "classes": "classes to evaluate (default: every test class)",
    "domain": "industrial | medical (averages; MoECLIP's fusion and blur)",
    "protocol": "metrics protocol of this target",
    "shots": "InCTRL K (int or list)",
    "prompt_draws": "InCTRL prompt draws",
    "prompts": "InCTRL prompt images / folders / saved sets (.npz)",
    "reader_options": "keyword options of the reader",
    "reference": "key of this target in the reference tables",
}
TRAIN_KEYS = {
    "name": "source name (train/<name>/ under --out)",
    "config": "train config file (configs/*.py)",
    "overrides": "{field: value} passed as --config.field=value",
    "targets": "targets this detector serves (default: every other)",
    "workdir": "train folder (default OUT/train/<name>; share it across "
               "shards to train once)",
}
DOMAINS = ("industrial", "medical")


class SuiteError(ValueError):
  """A bad suite file or override (exit code 2)."""


def resolve_path(suite: str) -> pathlib.Path:
  """A suite file path, or the file of a preset name."""
  path = pathlib.Path(suite)
  if path.suffix == ".py" or path.exists():
    if not path.is_file():
      raise SuiteError(f"{path}: no such suite file")
    return path
  if suite in PRESETS or (PRESET_DIR / f"{suite}.py").is_file():
    return PRESET_DIR / f"{suite}.py"
  raise SuiteError(f"{suite!r}: neither a suite file nor a preset "
                   f"({', '.join(PRESETS)})")


def load(suite: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Reads, overrides and validates a suite (path or preset name)."""
  path = resolve_path(suite)
  spec = importlib.util.spec_from_file_location(f"suite_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    config = module.get_config()
  except Exception as err:  # pylint: disable=broad-except
    raise SuiteError(f"{path}: cannot load the suite ({type(err).__name__}: "
                     f"{err})") from err
  if not isinstance(config, (ml_collections.ConfigDict, dict)):
    raise SuiteError(f"{path}: get_config() must return a ConfigDict")
  config = ml_collections.ConfigDict(_plain(config))
  for item in overrides:
    apply_override(config, item, str(path))
  validate(config, str(path))
  return config


def _plain(config) -> dict:
  if isinstance(config, ml_collections.ConfigDict):
    return config.to_dict()
  return dict(config)


# ---- overrides ---------------------------------------------------------------
def parse_value(text: str) -> Any:
  """Python literal when it parses (1, 0.5, [2, 4], None, True), else str."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_override(config: ml_collections.ConfigDict, item: str,
                   where: str) -> None:
  """`FIELD=VALUE` (FIELD dotted; list items by index or target name)."""
  if "=" not in item:
    raise SuiteError(f"--suite.{item}: expected --suite.FIELD=VALUE")
  field, text = item.split("=", 1)
  parts = [p for p in field.split(".") if p]
  if not parts:
    raise SuiteError(f"--suite.{item}: empty field name")
  node: Any = config
  for i, part in enumerate(parts[:-1]):
    node = _child(node, part, ".".join(parts[:i + 1]), where)
  last = parts[-1]
  value = parse_value(text)
  if isinstance(node, list):
    node[_index(node, last, field, where)] = value
  elif isinstance(node, (dict, ml_collections.ConfigDict)):
    if last not in node and not _allows(parts[:-1], last):
      raise SuiteError(f"{where}: --suite.{field}: unknown key {last!r}")
    node[last] = value
  else:
    raise SuiteError(f"{where}: --suite.{field}: {'.'.join(parts[:-1])} is "
                     "not a dict or list")


def _allows(parents: Sequence[str], key: str) -> bool:
  """Optional keys may be added by an override."""
  if not parents:
    return key in SUITE_KEYS
  if parents[0] == "targets" and len(parents) == 2:
    return key in TARGET_KEYS
  if parents[0] == "train":
    return key in TRAIN_KEYS or len(parents) > 1 and parents[-1] == \
        "overrides"
  return parents[-1] in ("overrides", "reader_options", "detector")


def _index(node: list, part: str, field: str, where: str) -> int:
  if part.lstrip("-").isdigit():
    i = int(part)
    if -len(node) <= i < len(node):
      return i
  names = [x.get("name") if isinstance(x, Mapping) else None for x in node]
  if part in names:
    return names.index(part)
  raise SuiteError(f"{where}: --suite.{field}: no item {part!r} (names: "
                   f"{[n for n in names if n]})")


def _child(node, part: str, field: str, where: str):
  if isinstance(node, list):
    return node[_index(node, part, field, where)]
  if isinstance(node, (dict, ml_collections.ConfigDict)) and part in node:
    return node[part]
  raise SuiteError(f"{where}: --suite.{field}: unknown key {part!r}")


# ---- validation --------------------------------------------------------------
def _unknown(keys, known, what: str, where: str) -> None:
  bad = sorted(set(keys) - set(known))
  if bad:
    raise SuiteError(f"{where}: unknown {what} key(s) {bad} (known: "
                     f"{sorted(known)})")


def validate(config: ml_collections.ConfigDict, where: str) -> None:
  """Raises SuiteError for unknown keys, missing or ill-typed fields."""
  _unknown(config.keys(), SUITE_KEYS, "suite", where)
  for key in ("name", "method", "targets"):
    if not config.get(key):
      raise SuiteError(f"{where}: suite needs {key!r}")
  if config.method not in METHODS:
    raise SuiteError(f"{where}: method {config.method!r} is not one of "
                     f"{METHODS}")
  if (config.get("detector") is None) == (config.get("train") is None):
    raise SuiteError(f"{where}: give exactly one of 'detector' and 'train'")
  targets = list(config.targets)
  names = []
  for i, target in enumerate(targets):
    if not isinstance(target, Mapping):
      raise SuiteError(f"{where}: targets[{i}] must be a dict")
    _unknown(target.keys(), TARGET_KEYS, f"targets[{i}]", where)
    for key in ("name", "reader"):
      if not target.get(key):
        raise SuiteError(f"{where}: targets[{i}] needs {key!r}")
    if "root" not in target:
      raise SuiteError(f"{where}: targets[{i}] ({target['name']}) needs "
                       "'root' (None only for readers with a default)")
    domain = target.get("domain") or config.get("domain")
    if domain is not None and domain not in DOMAINS:
      raise SuiteError(f"{where}: target {target['name']}: domain "
                       f"{domain!r} is not one of {DOMAINS}")
    names.append(target["name"])
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise SuiteError(f"{where}: duplicate target names {dup}")
  _check_method_keys(config, targets, where)
  for spec in train_specs(config):
    _unknown(spec.keys(), TRAIN_KEYS, "train", where)
    if not spec.get("config"):
      raise SuiteError(f"{where}: a train spec needs 'config'")
    for name in spec.get("targets") or ():
      if name not in names:
        raise SuiteError(f"{where}: train spec {spec.get('name')!r} serves "
                         f"unknown target {name!r}")


def _check_method_keys(config, targets, where: str) -> None:
  if config.method == "inctrl":
    return
  for key in ("shots", "prompt_draws", "prompt_seed"):
    if config.get(key) is not None:
      raise SuiteError(f"{where}: {key!r} is an InCTRL option; method is "
                       f"{config.method}")
  for target in targets:
    for key in ("shots", "prompt_draws", "prompts"):
      if target.get(key) is not None:
        raise SuiteError(f"{where}: target {target['name']}: {key!r} is an "
                         f"InCTRL option; method is {config.method}")


def train_specs(config) -> list[dict]:
  """The suite's train specs as dicts, each with a `name`."""
  train = config.get("train")
  if train is None:
    return []
  specs = train if isinstance(train, (list, tuple)) else [train]
  out = []
  for i, spec in enumerate(specs):
    spec = _plain(spec) if not isinstance(spec, dict) else dict(spec)
    spec.setdefault("name", f"source{i}" if len(specs) > 1 else "source")
    out.append(spec)
  return out


def as_list(value) -> list:
  if value is None:
    return []
  if isinstance(value, (list, tuple)):
    return list(value)
  return [value]


def target_shots(config, target: Mapping[str, Any]) -> list[int | None]:
  """[K, ...] for InCTRL (None: the checkpoint's default), [None] else."""
  if config.method != "inctrl":
    return [None]
  shots = as_list(target.get("shots") or config.get("shots"))
  return [int(k) for k in shots] or [None]


def target_draws(config, target: Mapping[str, Any]) -> int:
  if config.method != "inctrl":
    return 1
  return int(target.get("prompt_draws") or config.get("prompt_draws") or 1)


def target_domain(config, target: Mapping[str, Any]) -> str:
  return target.get("domain") or config.get("domain") or "industrial"
