"""Parameter-tree helpers: '/'-joined paths, loud merging."""

from __future__ import annotations

from typing import Any, Callable

import jax


def path_str(path) -> str:
  """A jax key path as 'a/b/c'."""
  return jax.tree_util.keystr(path, simple=True, separator="/")


def flatten_with_names(tree) -> list[tuple[str, Any]]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return [(path_str(p), v) for p, v in leaves]


def map_with_names(fn: Callable[[str, Any], Any], tree):
  return jax.tree_util.tree_map_with_path(lambda p, v: fn(path_str(p), v), tree)


def merge_subtrees(base: dict, replacement: dict, keys) -> dict:
  """`base` with the top-level `keys` replaced from `replacement`.

  Raises:
    ValueError: a key is missing on either side, or shapes differ.
  """
  out = dict(base)
  for key in keys:
    if key not in base or key not in replacement:
      raise ValueError(f"cannot merge {key!r}: missing on one side")
    want = jax.tree.map(lambda x: (x.shape, x.dtype), base[key])
    got = jax.tree.map(lambda x: (x.shape, x.dtype), replacement[key])
    if jax.tree.structure(want) != jax.tree.structure(got) or want != got:
      bad = sorted(
          n for (n, w), (_, g) in zip(flatten_with_names(want),
                                      flatten_with_names(got)) if w != g)
      raise ValueError(
          f"cannot merge {key!r}: tree or shapes differ (e.g. {bad[:5]})")
    out[key] = replacement[key]
  return out
