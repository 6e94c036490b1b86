"""Parameter checkpoint folders: the one place that reads and writes them.

A checkpoint folder (converted backbone, converted official weights or a
trained detector) holds

  params/        orbax StandardCheckpointer tree
  config.json    what the folder is ({"method": ...} or a backbone config)
  meta.json      provenance (sources, sha256, options) and "params_files":
                 {path under params/: size in bytes} as written
  tokenizer/     CLIP BPE files (optional)

Writes go to a temporary sibling folder renamed into place, so an
interrupted write never leaves a half-written checkpoint. Reads turn every
failure into one `CheckpointError` line that names the folder (a damaged
blob, a missing file, a tree that does not fit the model, a config.json
that is not valid JSON).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import shutil
import sys
import tempfile
from typing import Any, Mapping

from moeclip_jax.models import tokenize
from moeclip_jax.utils import console

CONFIG_FILE = "config.json"
META_FILE = "meta.json"
PARAMS_DIR = "params"
FILES_KEY = "params_files"  # meta.json: {path under params/: bytes}


class CheckpointError(ValueError):
  """A checkpoint folder cannot be used; the message says why in one line."""


def sha256_file(path, chunk: int = 1 << 22) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(chunk):
      h.update(block)
  return h.hexdigest()


# ---- config files -------------------------------------------------------------
def write_json(path: pathlib.Path, obj) -> None:
  path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path) -> dict:
  """A JSON file; errors name the file and say 'not valid JSON'."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: missing (not a checkpoint folder?)")
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as err:
    raise CheckpointError(f"{path}: not valid JSON ({err})") from None
  except UnicodeDecodeError as err:
    raise CheckpointError(f"{path}: not valid JSON (not UTF-8 text: "
                          f"{err.reason})") from None


def read_config(checkpoint_dir) -> dict:
  """`checkpoint_dir/config.json` as a dict."""
  return read_json(pathlib.Path(checkpoint_dir) / CONFIG_FILE)


def checkpoint_method(checkpoint_dir) -> str | None:
  """config.json's "method" (None for a backbone-only folder)."""
  return read_config(checkpoint_dir).get("method")


# ---- params -------------------------------------------------------------------
def _single_writer_checkpointer():
  """A StandardCheckpointer; with several processes, process 0 writes alone
  (the caller already runs only there), so orbax must not wait on the
  others at its barriers."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  if jax.process_count() == 1:
    return ocp.StandardCheckpointer()
  options = ocp.options.MultiprocessingOptions(primary_host=0,
                                               active_processes={0})
  return ocp.StandardCheckpointer(multiprocessing_options=options)


def write_params_checkpoint(
    dst, params, config: Mapping[str, Any], meta: Mapping[str, Any],
    tokenizer_dir=None, overwrite: bool = False,
) -> pathlib.Path:
  """Writes `dst/{params/, config.json, meta.json, tokenizer/}` atomically."""
  dst = pathlib.Path(dst).absolute()
  if dst.exists() and any(dst.iterdir()) and not overwrite:
    raise FileExistsError(f"{dst}: exists and is not empty (use --overwrite)")
  dst.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
  try:
    ckptr = _single_writer_checkpointer()
    ckptr.save(tmp / PARAMS_DIR, params)
    ckptr.wait_until_finished()
    write_json(tmp / CONFIG_FILE, dict(config))
    write_json(tmp / META_FILE,
               {**meta, FILES_KEY: params_files(tmp / PARAMS_DIR)})
    if tokenizer_dir is not None:
      shutil.copytree(tokenizer_dir, tmp / "tokenizer")
    if dst.exists():
      shutil.rmtree(dst)
    os.replace(tmp, dst)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return dst


def write_checkpoint_with_tokenizer(dst, params, config, meta, tokenizer=None,
                                   overwrite: bool = False) -> pathlib.Path:
  """`write_params_checkpoint` plus only the BPE files of `tokenizer`.

  `tokenizer`: a folder with vocab.json + merges.txt (a HF folder's other
  files, weights included, are not copied); default: the packaged BPE.
  """

  src = pathlib.Path(tokenizer or tokenize.packaged_tokenizer_dir())
  with tempfile.TemporaryDirectory() as tmp:
    tok = pathlib.Path(tmp) / "tokenizer"
    tok.mkdir()
    for name in tokenize.TOKENIZER_FILES:
      if not (src / name).is_file():
        raise FileNotFoundError(f"{src / name}: tokenizer file missing")
      shutil.copy2(src / name, tok / name)
    return write_params_checkpoint(dst, params, config, meta,
                                   tokenizer_dir=tok, overwrite=overwrite)


def params_files(params_dir) -> dict[str, int]:
  """{path under params_dir: size in bytes} of every file in it."""
  root = pathlib.Path(params_dir)
  return {p.relative_to(root).as_posix(): p.stat().st_size
          for p in sorted(root.rglob("*")) if p.is_file()}


def _listed_files(folder: pathlib.Path) -> dict[str, int]:
  try:
    meta = json.loads((folder / META_FILE).read_text())
  except (OSError, ValueError):
    return {}
  files = meta.get(FILES_KEY) if isinstance(meta, dict) else None
  return files if isinstance(files, dict) else {}


def _file_problem(folder: pathlib.Path, err: BaseException) -> str | None:
  """A missing or shortened file of `folder/params`: against meta.json's
  list (tensorstore reads a missing OCDBT data file as an empty, "truncated"
  stream), else a local file the error names that does not exist."""
  for rel, size in _listed_files(folder).items():
    path = folder / PARAMS_DIR / rel
    if not path.is_file():
      return f"missing file {PARAMS_DIR}/{rel}"
    if path.stat().st_size != size:
      return (f"file {PARAMS_DIR}/{rel} has {path.stat().st_size} of "
              f"{size} bytes")
  for err_i in _chain(err):
    for found in re.finditer(r'local file "([^"]+)"', str(err_i)):
      path = pathlib.Path(found.group(1))
      if not path.exists():
        return f"missing file {os.path.relpath(path, folder)}"
  return None


def _with_device_sharding(abstract):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  abstract = nn.unbox(abstract)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(
      lambda x: x if getattr(x, "sharding", None) is not None
      else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
      abstract)


def _first_line(err: BaseException) -> str:
  text = str(err).strip() or type(err).__name__
  return text.splitlines()[0][:300]


def _chain(err: BaseException) -> list[BaseException]:
  """`err` and its causes / contexts, outermost first."""
  seen = []
  while err is not None and err not in seen:
    seen.append(err)
    err = err.__cause__ or err.__context__
  return seen


# Where orbax / tensorstore messages name the parameter: the OCDBT key
# ("params.txt.token_embedding.embedding/0.0"), the kvstore path, or a
# params/<name> file.
_PARAM_PATTERNS = (
    r"reading \"(?:params\.)?([\w.\-]+?)/[\w.]*\"",
    r"'path': '(?:params\.)?([\w.\-]+?)/?'",
    r"params/(?!d/|ocdbt\.process_)([\w.\-]+?)(?:/|\"|'|\s|$)",
    r"'([\w]+(?:\.[\w]+)+)'",
)


def _is_orphaned_read(unraisable) -> bool:
  return (isinstance(unraisable.exc_value, RuntimeError)
          and str(unraisable.exc_value) == "Event loop is closed")


def drop_orphaned_read_reports() -> None:
  """Installed before every restore: when one read fails, orbax's other
  reads finish on tensorstore threads whose callbacks find orbax's event
  loop closed, and Python reports each as an unraisable `RuntimeError:
  Event loop is closed` traceback around the one-line error. Those reports
  (only those) are dropped, unless --debug / MOECLIP_JAX_DEBUG=1 asks for
  everything."""
  if console.debug() or getattr(sys.unraisablehook, "drops_orphaned_reads",
                                False):
    return
  previous = sys.unraisablehook

  def hook(unraisable):
    if not _is_orphaned_read(unraisable):
      previous(unraisable)

  hook.drops_orphaned_reads = True
  sys.unraisablehook = hook


def _param_name(err: BaseException) -> str | None:
  """The parameter an orbax/tensorstore error (or its causes) is about."""
  texts = [str(e) for e in _chain(err)]
  for pattern in _PARAM_PATTERNS:
    for text in texts:
      found = re.search(pattern, text)
      if found:
        return found.group(1)
  return None


def _cause(err: BaseException) -> str:
  """The innermost error's first line, without tensorstore's boilerplate
  (`Error reading "<key>" in OCDBT database at local file "...": `)."""
  text = _first_line(_chain(err)[-1])
  return re.sub(r'Error reading "[^"]*" in OCDBT database at [^:]*: ', "",
                text)


def read_params_checkpoint(path, abstract=None):
  """Restores `path/params`; `abstract` (shape tree, may carry shardings).

  Raises:
    FileNotFoundError: no params/ folder.
    CheckpointError: the tree does not fit `abstract`, or a file of it is
      damaged or missing (one line: `<dir>: checkpoint is damaged or
      incomplete (<param>: <cause>)`).
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  folder = pathlib.Path(path).absolute()
  params_dir = folder / PARAMS_DIR
  if not params_dir.is_dir():
    raise FileNotFoundError(f"{params_dir}: no params checkpoint")
  ckptr = ocp.StandardCheckpointer()
  drop_orphaned_read_reports()
  try:
    if abstract is None:
      return ckptr.restore(params_dir)
    return ckptr.restore(params_dir, _with_device_sharding(abstract))
  except (ValueError, KeyError, TypeError) as err:
    if "shape" in str(err).lower() or "structure" in str(err).lower() or (
        isinstance(err, KeyError)):
      raise CheckpointError(
          f"{folder}: checkpoint does not match the model config: "
          f"{_first_line(err)}") from err
    raise damaged_error(folder, err) from err
  except Exception as err:  # pylint: disable=broad-except
    raise damaged_error(folder, err) from err


def damaged_error(folder, err: BaseException) -> CheckpointError:
  """`<folder>: checkpoint is damaged or incomplete (<param>: <cause>)`."""
  folder = pathlib.Path(folder)
  name = _param_name(err)
  cause = _file_problem(folder, err) or _cause(err)
  where = f"{name}: {cause}" if name else cause
  return CheckpointError(
      f"{folder}: checkpoint is damaged or incomplete ({where})")
