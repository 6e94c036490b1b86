"""`data prepare NAME --root RAW --out DIR`: a preprocessed copy on disk.

Writes what a reader found as an MVTec-style tree (crops cut out, LOCO's
mask folders merged), plus the peers' metadata files, so the result reads
back with the `mvtec`, `meta_json` and `moeclip_jsonl` readers:

  <out>/<class>/train/good/<name>.png
  <out>/<class>/test/<good|defect>/<name>.png
  <out>/<class>/ground_truth/<defect>/<name>_mask.png   {0, 255}
  <out>/meta.json          AnomalyCLIP / AdaCLIP (paths relative to <out>)
  <out>/full-shot.jsonl    MoECLIP (test split, paths relative to <out>)
  <out>/manifest.json      sha256 of every file + a digest of the input

`<name>` is the image's path relative to the folder its group (class, split,
defect) shares, separators turned into `_`, plus `_x<left>y<top>` for a crop.
The build goes to a temp folder beside `<out>` that is renamed at the end;
a rerun on an existing `<out>` verifies its hashes instead of rebuilding.
Everything is sorted and PNG-encoded with fixed settings: deterministic.

`PRESETS` holds the papers' preprocessing per layout (InCTRL's SDD slices and
AITEX tiles); `--option` overrides them.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import shutil
import tempfile
from typing import Callable, Optional, Sequence

from moeclip_jax.checkpoint import params as ckpt_params
from moeclip_jax.data import images
from moeclip_jax.data import records as rec
from moeclip_jax.utils import console

MANIFEST = "manifest.json"
META_JSON = "meta.json"
FULL_SHOT = "full-shot.jsonl"
VERSION = 1

PRESETS: dict[str, dict] = {
    # InCTRL convert_SDD.py: 3 vertical slices, class "SDD", normals 75/25.
    "ksdd": {"slices": 3, "split_normals": True, "class_name": "SDD"},
    # InCTRL convert_AITEX.py: 256-px tiles, normals 75/25.
    "aitex": {"tile": 256, "split_normals": True},
    # AnomalyMoE: LOCO's per-defect mask folders merged per image.
    "mvtec_loco": {},
}


class PrepareError(ValueError):
  """An output folder that does not verify, or input that cannot be written."""


def _group_key(r: rec.Record) -> tuple[str, str, str]:
  return (r.class_name, r.split, r.defect_type)


def _names(records: Sequence[rec.Record]) -> list[str]:
  """Output file stem of every record (see the module docstring)."""
  groups: dict[tuple, list[int]] = {}
  for i, r in enumerate(records):
    groups.setdefault(_group_key(r), []).append(i)
  out = [""] * len(records)
  for key, idx in groups.items():
    dirs = [os.path.dirname(records[i].image_path) for i in idx]
    base = os.path.commonpath(dirs) if len(idx) > 1 else dirs[0]
    seen = {}
    for i in idx:
      r = records[i]
      rel = os.path.splitext(os.path.relpath(r.image_path, base))[0]
      name = rel.replace(os.sep, "_").replace("/", "_")
      if r.crop is not None:
        name += f"_x{r.crop[0]}y{r.crop[1]}"
      if name in seen:
        raise PrepareError(f"{r.image_path}: output name {name!r} of group "
                           f"{key} also used by {records[seen[name]].image_path}")
      seen[name] = i
      out[i] = name
  return out


def _paths(r: rec.Record, name: str) -> tuple[str, Optional[str]]:
  """(image, mask or None) paths relative to the output folder."""
  kind = rec.GOOD if r.label == rec.NORMAL else r.defect_type
  image = os.path.join(r.class_name, r.split, kind, name + ".png")
  if r.mask_path is None:
    return image, None
  return image, os.path.join(r.class_name, "ground_truth", kind,
                             name + "_mask.png")


def _write_png(path: str, arr) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(images.encode_png(arr, compress_level=6))


def _write_one(tmp: str, r: rec.Record, image: str, mask: Optional[str]):
  pixels, mask_pixels = images.load_pair(r.image_path, r.mask_path, r.crop)
  _write_png(os.path.join(tmp, image), pixels)
  if mask is not None:
    _write_png(os.path.join(tmp, mask), mask_pixels)


def meta_json(entries) -> dict:
  """AnomalyCLIP / AdaCLIP meta.json of (record, image, mask) entries."""
  out: dict = {}
  for r, image, mask in entries:
    out.setdefault(r.split, {}).setdefault(r.class_name, []).append({
        "img_path": image, "mask_path": mask or "", "cls_name": r.class_name,
        "specie_name": r.defect_type, "anomaly": r.label})
  return out


def full_shot_lines(entries) -> list[str]:
  """MoECLIP full-shot.jsonl lines (test split only)."""
  lines = []
  for r, image, mask in entries:
    if r.split != "test":
      continue
    obj = {"image_path": image, "label": r.label, "class_name": r.class_name}
    if mask:
      obj["mask_path"] = mask
    lines.append(json.dumps(obj, sort_keys=True))
  return lines


def _write_meta(folder: str, entries) -> None:
  with open(os.path.join(folder, META_JSON), "w", encoding="utf-8") as f:
    f.write(json.dumps(meta_json(entries), indent=2, sort_keys=True) + "\n")
  with open(os.path.join(folder, FULL_SHOT), "w", encoding="utf-8") as f:
    f.write("".join(line + "\n" for line in full_shot_lines(entries)))


def _sorted(records: Sequence[rec.Record]) -> list[rec.Record]:
  return sorted(records, key=lambda r: (
      r.class_name, r.split, r.label, r.defect_type, r.image_path,
      r.crop or ()))


def input_digest(records: Sequence[rec.Record], name: str,
                 options: dict) -> str:
  """Digest of what is being prepared: layout, options and every record."""
  records = _sorted(records)
  h = hashlib.sha256(json.dumps([name, options, VERSION], sort_keys=True,
                                default=str).encode())
  for r in records:
    h.update(json.dumps([r.image_path, r.mask_path, r.label, r.class_name,
                         r.defect_type, r.split, r.crop]).encode())
  return h.hexdigest()


def _hash_tree(folder: str) -> dict[str, str]:
  files = {}
  for here, dirs, names in os.walk(folder):
    dirs.sort()
    for n in sorted(names):
      path = os.path.join(here, n)
      rel = os.path.relpath(path, folder).replace(os.sep, "/")
      if rel != MANIFEST:
        files[rel] = ckpt_params.sha256_file(path)
  return files


def verify(out: str, digest: Optional[str] = None) -> dict:
  """Checks `out` against its manifest; returns the manifest.

  Raises:
    PrepareError: no manifest, another input digest, a file missing, changed
      or not listed (each message names the file).
  """
  path = os.path.join(out, MANIFEST)
  if not os.path.isfile(path):
    raise PrepareError(f"{out}: exists but has no {MANIFEST} (not written "
                       "by data prepare; pass --overwrite to replace it)")
  with open(path, encoding="utf-8") as f:
    manifest = json.load(f)
  if digest is not None and manifest.get("input_digest") != digest:
    raise PrepareError(f"{path}: prepared from other input or options "
                       "(pass --overwrite to rebuild)")
  found = _hash_tree(out)
  for rel, sha in sorted(manifest["files"].items()):
    if rel not in found:
      raise PrepareError(f"{os.path.join(out, rel)}: listed in the manifest "
                         "but missing")
    if found[rel] != sha:
      raise PrepareError(f"{os.path.join(out, rel)}: sha256 differs from "
                         "the manifest")
  extra = sorted(set(found) - set(manifest["files"]))
  if extra:
    raise PrepareError(f"{os.path.join(out, extra[0])}: not in the manifest")
  return manifest


def materialise(
    records: Sequence[rec.Record], out: str, name: str, options: dict,
    overwrite: bool = False, say: Callable[[str], None] = print,
    num_threads: int = 4,
) -> dict:
  """Writes the preprocessed tree + metadata + manifest to `out`.

  Returns:
    the manifest ({"files": {relpath: sha256}, "input_digest", ...}).
  """
  records = _sorted(records)
  digest = input_digest(records, name, options)
  out = os.path.abspath(out)
  if os.path.exists(out) and not overwrite:
    manifest = verify(out, digest)
    say(f"verified {len(manifest['files'])} files in {out} (nothing redone)")
    return manifest
  names = _names(records)
  entries = [(r, *_paths(r, n)) for r, n in zip(records, names)]
  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", dir=parent)
  try:
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
      jobs = [pool.submit(_write_one, tmp, *e) for e in entries]
      for job in console.progress(
          concurrent.futures.as_completed(jobs), "prepare", len(jobs)):
        job.result()
    _write_meta(tmp, entries)
    manifest = {"version": VERSION, "layout": name, "options": options,
                "records": len(records), "input_digest": digest,
                "files": _hash_tree(tmp)}
    with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as f:
      f.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.chmod(tmp, 0o755)
    _replace_dir(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  say(f"wrote {len(records)} records, {len(manifest['files'])} files to {out}")
  return manifest


def _replace_dir(tmp: str, out: str) -> None:
  """Renames `tmp` to `out`; an old `out` is moved aside first, then removed."""
  old = None
  if os.path.exists(out):
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old.",
                           dir=os.path.dirname(out))
    os.rename(out, os.path.join(old, "x"))
  os.rename(tmp, out)
  if old:
    shutil.rmtree(old, ignore_errors=True)


def write_meta_only(records: Sequence[rec.Record], out: str) -> list[str]:
  """meta.json + full-shot.jsonl for records as they are (no copies), paths
  relative to `out`; returns the written paths.

  Raises:
    PrepareError: a record is a crop or a merged mask folder (those need the
      full prepare).
  """
  out = os.path.abspath(out)
  entries = []
  for r in sorted(records, key=lambda r: (r.class_name, r.split,
                                          r.image_path)):
    if r.crop is not None or (r.mask_path and os.path.isdir(r.mask_path)):
      raise PrepareError(f"{r.image_path}: a crop or mask folder cannot be "
                         "named in meta.json; run prepare without --meta-only")
    entries.append((r, os.path.relpath(r.image_path, out),
                    os.path.relpath(r.mask_path, out) if r.mask_path
                    else None))
  os.makedirs(out, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".meta.", dir=out)
  try:
    _write_meta(tmp, entries)
    paths = []
    for name in (META_JSON, FULL_SHOT):
      os.replace(os.path.join(tmp, name), os.path.join(out, name))
      paths.append(os.path.join(out, name))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return paths
