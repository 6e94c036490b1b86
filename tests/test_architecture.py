"""The package's dependency rules (setup.cfg [importlinter], docs/architecture.md).

import-linter sees function-level imports too, so a lazy import cannot hide
a forbidden arrow. The other checks are the rules import-linter cannot state:
verbs/ names no method, importlib only in the CLI registry.
"""

import ast
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "moeclip_jax"
METHOD_NAMES = ("moeclip", "inctrl", "anomalymoe")


def _modules(folder: pathlib.Path):
  return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path: pathlib.Path) -> list[str]:
  """Every imported module name of a file (top-level and function-level)."""
  names = []
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names += [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.append(node.module)
      names += [f"{node.module}.{a.name}" for a in node.names]
  return names


def test_import_contracts_hold():
  exe = shutil.which("lint-imports", path=str(pathlib.Path(sys.executable).parent))
  if exe is None:
    pytest.fail("lint-imports not installed: pip install -e '.[test]'")
  run = subprocess.run([exe, "--config", str(ROOT / "setup.cfg")], cwd=ROOT,
                       capture_output=True, text=True, check=False)
  assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
  assert "BROKEN" not in run.stdout
  assert re.search(r"Contracts: \d+ kept, 0 broken", run.stdout), run.stdout


def test_verbs_name_no_method():
  """A verb is generic: it reaches a method only through the registry."""
  offenders = []
  for path in _modules(PACKAGE / "verbs"):
    for name in _imports(path):
      if name.startswith("moeclip_jax.methods.") and \
          name.split(".")[2] in METHOD_NAMES:
        offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    for method in METHOD_NAMES:
      if (PACKAGE / "verbs" / f"{method}.py").exists() or \
          path.stem.endswith(f"_{method}"):
        offenders.append(f"{path.relative_to(ROOT)} is a per-method module")
  assert not offenders, "\n".join(offenders)


# The ways to import a module by name (importlib.metadata / find_spec, which
# only read package facts, are fine).
DYNAMIC_IMPORTS = {"import_module", "spec_from_file_location",
                   "module_from_spec", "exec_module", "__import__"}


def test_dynamic_imports_only_in_the_cli_registry():
  offenders = []
  for path in _modules(PACKAGE):
    if path == PACKAGE / "cli.py":
      continue
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      name = (node.attr if isinstance(node, ast.Attribute) else
              node.id if isinstance(node, ast.Name) else None)
      if name in DYNAMIC_IMPORTS:
        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
  assert not offenders, "\n".join(offenders)


def test_every_verb_has_one_body_module():
  """cli.VERBS is the single registry; each entry is a module of verbs/
  (or the trainer's design-card entry) that defines main(argv)."""
  from moeclip_jax import cli  # pylint: disable=g-import-not-at-top
  for verb, entry in cli.VERBS.items():
    module = entry[0]
    assert module.startswith("moeclip_jax.verbs.") or \
        module == "moeclip_jax.train.__main__", (verb, module)
    if module.startswith("moeclip_jax.verbs."):
      path = PACKAGE / "verbs" / (module.rsplit(".", 1)[1] + ".py")
      assert path.exists(), (verb, path)
      tree = ast.parse(path.read_text())
      assert any(isinstance(n, ast.FunctionDef) and n.name == "main"
                 for n in tree.body), f"{path} has no main(argv)"
