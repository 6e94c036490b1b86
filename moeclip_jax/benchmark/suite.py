"""Benchmark suites: Python configs (`get_config()` -> ConfigDict) as data.

A suite names the method, where its detector comes from (`detector`: a
folder, `{shots}` filled per shot count, or {target | "*": folder}; or
`train`: train specs run once per source) and the targets. `--suite.FIELD=VALUE` overrides any field
(`--suite.targets.mvtec.root=/data/mvtec`: a list of named dicts is
indexed by name or position). Unknown keys anywhere are a `SuiteError`
naming them.

  name = "my_suite"; method = "moeclip"; detector = "runs/visa/detector"
  targets = [dict(name="parts", reader="folder", root="/data/parts",
                  domain="industrial")]
"""

from __future__ import annotations

import ast
import pathlib
import runpy
from typing import Any, Mapping, Sequence

import ml_collections

from moeclip_jax.methods import registry

PRESET_DIR = pathlib.Path(__file__).resolve().parents[2] / "configs" / \
    "benchmarks"
PRESETS = ("moeclip_zsad13", "inctrl_fewshot", "anomalymoe_unified")
# suite / target key -> the detector option (`Option.dest`) it sets.
OPTION_KEYS = {"shots": "shots", "prompt_draws": "prompt_draws",
               "prompt_seed": "prompt_seed", "prompts": "prompts"}

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
    "options": "other method options {dest: value} (the detector's "
               "cli_options, e.g. minmax)",
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
    "options": "method options of this target (over the suite's)",
}
TRAIN_KEYS = {
    "name": "source name (train/<name>/ under --out)",
    "config": "train config file (configs/*.py)",
    "overrides": "nested {section: {field: value}} applied to the train "
                 "config like --config.section.field=value",
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
  try:
    config = runpy.run_path(str(path), run_name=f"suite_{path.stem}")[
        "get_config"]()
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
  return parents[-1] in ("overrides", "reader_options", "detector",
                         "options")


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
  if config.method not in registry.DETECTORS:
    raise SuiteError(f"{where}: method {config.method!r} is not one of "
                     f"{sorted(registry.DETECTORS)}")
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
  for name in names:
    if config.get("detector") is not None:
      if detector_folder(config, name, None) is None:
        raise SuiteError(f"{where}: no detector for target {name!r} (give "
                         "it, or '*', in the detector dict)")
    elif serving_spec(config, name) is None:
      raise SuiteError(f"{where}: no train spec serves target {name!r}")
  for spec in train_specs(config):
    _unknown(spec.keys(), TRAIN_KEYS, "train", where)
    if not spec.get("config"):
      raise SuiteError(f"{where}: a train spec needs 'config'")
    for name in spec.get("targets") or ():
      if name not in names:
        raise SuiteError(f"{where}: train spec {spec.get('name')!r} serves "
                         f"unknown target {name!r}")


def detector_class(config) -> type:
  """The detector class of the suite's method (registry.DETECTORS)."""
  return registry.DETECTORS[config.method]


def _check_method_keys(config, targets, where: str) -> None:
  """Every method option the suite sets is one its detector takes."""
  accepted = detector_class(config).accepted_options
  scopes = [("suite", config)] + [(f"target {t['name']}", t)
                                  for t in targets]
  for scope, node in scopes:
    given = [k for k in OPTION_KEYS if node.get(k) is not None]
    given += [f"options.{k}" for k in (node.get("options") or {})]
    bad = [k for k in given
           if OPTION_KEYS.get(k, k.partition(".")[2]) not in accepted]
    if bad:
      raise SuiteError(f"{where}: {scope}: {bad} not options of "
                       f"{config.method} detectors (they take "
                       f"{sorted(accepted)})")


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


def _get(config, target: Mapping[str, Any], key: str):
  """A target's value of `key`, else the suite's."""
  value = target.get(key)
  return config.get(key) if value is None else value


def target_shots(config, target: Mapping[str, Any]) -> list[int | None]:
  """[K, ...] (None: the detector's default / a method without shots)."""
  shots = as_list(_get(config, target, "shots"))
  return [int(k) for k in shots] or [None]


def target_draws(config, target: Mapping[str, Any]) -> int:
  return int(_get(config, target, "prompt_draws") or 1)


def target_domain(config, target: Mapping[str, Any]) -> str:
  return _get(config, target, "domain") or "industrial"


def target_protocol(config, target: Mapping[str, Any]) -> str | None:
  return _get(config, target, "protocol")


def method_options(config, target: Mapping[str, Any],
                   shots: int | None) -> dict[str, Any]:
  """The detector options of a (target, K): the suite's OPTION_KEYS and
  `options`, the target's over them; `domain` when the detector takes it.
  """
  accepted = detector_class(config).accepted_options
  options = {**dict(config.get("options") or {}),
             **dict(target.get("options") or {})}
  for key, dest in OPTION_KEYS.items():
    value = _get(config, target, key)
    if value is not None and key != "shots":
      options[dest] = list(value) if isinstance(value, tuple) else value
  if shots is not None:
    options["shots"] = shots
  if "domain" in accepted:
    options["domain"] = target_domain(config, target)
  return options


def detector_folder(config, target_name: str, shots: int | None,
                    train_dirs: Mapping[str, str] | None = None
                    ) -> str | None:
  """The detector folder serving a target: `detector` ('{shots}' filled,
  or {target | '*': folder}), else the train spec serving it."""
  detector = config.get("detector")
  if detector is not None:
    if isinstance(detector, (str, pathlib.Path)):
      folder = str(detector)
    else:
      detector = dict(detector)
      folder = detector.get(target_name, detector.get("*"))
      if folder is None:
        return None
    return folder.replace("{shots}", "" if shots is None else str(shots))
  spec = serving_spec(config, target_name)
  if spec is None or train_dirs is None:
    return None
  return str(pathlib.Path(train_dirs[spec["name"]]) / "detector")


def serving_spec(config, target_name: str) -> dict | None:
  """The train spec whose `targets` list the target, else the first
  spec without `targets`."""
  specs = train_specs(config)
  for spec in specs:
    if target_name in (spec.get("targets") or ()):
      return spec
  for spec in specs:
    if not spec.get("targets"):
      return spec
  return None


def to_json(config) -> dict:
  """The suite as plain JSON-able data (recorded with every unit)."""
  return _plain(config)
