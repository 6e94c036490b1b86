"""Fake trees of the dataset zoo (issue #19), built from each distributor's
documented structure: folder names, file extensions, mask conventions.

Each `make_<layout>(root)` returns a dict of expected facts:
`n` records, `anomalous`, `masks` (anomalous records with a mask), and
`splits` (set of splits).
"""

from __future__ import annotations

import json
import os

from data_fakes import image, mask


def _facts(n, anomalous, masks, splits=("test",), **extra):
  return dict(n=n, anomalous=anomalous, masks=masks, splits=set(splits),
              **extra)


def make_bmad(root, with_img_level=True, ext=".png") -> dict:
  """BraTS2021_slice-like: train/good, test/{good,Ungood}/{img,label}."""
  for i in range(3):
    image(f"{root}/train/good/{i:05d}{ext}", i)
  for group, seed in (("good", 10), ("Ungood", 20)):
    for i in range(2):
      sub = f"{root}/test/{group}/img" if with_img_level else (
          f"{root}/test/{group}")
      image(f"{sub}/{i:05d}{ext}", seed + i)
      if with_img_level:
        mask(f"{root}/test/{group}/label/{i:05d}.png", i,
             empty=group == "good")
  image(f"{root}/valid/good/img/00000{ext}", 99)  # not read by default
  return _facts(7, 2, 2 if with_img_level else 0, ("train", "test"))


def make_oct2017(root) -> dict:
  """BMAD's OCT2017: no img/label level, no masks."""
  return make_bmad(root, with_img_level=False, ext=".jpeg")


def make_brain_kaggle(root) -> dict:
  """Kaggle brain_tumor_dataset (InCTRL): no/ and yes/."""
  for i in range(4):
    image(f"{root}/no/no{i}.jpg", i)
  for i in range(3):
    image(f"{root}/yes/Y{i}.JPG", 10 + i)
  return _facts(7, 3, 0, ("train", "test"))


def make_br35h(root) -> dict:
  for i in range(2):
    image(f"{root}/no/no{i}.jpg", i)
    image(f"{root}/yes/y{i}.jpg", 10 + i)
    image(f"{root}/pred/pred{i}.jpg", 20 + i)  # unlabelled: ignored
  return _facts(4, 2, 0)


def make_head_ct(root) -> dict:
  """Kaggle head_ct: labels.csv + head_ct/head_ct/NNN.png."""
  rows = ["id, hemorrhage"]
  for i in range(6):
    image(f"{root}/head_ct/head_ct/{i:03d}.png", i, mode="L")
    rows.append(f"{i}, {int(i < 3)}")
  with open(f"{root}/labels.csv", "w") as f:
    f.write("\n".join(rows) + "\n")
  return _facts(6, 3, 0)


def make_clinicdb(root) -> dict:
  """CVC-ClinicDB as distributed: PNG/Original + PNG/Ground Truth."""
  for i in range(1, 4):
    image(f"{root}/PNG/Original/{i}.png", i)
    mask(f"{root}/PNG/Ground Truth/{i}.png", i)
    image(f"{root}/TIF/Original/{i}.tif", i)
    mask(f"{root}/TIF/Ground Truth/{i}.tif", i)
  return _facts(3, 3, 3)


def make_pranet(root) -> dict:
  """PraNet's TestDataset/<set>/{images,masks} (ColonDB, CVC-300)."""
  for i in range(3):
    image(f"{root}/images/{i}.png", i)
    mask(f"{root}/masks/{i}.png", i)
  return _facts(3, 3, 3)


def make_kvasir(root) -> dict:
  """Kvasir-SEG: Kvasir-SEG/{images,masks}/*.jpg (+ kavsir_bboxes.json)."""
  for i in range(3):
    image(f"{root}/Kvasir-SEG/images/cju{i}.jpg", i)
    mask(f"{root}/Kvasir-SEG/masks/cju{i}.jpg", i)
  with open(f"{root}/Kvasir-SEG/kavsir_bboxes.json", "w") as f:
    f.write("{}")
  return _facts(3, 3, 3)


def _pairs(images_dir, masks_dir, n, name, mask_name):
  """n images `name % i` with masks `mask_name % i`."""
  for i in range(n):
    image(f"{images_dir}/{name % i}", i)
    mask(f"{masks_dir}/{mask_name % i}", i)


def make_tn3k(root) -> dict:
  for split, n in (("trainval", 3), ("test", 2)):
    _pairs(f"{root}/{split}-image", f"{root}/{split}-mask", n, "%04d.jpg",
           "%04d.jpg")
  return _facts(5, 5, 5, ("train", "test"))


def make_isic2016(root) -> dict:
  base = f"{root}/ISBI2016_ISIC_Part1_"
  for split, n in (("Training", 3), ("Test", 2)):
    _pairs(f"{base}{split}_Data", f"{base}{split}_GroundTruth", n,
           "ISIC_%07d.jpg", "ISIC_%07d_Segmentation.png")
  return _facts(5, 5, 5, ("train", "test"))


def make_hyperkvasir(root) -> dict:
  base = f"{root}/labeled-images"
  for i in range(4):
    image(f"{base}/lower-gi-tract/anatomical-landmarks/cecum/c{i}.jpg", i)
  for i in range(2):
    image(f"{base}/upper-gi-tract/pathological-findings/esophagitis-a/"
          f"e{i}.jpg", 10 + i)
  image(f"{base}/lower-gi-tract/quality-of-mucosal-views/bbps-0-1/q.jpg", 20)
  return _facts(6, 2, 0, ("train", "test"))


def make_aitex(root, width=1024) -> dict:
  """Defect_images/<id>_<code>_<n>.png, Mask_images/<stem>_mask.png,
  NODefect_images/<roll>/*.png; 256-tall images, 4 tiles of 256 each."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  size = (256, width)
  for i in range(2):
    image(f"{root}/NODefect_images/2311694-2040n7u/{i:04d}_000_00.png", i,
          size=size, mode="L")
  image(f"{root}/Defect_images/0001_002_00.png", 5, size=size, mode="L")
  arr = np.zeros(size, np.uint8)
  arr[10:20, 300:310] = 255  # tile 1 only
  arr[100:110, 700:790] = 255  # tiles 2 and 3 (crosses 768)
  os.makedirs(f"{root}/Mask_images", exist_ok=True)
  Image.fromarray(arr).save(f"{root}/Mask_images/0001_002_00_mask.png")
  return _facts(3, 1, 1, ("train", "test"))


def make_dagm(root) -> dict:
  for c in ("Class1", "Class2"):
    for split in ("Train", "Test"):
      rows = ["1"]
      for i in range(1, 4):
        image(f"{root}/{c}/{split}/{i:04d}.PNG", i, mode="L")
        bad = i == 3
        if bad:
          mask(f"{root}/{c}/{split}/Label/{i:04d}_label.PNG", i)
        rows.append(f"{i}\t{int(bad)}\t{i:04d}.PNG\t0\t"
                    + (f"{i:04d}_label.PNG" if bad else ""))
      with open(f"{root}/{c}/{split}/Label/Labels.txt", "w") as f:
        f.write("\n".join(rows) + "\n")
  return _facts(12, 4, 4, ("train", "test"))


def make_mvtec_loco(root) -> dict:
  """<class>/test/{good,logical_anomalies,structural_anomalies}/NNN.png,
  ground_truth/<type>/NNN/MMM.png (several masks per image)."""
  base = f"{root}/breakfast_box"
  for i in range(2):
    image(f"{base}/train/good/{i:03d}.png", i)
    image(f"{base}/validation/good/{i:03d}.png", 5 + i)
    image(f"{base}/test/good/{i:03d}.png", 10 + i)
  for kind in ("logical_anomalies", "structural_anomalies"):
    image(f"{base}/test/{kind}/000.png", 20)
    mask(f"{base}/ground_truth/{kind}/000/000.png", 1)
    mask(f"{base}/ground_truth/{kind}/000/001.png", 2)
  return _facts(6, 2, 2, ("train", "test"))


def make_mvtec_3d(root) -> dict:
  base = f"{root}/bagel"
  for i in range(2):
    image(f"{base}/train/good/rgb/{i:03d}.png", i)
    image(f"{base}/test/good/rgb/{i:03d}.png", 10 + i)
    mask(f"{base}/test/good/gt/{i:03d}.png", i, empty=True)
    image(f"{base}/test/crack/rgb/{i:03d}.png", 20 + i)
    mask(f"{base}/test/crack/gt/{i:03d}.png", i)
    os.makedirs(f"{base}/test/crack/xyz", exist_ok=True)
    open(f"{base}/test/crack/xyz/{i:03d}.tiff", "w").close()
  return _facts(6, 2, 2, ("train", "test"))


def make_realiad(root) -> dict:
  data = {"meta": {"prefix": "", "normal_class": "OK"},
          "train": [], "test": []}
  base = f"{root}/realiad_1024/audiojack"
  for i in range(2):
    rel = f"OK/S000{i}/audiojack_000{i}_OK_C1_2023.jpg"
    image(f"{base}/{rel}", i)
    data["train" if i == 0 else "test"].append(
        {"category": "OK", "anomaly_class": "OK", "image_path": rel,
         "mask_path": None})
  rel = "NG/HS/S0100/audiojack_0100_NG_HS_C1_2023.jpg"
  image(f"{base}/{rel}", 9)
  mask(f"{base}/{rel[:-4]}.png", 9)
  data["test"].append({"category": "NG", "anomaly_class": "HS",
                       "image_path": rel, "mask_path": rel[:-4] + ".png"})
  os.makedirs(f"{root}/realiad_jsons_sv", exist_ok=True)
  with open(f"{root}/realiad_jsons_sv/audiojack.json", "w") as f:
    json.dump(data, f)
  return _facts(3, 1, 1, ("train", "test"))


def make_mastcam(root) -> dict:
  for i in range(2):
    image(f"{root}/train_typical/t{i}.png", i)
    image(f"{root}/test_typical/t{i}.png", 10 + i)
    image(f"{root}/validation_typical/v{i}.png", 30 + i)
  image(f"{root}/test_novel/drill-hole/d0.png", 20)
  image(f"{root}/test_novel/meteorite/m0.png", 21)
  return _facts(6, 2, 0, ("train", "test"))


def make_ped2(root) -> dict:
  base = f"{root}/UCSD_Anomaly_Dataset.v1p2/UCSDped2"
  for i in range(1, 3):
    image(f"{base}/Train/Train001/{i:03d}.tif", i, mode="L")
  for i in range(1, 4):
    image(f"{base}/Test/Test001/{i:03d}.tif", 10 + i, mode="L")
    mask(f"{base}/Test/Test001_gt/{i:03d}.bmp", i, empty=i == 1)
  return _facts(5, 2, 2, ("train", "test"), root=base)


MAKERS = {
    "bmad": make_bmad, "liver_ct": make_bmad, "retina_oct": make_oct2017,
    "brain_mri": make_brain_kaggle, "br35h": make_br35h,
    "head_ct": make_head_ct, "cvc_clinicdb": make_clinicdb,
    "cvc_colondb": make_pranet, "cvc_300": make_pranet,
    "kvasir_seg": make_kvasir, "endo": make_pranet, "tn3k": make_tn3k,
    "isic2016": make_isic2016, "hyperkvasir": make_hyperkvasir,
    "aitex": make_aitex, "dagm": make_dagm, "mvtec_loco": make_mvtec_loco,
    "mvtec_3d": make_mvtec_3d, "realiad": make_realiad,
    "mastcam": make_mastcam, "ped2": make_ped2,
}
