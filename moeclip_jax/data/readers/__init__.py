"""Dataset layout readers: an explicit registry name -> scan function.

Every scan function takes the dataset root first plus layout-specific keyword
options, and returns a `records.ScanResult`.
"""

from __future__ import annotations

from typing import Callable

from moeclip_jax.data import records as rec
from moeclip_jax.data.readers import (
  elpv,
  folder,
  label_from_mask,
  metadata,
  mvtec_like,
  visa,
)

ScanFn = Callable[..., rec.ScanResult]

READERS: dict[str, ScanFn] = {
    "mvtec": mvtec_like.scan_mvtec,
    "visa": visa.scan_visa,
    "btad": mvtec_like.scan_btad,
    "mpdd": mvtec_like.scan_mpdd,
    "dtd_synthetic": mvtec_like.scan_dtd_synthetic,
    "ksdd": label_from_mask.scan_ksdd,
    "rsdd": label_from_mask.scan_rsdd,
    "moeclip_jsonl": metadata.scan_moeclip_jsonl,
    "meta_json": metadata.scan_meta_json,
    "inctrl_json": metadata.scan_inctrl_json,
    "folder": folder.scan_folder,
    "elpv": elpv.scan_elpv,
}


def scan(name: str, root: str | None, **options) -> rec.ScanResult:
  """Runs the reader `name` on `root`.

  Raises:
    KeyError: unknown reader name (the message lists the known ones).
  """
  if name not in READERS:
    raise KeyError(f"unknown dataset layout {name!r}; known: {sorted(READERS)}")
  if root is None and name != "elpv":
    raise ValueError(f"dataset layout {name!r} needs a root folder")
  return READERS[name](root, **options)
