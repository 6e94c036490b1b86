"""Medical layouts: BMAD, yes/no folders, Head CT, image+mask sets.

* BMAD (Brain MRI `BraTS2021_slice`, Liver CT `Hist_DIY`/`LiverCT`, Retina
  OCT `RESC` / `OCT2017`): `train/good/*.png`, `test/good/img/*.png`,
  `test/Ungood/img/*.png`, `test/Ungood/label/*.png` (`valid/` likewise, not
  read unless asked). OCT2017 has no `img`/`label` level and no masks; both
  forms are read, folder names in any case.
* yes/no folders (Kaggle Brain MRI as InCTRL converts it, Br35H):
  `no/*.jpg` normal, `yes/*.jpg` anomalous, no masks (`pred/`, Br35H's
  unlabelled images, is ignored).
* Head CT (Kaggle "head_ct"): `labels.csv` (`id, hemorrhage`) beside a
  `head_ct/` folder of `NNN.png` (often nested twice), no masks; a BMAD /
  MVTec-style copy (`test/{good,Ungood}`) is read as BMAD.
* image + mask folders (CVC-ClinicDB `Original` + `Ground Truth`, PraNet's
  `TestDataset/<set>/{images,masks}` for CVC-ColonDB / CVC-300 / Kvasir,
  Kvasir-SEG `images` + `masks`, EndoTect / Endo `images` + `masks`, TN3K
  `{trainval,test}-{image,mask}`, ISIC 2016 `ISBI2016_ISIC_Part1_*`): every
  image is anomalous (a lesion), no normals, masks matched by stem.
"""

from __future__ import annotations

import csv
import os
from typing import Optional, Sequence

from moeclip_jax.data import records as rec
from moeclip_jax.data.readers import _common

BMAD_TREE = "train/good, test/{good,Ungood}[/img|/label]"
_NORMAL = ("good", "normal")
_ANOMALOUS = ("Ungood", "bad", "abnormal", "anomaly")
_IMG = ("img", "image", "images")
_LABEL = ("label", "labels", "mask", "masks", "gt")
_SPLITS = {"train": ("train",), "test": ("test",),
           "valid": ("valid", "val", "validation")}


def _bmad_group(group_dir, normal, class_name, dataset, split, out) -> bool:
  """Records of one `<split>/<good|Ungood>` folder; True if it has masks."""
  img_dir = _common.find_ci(group_dir, _IMG) or group_dir
  label_dir = _common.find_ci(group_dir, _LABEL)
  for path in _common.list_images(img_dir):
    mask = None
    if not normal and label_dir:
      mask = _common.find_mask(label_dir, path, ("", "_mask"))
      if mask is None:
        out.issues.append(rec.Issue(path, f"no mask in {label_dir}"))
    out.records.append(rec.Record(
        path, mask, rec.NORMAL if normal else rec.ANOMALOUS, class_name,
        rec.GOOD if normal else "Ungood", dataset, split))
  return label_dir is not None


def scan_bmad(
    root: str, class_name: Optional[str] = None, dataset: str = "bmad",
    include_valid: bool = False,
) -> rec.ScanResult:
  """One BMAD set (the folder holding `train/` and `test/`).

  Args:
    root: the set's folder (e.g. `BraTS2021_slice`, `RESC`).
    class_name: class written into the records (default: the folder name).
    dataset: dataset name written into the records.
    include_valid: also read `valid/` (as split "valid").
  """
  _common.require_dir(root)
  name = class_name or os.path.basename(os.path.normpath(root))
  _common.need_ci(root, _SPLITS["test"], f"BMAD layout {BMAD_TREE}")
  out = rec.ScanResult(records=[])
  masked = []
  for split, names in _SPLITS.items():
    split_dir = _common.find_ci(root, names)
    if split_dir is None or (split == "valid" and not include_valid):
      continue
    # Some BMAD archives double the level (RESC/Test/test/...).
    split_dir = _common.find_ci(split_dir, names) or split_dir
    for sub in _common.subdirs(split_dir):
      normal = sub.lower() in _NORMAL
      if not normal and sub.lower() not in [a.lower() for a in _ANOMALOUS]:
        out.issues.append(rec.Issue(
            os.path.join(split_dir, sub), "not a good/Ungood folder",
            is_item=False))
        continue
      has = _bmad_group(os.path.join(split_dir, sub), normal, name, dataset,
                        split, out)
      if not normal:
        masked.append(has)
  out.expects_masks = bool(masked) and all(masked)
  return _common.finish(out, root)


def _medical(default_class: str, dataset: str):
  def scan(root: str, class_name: str = default_class, **kwargs):
    if _common.find_ci(root, ("no",)) and _common.find_ci(root, ("yes",)):
      return scan_yes_no(root, class_name, dataset, **kwargs)
    return scan_bmad(root, class_name, dataset, **kwargs)
  scan.__doc__ = (f"{dataset}: a BMAD-layout set, or `no/` + `yes/` folders "
                  "(InCTRL's Kaggle form, normals split 75/25 by default).")
  return scan


def scan_yes_no(
    root: str, class_name: Optional[str] = None, dataset: str = "yes_no",
    split_normals: bool = True,
) -> rec.ScanResult:
  """`no/` normal + `yes/` anomalous images, no masks.

  Args:
    split_normals: InCTRL's converter (75 % of the normals to train); False
      puts everything in test (AdaCLIP's Br35H).
  """
  _common.require_dir(root)
  name = class_name or os.path.basename(os.path.normpath(root))
  tree = "no/*.jpg + yes/*.jpg"
  out = rec.ScanResult(records=[], expects_masks=False)
  for folder, label in (("no", rec.NORMAL), ("yes", rec.ANOMALOUS)):
    for path in _common.list_images(_common.need_ci(root, (folder,), tree)):
      out.records.append(rec.Record(
          path, None, label, name, rec.GOOD if label == rec.NORMAL
          else "tumor", dataset, "test"))
  if split_normals:
    out.records = _common.split_normals(out.records)
  return _common.finish(out, root)


def scan_br35h(root: str, class_name: str = "br35h",
               split_normals: bool = False) -> rec.ScanResult:
  """Br35H (Kaggle): `no/`, `yes/` (and the unlabelled `pred/`)."""
  return scan_yes_no(root, class_name, "br35h", split_normals)


def _head_ct_images(root: str) -> str:
  """The innermost `head_ct/` folder that holds images (else root)."""
  folder = root
  while True:
    inner = _common.find_ci(folder, ("head_ct",))
    if inner is None:
      return folder
    folder = inner


def scan_head_ct(
    root: str, class_name: str = "headct", split_normals: bool = False,
) -> rec.ScanResult:
  """Head CT: `labels.csv` + `head_ct/NNN.png`, or a BMAD-style copy.

  Args:
    split_normals: InCTRL's protocol (75 normals to train, test = 25 normal +
      100 anomalous); default False = MoECLIP / AdaCLIP (all 200 in test).
  """
  _common.require_dir(root)
  labels = _common.find_file(root, "labels.csv", depth=2)
  if labels is None:
    if _common.find_ci(root, ("test",)):
      return scan_bmad(root, class_name, "head_ct")
    raise FileNotFoundError(
        f"{root}: no labels.csv (Head CT: labels.csv + head_ct/NNN.png) and "
        f"no BMAD-style test/ folder")
  folder = _head_ct_images(os.path.dirname(labels))
  by_stem = {_common.stem(p): p for p in _common.list_images(folder)}
  out = rec.ScanResult(records=[], expects_masks=False)
  with open(labels, newline="", encoding="utf-8") as f:
    rows = list(csv.reader(f))
  for line, row in enumerate(rows[1:], start=2):
    where = f"{labels}:{line}"
    try:
      ident, label = int(row[0]), int(float(row[1]))
      path = by_stem.get(f"{ident:03d}") or by_stem.get(str(ident))
      if path is None:
        raise ValueError(f"no image {ident:03d}.* in {folder}")
      out.records.append(rec.Record(
          path, None, label, class_name,
          "hemorrhage" if label else rec.GOOD, "head_ct", "test"))
    except (IndexError, ValueError) as e:
      out.issues.append(rec.Issue(where, f"bad labels.csv row: {e}"))
  if split_normals:
    out.records = _common.split_normals(out.records)
  return _common.finish(out, root)


_IMAGE_DIRS = ("images", "image", "Original", "imgs", "img")
_MASK_DIRS = ("masks", "mask", "Ground Truth", "GroundTruth", "gt", "labels")


def _image_mask_pair(root: str) -> tuple[str, str]:
  """(images dir, masks dir) in `root` or one level below (PraNet's
  `TestDataset/<set>/`, ClinicDB's `PNG/` / `TIF/`; PNG preferred)."""
  subs = _common.subdirs(root)
  subs.sort(key=lambda s: s.lower() != "png")
  for here in [root] + [os.path.join(root, s) for s in subs]:
    img, mask = (_common.find_ci(here, _IMAGE_DIRS),
                 _common.find_ci(here, _MASK_DIRS))
    if img and mask:
      return img, mask
  raise FileNotFoundError(
      f"{root}: no image folder ({'/'.join(_IMAGE_DIRS)}) beside a mask "
      f"folder ({'/'.join(_MASK_DIRS)}), here or one level below")


def _lesion_records(
    img_dir, mask_dir, class_name, dataset, split, out,
    suffixes: Sequence[str] = ("", "_mask", "_Segmentation"),
) -> None:
  for path in _common.list_images(img_dir):
    mask = _common.find_mask(mask_dir, path, suffixes)
    if mask is None:
      out.issues.append(rec.Issue(path, f"no mask in {mask_dir}"))
    out.records.append(rec.Record(path, mask, rec.ANOMALOUS, class_name,
                                  "lesion", dataset, split))


def image_mask_reader(dataset: str, default_class: str):
  """A reader of an `images/` + `masks/` set where every image is anomalous."""
  def scan(root: str, class_name: str = default_class,
           split: str = "test") -> rec.ScanResult:
    _common.require_dir(root)
    img_dir, mask_dir = _image_mask_pair(root)
    out = rec.ScanResult(records=[])
    _lesion_records(img_dir, mask_dir, class_name, dataset, split, out)
    return _common.finish(out, root)
  scan.__doc__ = (f"{dataset}: images + masks folders, all anomalous "
                  "(no normal images: image metrics are left empty).")
  return scan


def _split_pairs(root: str, splits: dict[str, tuple[str, str]], tree: str,
                 class_name: str, dataset: str) -> rec.ScanResult:
  """Per split, an (image folder name, mask folder name) pair under root."""
  _common.require_dir(root)
  out = rec.ScanResult(records=[])
  found = False
  for split, (img_name, mask_name) in splits.items():
    img = _common.find_ci(root, (img_name,))
    mask = _common.find_ci(root, (mask_name,))
    if img and mask:
      found = True
      _lesion_records(img, mask, class_name, dataset, split, out)
  if not found:
    raise FileNotFoundError(f"{root}: none of the folders of {tree}")
  return _common.finish(out, root)


def scan_tn3k(root: str, class_name: str = "tn3k") -> rec.ScanResult:
  """TN3K thyroid nodules: `{trainval,test}-{image,mask}/`."""
  return _split_pairs(
      root, {"train": ("trainval-image", "trainval-mask"),
             "test": ("test-image", "test-mask")},
      "trainval-image, trainval-mask, test-image, test-mask",
      class_name, "tn3k")


def scan_isic2016(root: str, class_name: str = "isic") -> rec.ScanResult:
  """ISIC 2016 (ISBI) task 1: `ISBI2016_ISIC_Part1_{Training,Test}_Data` +
  `..._GroundTruth` (`<id>_Segmentation.png`)."""
  base = "ISBI2016_ISIC_Part1_"
  return _split_pairs(
      root, {"train": (base + "Training_Data", base + "Training_GroundTruth"),
             "test": (base + "Test_Data", base + "Test_GroundTruth")},
      base + "{Training,Test}_{Data,GroundTruth}", class_name, "isic2016")


_HK_NORMAL = ("anatomical-landmarks",)
_HK_ANOMALY = ("pathological-findings",)


def scan_hyperkvasir(
    root: str, class_name: str = "hyperkvasir",
    normal: Sequence[str] = _HK_NORMAL, anomaly: Sequence[str] = _HK_ANOMALY,
    split_normals: bool = True,
) -> rec.ScanResult:
  """HyperKvasir labelled images, image-level (no masks).

  `labeled-images/<tract>/<category>/<finding>/*.jpg`; a category or finding
  named in `normal` is normal, one named in `anomaly` anomalous (defect type
  = finding), the rest is left out (a note). Normals split 75/25.
  """
  _common.require_dir(root)
  base = _common.find_ci(root, ("labeled-images",)) or root
  tree = "labeled-images/<tract>/<category>/<finding>/*.jpg"
  out = rec.ScanResult(records=[], expects_masks=False)
  left_out = 0
  normal_l, anomaly_l = {n.lower() for n in normal}, {
      a.lower() for a in anomaly}
  for tract in _common.subdirs(base):
    for category in _common.subdirs(os.path.join(base, tract)):
      for finding in _common.subdirs(os.path.join(base, tract, category)):
        files = _common.list_images(
            os.path.join(base, tract, category, finding))
        keys = {category.lower(), finding.lower()}
        if keys & normal_l:
          label = rec.NORMAL
        elif keys & anomaly_l:
          label = rec.ANOMALOUS
        else:
          left_out += len(files)
          continue
        out.records += [rec.Record(
            p, None, label, class_name,
            rec.GOOD if label == rec.NORMAL else finding, "hyperkvasir",
            "test") for p in files]
  if not out.records:
    raise FileNotFoundError(f"{base}: no labelled images ({tree})")
  if left_out:
    out.notes.append(f"left out {left_out} images of other categories")
  if split_normals:
    out.records = _common.split_normals(out.records)
  return _common.finish(out, root)


scan_brain_mri = _medical("brain", "brain_mri")
scan_liver_ct = _medical("liver", "liver_ct")
scan_retina_oct = _medical("retina", "retina_oct")
scan_clinicdb = image_mask_reader("cvc_clinicdb", "Colon_clinicDB")
scan_colondb = image_mask_reader("cvc_colondb", "Colon_colonDB")
scan_cvc300 = image_mask_reader("cvc_300", "Colon_cvc300")
scan_kvasir = image_mask_reader("kvasir_seg", "Colon_Kvasir")
scan_endo = image_mask_reader("endo", "endo")
