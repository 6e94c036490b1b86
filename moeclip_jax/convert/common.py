"""Shared conversion machinery: mapping tables, coverage checks, checkpoints.

A mapping table is data: `{target_path: (source_key, hook)}` where
`target_path` is a '/'-joined Flax params path and `hook` a small transform
from the source array (torch layout) to the Flax layout. `apply_mapping`
uses every source key exactly once and produces every target exactly once,
or fails with one sorted report of what is missing, unused or mis-shaped.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any, Callable, Mapping

import numpy as np

Hook = Callable[[np.ndarray], np.ndarray]
Table = Mapping[str, tuple[str, Hook]]


class ConversionError(ValueError):
  """A checkpoint does not fit the target model; the message lists why."""


# ---- hooks: torch layout -> Flax layout -------------------------------------
def identity(x: np.ndarray) -> np.ndarray:
  return x


def scalar(x: np.ndarray) -> np.ndarray:
  """A 1-element tensor of any rank (some writers store scalars as [1])."""
  return x.reshape(()) if x.size == 1 else x


def linear(x: np.ndarray) -> np.ndarray:
  """torch Linear weight (out, in) -> Flax kernel (in, out)."""
  return x.T


def conv2d(x: np.ndarray) -> np.ndarray:
  """torch Conv2d weight (O, I, H, W) -> Flax kernel (H, W, I, O)."""
  return x.transpose(2, 3, 1, 0)


def heads_in(heads: int) -> Hook:
  """torch (H*Dh, W) projection -> Flax DenseGeneral kernel (W, H, Dh)."""
  return lambda x: x.T.reshape(x.shape[1], heads, -1)


def heads_bias(heads: int) -> Hook:
  return lambda x: x.reshape(heads, -1)


def heads_out(heads: int) -> Hook:
  """torch out-proj (W, H*Dh) -> Flax kernel (H, Dh, W)."""
  return lambda x: x.T.reshape(heads, -1, x.shape[0])


def packed_slice(index: int, hook: Hook) -> Hook:
  """Takes q (0), k (1) or v (2) from a packed in_proj tensor, then `hook`."""
  def fn(x):
    n = x.shape[0] // 3
    return hook(x[index * n:(index + 1) * n])
  return fn


# ---- trees -----------------------------------------------------------------
def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(flatten(value, path + "/"))
    else:
      out[path] = value
  return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def apply_mapping(
    table: Table,
    source: Mapping[str, np.ndarray],
    target_shapes: Mapping[str, tuple[int, ...]],
    *,
    ignore: Callable[[str], bool] = lambda k: False,
    source_name: str = "checkpoint",
    dtype=np.float32,
) -> dict[str, Any]:
  """Builds a nested params dict, checking coverage both ways.

  Raises:
    ConversionError: listing (sorted) unmapped targets, source keys that are
      missing, unused source keys and shape mismatches.
  """
  problems = []
  missing_targets = sorted(set(target_shapes) - set(table))
  problems += [f"no mapping for parameter {p}" for p in missing_targets]
  extra_targets = sorted(set(table) - set(target_shapes))
  problems += [f"mapping names unknown parameter {p}" for p in extra_targets]
  flat, used = {}, set()
  for path in sorted(set(table) & set(target_shapes)):
    key, hook = table[path]
    if key not in source:
      problems.append(f"missing key {key} (for {path})")
      continue
    used.add(key)
    value = np.asarray(hook(np.asarray(source[key])))
    if tuple(value.shape) != tuple(target_shapes[path]):
      problems.append(
          f"shape mismatch {key}: {tuple(np.shape(source[key]))} -> "
          f"{tuple(value.shape)}, model expects {tuple(target_shapes[path])}"
      )
      continue
    flat[path] = value.astype(dtype)
  unused = sorted(k for k in source if k not in used and not ignore(k))
  problems += [f"unused key {k}" for k in unused]
  if problems:
    raise ConversionError(
        f"{source_name}: {len(problems)} problem(s):\n  " + "\n  ".join(problems)
    )
  return unflatten(flat)


def sha256_file(path, chunk: int = 1 << 22) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(chunk):
      h.update(block)
  return h.hexdigest()


# ---- checkpoints -------------------------------------------------------------
def _write_json(path: pathlib.Path, obj) -> None:
  path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_params_checkpoint(
    dst, params, config: Mapping[str, Any], meta: Mapping[str, Any],
    tokenizer_dir=None, overwrite: bool = False,
) -> pathlib.Path:
  """Writes `dst/{params/, config.json, meta.json, tokenizer/}` atomically.

  Everything is written into a temporary sibling folder first and renamed
  into place at the end, so an interrupted conversion never leaves a
  half-written checkpoint at `dst`.
  """
  dst = pathlib.Path(dst).absolute()
  if dst.exists() and any(dst.iterdir()) and not overwrite:
    raise FileExistsError(f"{dst}: exists and is not empty (use --overwrite)")
  dst.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
  try:
    ckptr = _single_writer_checkpointer()
    ckptr.save(tmp / "params", params)
    ckptr.wait_until_finished()
    _write_json(tmp / "config.json", dict(config))
    _write_json(tmp / "meta.json", dict(meta))
    if tokenizer_dir is not None:
      shutil.copytree(tokenizer_dir, tmp / "tokenizer")
    if dst.exists():
      shutil.rmtree(dst)
    os.replace(tmp, dst)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return dst


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


def read_params_checkpoint(path, abstract=None):
  """Restores `path/params`; `abstract` (shape tree, may carry shardings)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  params_dir = pathlib.Path(path).absolute() / "params"
  if not params_dir.is_dir():
    raise FileNotFoundError(f"{params_dir}: no params checkpoint")
  ckptr = ocp.StandardCheckpointer()
  if abstract is None:
    return ckptr.restore(params_dir)
  abstract = nn.unbox(abstract)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
      lambda x: x if getattr(x, "sharding", None) is not None
      else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
      abstract,
  )
  try:
    return ckptr.restore(params_dir, abstract)
  except (ValueError, KeyError) as e:
    raise ConversionError(
        f"{params_dir}: checkpoint does not match the model config: {e}"
    ) from e


def write_checkpoint_with_tokenizer(dst, params, config, meta, tokenizer=None,
                                   overwrite: bool = False) -> pathlib.Path:
  """`write_params_checkpoint` plus only the BPE files of `tokenizer`.

  `tokenizer`: a folder with vocab.json + merges.txt (a HF folder's other
  files, weights included, are not copied); default: the packaged BPE.
  """
  from moeclip_jax.models import tokenize  # pylint: disable=g-import-not-at-top

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
