"""Industrial layouts as distributed: AITEX, DAGM 2007, MVTec LOCO, MVTec
3D-AD (RGB), Real-IAD (JSON), and MastCam / UCSD Ped2.

* AITEX: `Defect_images/<id>_<code>_<n>.png` (4096x256), masks
  `Mask_images/<stem>_mask.png` (`_mask1` accepted), normals
  `NODefect_images/<roll>/*.png`. `tile=256` reproduces InCTRL's converter.
* DAGM 2007: `Class<k>/{Train,Test}/NNNN.PNG`, `Label/Labels.txt` (rows
  `index label file 0 maskfile`) and `Label/NNNN_label.PNG` ellipse masks.
* MVTec LOCO: MVTec-style, but `ground_truth/<type>/<stem>/NNN.png` holds
  one mask per defect; the record's mask path is that folder (merged by
  union when read). `validation/good` is read as split "valid" on request.
* MVTec 3D-AD: `<class>/{train,validation,test}/<type>/{rgb,gt,xyz}/`;
  only `rgb` and `gt` are read.
* Real-IAD: `realiad_jsons_sv/<class>.json` (single view; else
  `realiad_jsons/`), `{"meta": {"prefix", "normal_class"}, "train": [...],
  "test": [...]}` with items `{category, anomaly_class, image_path,
  mask_path}`; images under `realiad_1024/` (or 512, 256, raw) `<class>/`.
* MastCam (Kerner et al.): `train_typical/`, `test_typical/`,
  `test_novel/<category>/`; no masks.
* UCSD Ped2: `UCSDped2/Train/TrainNNN/*.tif`, `Test/TestNNN/*.tif`,
  `Test/TestNNN_gt/*.bmp`; a frame is anomalous when its mask has a pixel.
  Also the frames form of the video-prediction repos:
  `ped2/{training,testing}/frames/NN/*.jpg` + `frame_labels_ped2.npy` or
  `ped2.mat` (frame labels only, no masks).
"""

from __future__ import annotations

import glob
import json
import math
import os
from typing import Optional

import numpy as np

from moeclip_jax.data import images
from moeclip_jax.data import records as rec
from moeclip_jax.data.readers import _common

AITEX_CODES = {
    "002": "Broken_end", "006": "Broken_yarn", "010": "Broken_pick",
    "016": "Weft_curling", "019": "Fuzzyball", "022": "Cut_selvage",
    "023": "Crease", "025": "Warp_ball", "027": "Knots",
    "029": "Contamination", "030": "Nep", "036": "Weft_crack",
}
_AITEX_TREE = "Defect_images/, Mask_images/, NODefect_images/<roll>/"


def tile_boxes(height: int, width: int, tile: int):
  """ceil(W / tile) boxes `tile` wide and H tall, left to right; the last
  one is moved left to end at the right edge when W is not a multiple."""
  count = max(1, math.ceil(width / tile))
  lefts = [min(k * tile, max(width - tile, 0)) for k in range(count)]
  return [(left, 0, min(left + tile, width), height) for left in lefts]


def _aitex_tiles(path, mask, class_name, defect, tile, out) -> None:
  """Tile records of one image; defect tiles without mask pixels dropped."""
  try:
    h, w = images.image_size(path)
    pixels = None if mask is None else images.load_mask(mask, (h, w))
  except images.BadInputError as e:
    out.issues.append(rec.Issue(e.path, e.problem))
    return
  for box in tile_boxes(h, w, tile):
    if pixels is None:
      out.records.append(rec.Record(path, None, rec.NORMAL, class_name,
                                    rec.GOOD, "aitex", "test", box))
    elif np.any(pixels[box[1]:box[3], box[0]:box[2]]):
      out.records.append(rec.Record(path, mask, rec.ANOMALOUS, class_name,
                                    defect, "aitex", "test", box))


def scan_aitex(
    root: str, class_name: str = "AITEX", tile: int = 0,
    split_normals: bool = True,
) -> rec.ScanResult:
  """AITEX fabric.

  Args:
    tile: 0 = whole images; N = InCTRL's tiles N px wide (records with a
      `crop`): every normal tile kept, defect tiles kept only where the mask
      has a pixel.
    split_normals: normals 75/25 train/test (InCTRL).
  """
  _common.require_dir(root)
  defect_dir = _common.need_ci(root, ("Defect_images",), _AITEX_TREE)
  mask_dir = _common.need_ci(root, ("Mask_images",), _AITEX_TREE)
  normal_dir = _common.need_ci(root, ("NODefect_images",), _AITEX_TREE)
  out = rec.ScanResult(records=[])
  normals = _common.list_images(normal_dir) + [
      p for d in _common.subdirs(normal_dir)
      for p in _common.list_images(os.path.join(normal_dir, d))]
  for path in normals:
    if tile:
      _aitex_tiles(path, None, class_name, rec.GOOD, tile, out)
    else:
      out.records.append(rec.Record(path, None, rec.NORMAL, class_name,
                                    rec.GOOD, "aitex", "test"))
  for path in _common.list_images(defect_dir):
    parts = _common.stem(path).split("_")
    defect = AITEX_CODES.get(parts[1] if len(parts) > 1 else "", "defect")
    mask = _common.find_mask(mask_dir, path, ("_mask", "_mask1", ""))
    if mask is None:
      out.issues.append(rec.Issue(path, f"no mask in {mask_dir}"))
    elif tile:
      _aitex_tiles(path, mask, class_name, defect, tile, out)
      continue
    out.records.append(rec.Record(path, mask, rec.ANOMALOUS, class_name,
                                  defect, "aitex", "test"))
  if split_normals:
    out.records = _common.split_normals(out.records)
  return _common.finish(out, root)


def _dagm_labels(label_dir: str) -> dict[str, Optional[str]]:
  """image file name -> mask file name (None when normal) from Labels.txt,
  else from the `<stem>_label.*` files present."""
  text = os.path.join(label_dir, "Labels.txt")
  out: dict[str, Optional[str]] = {}
  if os.path.isfile(text):
    with open(text, encoding="utf-8", errors="replace") as f:
      rows = [line.split() for line in f]
    for row in rows:  # the first line is a count, not a row
      if len(row) >= 3 and images.is_image_file(row[2]):
        out[row[2]] = row[4] if row[1] == "1" and len(row) >= 5 else None
    return out
  for path in _common.list_images(label_dir):
    if _common.stem(path).endswith("_label"):
      out[_common.stem(path)[:-len("_label")]] = os.path.basename(path)
  return out


def scan_dagm(root: str) -> rec.ScanResult:
  """DAGM 2007: one class per `Class<k>/` with `Train/` and `Test/`."""
  _common.require_dir(root)
  classes = [c for c in _common.subdirs(root) if c.lower().startswith("class")
             and not c.lower().endswith("_def")]
  if not classes:
    raise FileNotFoundError(f"{root}: no Class<k>/ folders (DAGM 2007: "
                            "Class1/{Train,Test}/Label/Labels.txt)")
  out = rec.ScanResult(records=[])
  for name in classes:
    for split in ("train", "test"):
      split_dir = _common.find_ci(os.path.join(root, name), (split,))
      if split_dir is None:
        continue
      label_dir = _common.find_ci(split_dir, ("Label",)) or split_dir
      labels = _dagm_labels(label_dir)
      for path in _common.list_images(split_dir):
        base = os.path.basename(path)
        mask = labels.get(base, labels.get(_common.stem(path)))
        out.records.append(rec.Record(
            path, os.path.join(label_dir, mask) if mask else None,
            rec.ANOMALOUS if mask else rec.NORMAL, name,
            "defect" if mask else rec.GOOD, "dagm", split))
  return _common.finish(out, root)


def _mvtec_variant(root, dataset, tree, splits, mask_of, image_sub=None):
  """MVTec-like trees; `mask_of(class_dir, split, type, image)` -> mask."""
  _common.require_dir(root)
  out = rec.ScanResult(records=[])
  classes = [c for c in _common.subdirs(root)
             if _common.find_ci(os.path.join(root, c), ("test",))]
  if not classes:
    raise FileNotFoundError(f"{root}: no class folder with test/ ({tree})")
  for name in classes:
    class_dir = os.path.join(root, name)
    for split, folder in splits:
      split_dir = _common.find_ci(class_dir, (folder,))
      for kind in _common.subdirs(split_dir) if split_dir else []:
        folder_of = os.path.join(split_dir, kind)
        normal = kind.lower() == "good"
        if image_sub:
          folder_of = os.path.join(folder_of, image_sub)
        for path in _common.list_images(folder_of):
          mask = None if normal else mask_of(class_dir, split_dir, kind, path)
          if not normal and mask is None:
            out.issues.append(rec.Issue(path, "no mask found"))
          out.records.append(rec.Record(
              path, mask, rec.NORMAL if normal else rec.ANOMALOUS, name,
              rec.GOOD if normal else kind, dataset, split))
  return _common.finish(out, root)


def _loco_mask(class_dir, split_dir, kind, path) -> Optional[str]:
  """The per-image mask folder (or a single mask file, tolerated)."""
  gt = os.path.join(class_dir, "ground_truth", kind)
  folder = os.path.join(gt, _common.stem(path))
  if os.path.isdir(folder):
    return folder
  return _common.find_mask(gt, path, ("", "_mask"))


def scan_mvtec_loco(root: str, include_valid: bool = False) -> rec.ScanResult:
  """MVTec LOCO AD (logical_anomalies + structural_anomalies)."""
  splits = [("train", "train"), ("test", "test")]
  if include_valid:
    splits.append(("valid", "validation"))
  return _mvtec_variant(
      root, "mvtec_loco",
      "<class>/test/<type>/NNN.png + ground_truth/<type>/NNN/MMM.png",
      splits, _loco_mask)


def _mvtec3d_mask(class_dir, split_dir, kind, path) -> Optional[str]:
  return _common.find_mask(os.path.join(split_dir, kind, "gt"), path, ("",))


def scan_mvtec_3d(root: str, include_valid: bool = False) -> rec.ScanResult:
  """MVTec 3D-AD, RGB images and their masks only."""
  splits = [("train", "train"), ("test", "test")]
  if include_valid:
    splits.append(("valid", "validation"))
  return _mvtec_variant(root, "mvtec_3d",
                        "<class>/test/<type>/{rgb,gt}/NNN.png", splits,
                        _mvtec3d_mask, image_sub="rgb")


_REALIAD_JSONS = ("realiad_jsons_sv", "realiad_jsons")
_REALIAD_IMAGES = ("realiad_1024", "realiad_512", "realiad_256",
                   "realiad_raw")


def _realiad_path(image_root: str, class_name: str, path: str) -> str:
  for cand in (os.path.join(image_root, path),
               os.path.join(image_root, class_name, path)):
    if os.path.exists(cand):
      return cand
  return os.path.join(image_root, class_name, path)


def _realiad_json_dir(root: str, json_dir: Optional[str]) -> str:
  """The single-view JSON folder, else the multi-view one; each may sit in
  `root` or in `root/realiad_jsons/` (the archive unpacks one more level)."""
  if json_dir:
    return _common.resolve(root, json_dir)
  outer = _common.find_ci(root, ("realiad_jsons",))
  for name in _REALIAD_JSONS:
    for base in (root, outer):
      hit = _common.find_ci(base, (name,)) if base else None
      if hit:
        return hit
  if outer:
    return outer
  raise FileNotFoundError(
      f"{root}: no {'/'.join(_REALIAD_JSONS)} folder of <class>.json files")


def scan_realiad(
    root: str, json_dir: Optional[str] = None,
    image_root: Optional[str] = None,
) -> rec.ScanResult:
  """Real-IAD from its JSON meta files (default: the single-view ones)."""
  _common.require_dir(root)
  jdir = _realiad_json_dir(root, json_dir)
  files = sorted(glob.glob(os.path.join(jdir, "*.json")))
  if not files:
    raise FileNotFoundError(f"{jdir}: no <class>.json files")
  images_dir = (_common.resolve(root, image_root) if image_root else
                _common.find_ci(root, _REALIAD_IMAGES) or root)
  out = rec.ScanResult(records=[])
  for path in files:
    name = _common.stem(path)
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
    normal_class = (data.get("meta") or {}).get("normal_class", "OK")
    for split in ("train", "test"):
      for i, item in enumerate(data.get(split, [])):
        where = f"{path}[{split}][{i}]"
        try:
          bad = item["anomaly_class"] != normal_class
          mask = item.get("mask_path")
          out.records.append(rec.Record(
              _realiad_path(images_dir, name, item["image_path"]),
              _realiad_path(images_dir, name, mask) if bad and mask else None,
              int(bad), name, item["anomaly_class"] if bad else rec.GOOD,
              "realiad", split))
        except (KeyError, TypeError) as e:
          out.issues.append(rec.Issue(where, f"bad metadata item: {e!r}"))
  return _common.finish(out, root)


def scan_mastcam(root: str, class_name: str = "mastcam") -> rec.ScanResult:
  """MastCam novelty set: typical = normal, novel/<category> = anomalous."""
  _common.require_dir(root)
  tree = "train_typical/, test_typical/, test_novel/<category>/"
  out = rec.ScanResult(records=[], expects_masks=False)
  for split in ("train", "test"):
    typical = _common.need_ci(root, (f"{split}_typical",), tree)
    out.records += [rec.Record(p, None, rec.NORMAL, class_name, rec.GOOD,
                               "mastcam", split)
                    for p in _common.list_images(typical)]
  novel = _common.need_ci(root, ("test_novel",), tree)
  for category in _common.subdirs(novel):
    out.records += [rec.Record(p, None, rec.ANOMALOUS, class_name, category,
                               "mastcam", "test")
                    for p in _common.list_images(
                        os.path.join(novel, category))]
  return _common.finish(out, root)


def _ped2_test_video(video_dir, gt_dir, class_name, out) -> None:
  for path in _common.list_images(video_dir):
    mask = _common.find_mask(gt_dir, path, ("",)) if gt_dir else None
    if mask is None:
      out.issues.append(rec.Issue(path, "no ground-truth frame mask"))
      continue
    try:
      anomalous = bool(np.any(images.load_mask(mask)))
    except images.BadInputError as e:
      out.issues.append(rec.Issue(e.path, e.problem))
      continue
    out.records.append(rec.Record(
        path, mask if anomalous else None, int(anomalous), class_name,
        "anomaly" if anomalous else rec.GOOD, "ped2", "test"))


def _ped2_frame_labels(root: str, counts: list[int]) -> list[int]:
  """Frame labels of the `frames` form: `frame_labels_ped2.npy` (labels of
  every test frame, videos in order) or `ped2.mat` ("gt": per video, 1-based
  inclusive [start, end] anomaly intervals)."""
  npy = _common.find_file(root, "frame_labels_ped2.npy")
  if npy:
    labels = np.load(npy).reshape(-1).astype(int).tolist()
    if len(labels) != sum(counts):
      raise ValueError(f"{npy}: {len(labels)} labels for {sum(counts)} "
                       "test frames")
    return labels
  mat = _common.find_file(root, "ped2.mat")
  if mat is None:
    raise FileNotFoundError(
        f"{root}: testing/frames needs frame labels (frame_labels_ped2.npy "
        "or ped2.mat)")
  from scipy import io as scipy_io  # pylint: disable=g-import-not-at-top
  gt = np.asarray(scipy_io.loadmat(mat)["gt"]).reshape(-1)
  if len(gt) != len(counts):
    raise ValueError(f"{mat}: {len(gt)} videos in 'gt', {len(counts)} found")
  labels = []
  for intervals, n in zip(gt, counts):
    video = np.zeros(n, int)
    for start, end in np.asarray(intervals).reshape(2, -1).T:
      video[int(start) - 1:int(end)] = 1
    labels += video.tolist()
  return labels


def _scan_ped2_frames(root, base, class_name) -> rec.ScanResult:
  """The `{training,testing}/frames/<NN>/*.jpg` form (frame labels only)."""
  out = rec.ScanResult(records=[], expects_masks=False)
  for split, folder in (("train", "training"), ("test", "testing")):
    frames = os.path.join(base, folder, "frames")
    videos = [os.path.join(frames, v) for v in _common.subdirs(frames)]
    paths = [_common.list_images(v) for v in videos]
    labels = (_ped2_frame_labels(root, [len(p) for p in paths])
              if split == "test" else [0] * sum(map(len, paths)))
    for path, label in zip((p for ps in paths for p in ps), labels):
      out.records.append(rec.Record(
          path, None, int(label), class_name,
          "anomaly" if label else rec.GOOD, "ped2", split))
  return _common.finish(out, root)


def scan_ped2(root: str, class_name: str = "pedestrian") -> rec.ScanResult:
  """UCSD Ped2 frames (root = `UCSDped2` or a folder above it), or the
  `ped2/{training,testing}/frames` form with frame-label files."""
  _common.require_dir(root)
  for base in (root, _common.find_ci(root, ("ped2",))):
    if base and os.path.isdir(os.path.join(base, "testing", "frames")):
      return _scan_ped2_frames(root, base, class_name)
  base = _common.find_ci(root, ("UCSDped2",)) or next(
      (hit for sub in _common.subdirs(root)
       if (hit := _common.find_ci(os.path.join(root, sub), ("UCSDped2",)))),
      root)
  tree = ("UCSDped2/{Train/TrainNNN, Test/TestNNN, Test/TestNNN_gt} or "
          "ped2/{training,testing}/frames/NN")
  train = _common.need_ci(base, ("Train",), tree)
  test = _common.need_ci(base, ("Test",), tree)
  out = rec.ScanResult(records=[])
  for video in _common.subdirs(train):
    out.records += [rec.Record(p, None, rec.NORMAL, class_name, rec.GOOD,
                               "ped2", "train")
                    for p in _common.list_images(os.path.join(train, video))]
  for video in _common.subdirs(test):
    if video.lower().endswith("_gt"):
      continue
    _ped2_test_video(os.path.join(test, video),
                     _common.find_ci(test, (video + "_gt",)), class_name, out)
  return _common.finish(out, root)
