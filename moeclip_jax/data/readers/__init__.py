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
  industrial,
  label_from_mask,
  medical,
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
    # Medical (BMAD layouts, image+mask sets, yes/no folders).
    "bmad": medical.scan_bmad,
    "brain_mri": medical.scan_brain_mri,
    "liver_ct": medical.scan_liver_ct,
    "retina_oct": medical.scan_retina_oct,
    "head_ct": medical.scan_head_ct,
    "br35h": medical.scan_br35h,
    "cvc_clinicdb": medical.scan_clinicdb,
    "cvc_colondb": medical.scan_colondb,
    "cvc_300": medical.scan_cvc300,
    "kvasir_seg": medical.scan_kvasir,
    "endo": medical.scan_endo,
    "hyperkvasir": medical.scan_hyperkvasir,
    "isic2016": medical.scan_isic2016,
    "tn3k": medical.scan_tn3k,
    # Industrial and other sets as distributed.
    "aitex": industrial.scan_aitex,
    "dagm": industrial.scan_dagm,
    "mvtec_loco": industrial.scan_mvtec_loco,
    "mvtec_3d": industrial.scan_mvtec_3d,
    "realiad": industrial.scan_realiad,
    "mastcam": industrial.scan_mastcam,
    "ped2": industrial.scan_ped2,
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
