"""Tiny fake datasets in every supported layout, for the data-layer tests.

Each `make_<layout>(root)` writes a few small images (and masks) and returns
the number of records the reader should find.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np
from PIL import Image

H, W = 12, 16  # tiny images keep the tests fast


def image(path: str, seed: int, size=(H, W), mode="RGB") -> str:
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  shape = size + ((3,) if mode == "RGB" else ())
  Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
  return path


def mask(path: str, seed: int, size=(H, W), empty=False) -> str:
  arr = np.zeros(size, np.uint8)
  if not empty:
    rng = np.random.default_rng(seed)
    y, x = rng.integers(0, size[0] - 3), rng.integers(0, size[1] - 3)
    arr[y:y + 3, x:x + 3] = 255
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(arr).save(path)
  return path


def make_mvtec(root, classes=("bottle", "cable"), normal="good",
               suffix="_mask", ext=".png", mask_ext=".png") -> int:
  n = 0
  for c, name in enumerate(classes):
    base = os.path.join(root, name)
    for i in range(2):
      image(f"{base}/train/{normal}/{i:03d}{ext}", 100 * c + i)
      image(f"{base}/test/{normal}/{i:03d}{ext}", 100 * c + 10 + i)
      image(f"{base}/test/crack/{i:03d}{ext}", 100 * c + 20 + i)
      mask(f"{base}/ground_truth/crack/{i:03d}{suffix}{mask_ext}", c + i)
      n += 3
  return n


def make_btad(root) -> int:
  return make_mvtec(root, ("01", "03"), normal="ok", suffix="",
                    ext=".bmp", mask_ext=".bmp")


def make_dtd(root) -> int:
  return make_mvtec(root, ("Woven_001", "Blotchy_099"), suffix="")


def make_visa(root) -> int:
  rows = [("object", "split", "label", "image", "mask")]
  for c, name in enumerate(("candle", "pcb1")):
    for i in range(3):
      anomalous = i == 2
      kind = "Anomaly" if anomalous else "Normal"
      img = f"{name}/Data/Images/{kind}/{i:03d}.JPG"
      image(os.path.join(root, img), 10 * c + i)
      msk = ""
      if anomalous:
        msk = f"{name}/Data/Masks/Anomaly/{i:03d}.png"
        mask(os.path.join(root, msk), i)
      rows.append((name, "test" if i else "train",
                   "anomaly" if anomalous else "normal", img, msk))
  os.makedirs(os.path.join(root, "split_csv"))
  with open(os.path.join(root, "split_csv", "1cls.csv"), "w",
            newline="") as f:
    csv.writer(f).writerows(rows)
  return len(rows) - 1


def make_ksdd(root) -> int:
  for k in range(2):
    for i in range(2):
      image(f"{root}/kos{k:02d}/Part{i}.jpg", 10 * k + i)
      mask(f"{root}/kos{k:02d}/Part{i}_label.bmp", i, empty=i == 0)
  return 4


def make_rsdd(root) -> int:
  base = f"{root}/Type-I RSDDs dataset"
  for i in range(3):
    image(f"{base}/Rail surface images/rail_{i}.jpg", i)
    mask(f"{base}/GroundTruth/rail_{i}.jpg", i, empty=i == 0)
  return 3


def make_moeclip_jsonl(root) -> int:
  make_mvtec(root, ("bottle",))
  lines = []
  for i in range(2):
    lines.append({"image_path": f"bottle/test/good/{i:03d}.png",
                  "label": 0, "class_name": "bottle"})
    lines.append({"image_path": f"bottle/test/crack/{i:03d}.png",
                  "label": 1.0, "class_name": "bottle",
                  "mask_path": f"bottle/ground_truth/crack/{i:03d}_mask.png"})
  with open(os.path.join(root, "full-shot.jsonl"), "w") as f:
    f.write("\n".join(json.dumps(l) for l in lines))
  return len(lines)


def make_meta_json(root) -> int:
  make_mvtec(root, ("bottle",))
  meta = {"train": {"bottle": []}, "test": {"bottle": []}}
  for split in ("train", "test"):
    for i in range(2):
      meta[split]["bottle"].append({
          "img_path": f"bottle/{split}/good/{i:03d}.png", "mask_path": "",
          "cls_name": "bottle", "specie_name": "good", "anomaly": 0})
  meta["test"]["bottle"].append({
      "img_path": "bottle/test/crack/000.png",
      "mask_path": "bottle/ground_truth/crack/000_mask.png",
      "cls_name": "bottle", "specie_name": "crack", "anomaly": 1})
  with open(os.path.join(root, "meta.json"), "w") as f:
    json.dump(meta, f)
  return 5


def make_inctrl_json(root) -> int:
  make_mvtec(root, ("bottle",))
  normal = [{"image_path": f"bottle/test/good/{i:03d}.png", "target": 0,
             "type": "bottle"} for i in range(2)]
  outlier = [{"image_path": f"bottle/test/crack/{i:03d}.png", "target": 1,
              "type": "bottle"} for i in range(2)]
  train = [{"image_path": os.path.join(root, f"bottle/train/good/{i:03d}.png"),
            "target": 0, "type": "bottle"} for i in range(2)]
  for name, items in (("bottle_val_normal", normal),
                      ("bottle_val_outlier", outlier),
                      ("bottle_normal", train)):
    with open(os.path.join(root, name + ".json"), "w") as f:
      json.dump(items, f)
  return 6


def make_folder(root) -> int:
  for i in range(3):
    image(f"{root}/good/n{i}.png", i)
  for i in range(2):
    image(f"{root}/abnormal/a{i}.png", 10 + i)
    mask(f"{root}/masks/a{i}.png", i)
  image(f"{root}/abnormal/scratch/s0.png", 20)
  mask(f"{root}/masks/scratch/s0_mask.png", 3)
  return 6


MAKERS = {
    "mvtec": make_mvtec, "mpdd": make_mvtec, "btad": make_btad,
    "dtd_synthetic": make_dtd, "visa": make_visa, "ksdd": make_ksdd,
    "rsdd": make_rsdd, "moeclip_jsonl": make_moeclip_jsonl,
    "meta_json": make_meta_json, "inctrl_json": make_inctrl_json,
    "folder": make_folder,
}
