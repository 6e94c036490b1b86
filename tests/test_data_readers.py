"""Readers: every layout on a tiny fake tree, ELPV from the real package."""

import collections
import json
import os

import data_fakes
import numpy as np
from PIL import Image
import pytest

from moeclip_jax.data import checks
from moeclip_jax.data import class_names
from moeclip_jax.data import readers
from moeclip_jax.data import records as rec


@pytest.mark.parametrize("name", sorted(data_fakes.MAKERS))
def test_reader_finds_every_record(tmp_path, name):
  expected = data_fakes.MAKERS[name](str(tmp_path))
  scan = readers.scan(name, str(tmp_path))
  assert len(scan.records) == expected
  assert not scan.issues
  report = checks.check(scan)
  assert not report.issues, [str(i) for i in report.issues]
  assert len(report.kept) == expected
  for r in scan.records:
    assert os.path.isfile(r.image_path)
    assert r.split in ("train", "test")
    assert (r.defect_type == rec.GOOD) == (r.label == rec.NORMAL)
    if r.mask_path is not None:
      assert os.path.isfile(r.mask_path) and r.label == rec.ANOMALOUS


def test_mvtec_fields(tmp_path):
  data_fakes.make_mvtec(str(tmp_path))
  scan = readers.scan("mvtec", str(tmp_path))
  by_key = collections.Counter(
      (r.class_name, r.split, r.defect_type) for r in scan.records)
  assert by_key[("bottle", "train", "good")] == 2
  assert by_key[("cable", "test", "crack")] == 2
  crack = [r for r in scan.records if r.defect_type == "crack"]
  assert all(r.mask_path.endswith("_mask.png") for r in crack)
  assert {r.dataset for r in scan.records} == {"mvtec"}


def test_btad_masks_without_suffix_and_bmp(tmp_path):
  data_fakes.make_btad(str(tmp_path))
  scan = readers.scan("btad", str(tmp_path))
  bad = [r for r in scan.records if r.label]
  assert bad and all(r.mask_path.endswith(".bmp") for r in bad)
  assert {r.class_name for r in scan.records} == {"01", "03"}


def test_visa_split_and_labels(tmp_path):
  data_fakes.make_visa(str(tmp_path))
  scan = readers.scan("visa", str(tmp_path))
  c = collections.Counter((r.split, r.label) for r in scan.records)
  assert c == {("train", 0): 2, ("test", 0): 2, ("test", 1): 2}


def test_label_from_mask_layouts(tmp_path):
  data_fakes.make_ksdd(str(tmp_path / "k"))
  data_fakes.make_rsdd(str(tmp_path / "r"))
  ksdd = readers.scan("ksdd", str(tmp_path / "k"))
  rsdd = readers.scan("rsdd", str(tmp_path / "r"))
  assert sorted(r.label for r in ksdd.records) == [0, 0, 1, 1]
  assert sorted(r.label for r in rsdd.records) == [0, 1, 1]
  assert all((r.mask_path is None) == (r.label == 0) for r in rsdd.records)


def test_metadata_layouts(tmp_path):
  data_fakes.make_inctrl_json(str(tmp_path / "i"))
  inctrl = readers.scan("inctrl_json", str(tmp_path / "i"))
  c = collections.Counter((r.split, r.label) for r in inctrl.records)
  assert c == {("test", 0): 2, ("test", 1): 2, ("train", 0): 2}
  # MVTec-style masks are attached to InCTRL test anomalies when present.
  assert all(r.mask_path for r in inctrl.records if r.label)
  data_fakes.make_meta_json(str(tmp_path / "m"))
  meta = readers.scan("meta_json", str(tmp_path / "m"))
  assert [r.defect_type for r in meta.records if r.label] == ["crack"]


def test_moeclip_jsonl_bad_line_is_reported(tmp_path):
  data_fakes.make_moeclip_jsonl(str(tmp_path))
  with open(tmp_path / "full-shot.jsonl", "a") as f:
    f.write("\n" + json.dumps({"image_path": "x.png", "label": 3,
                               "class_name": "bottle"}))
  scan = readers.scan("moeclip_jsonl", str(tmp_path))
  assert len(scan.records) == 4
  assert len(scan.issues) == 1 and "full-shot.jsonl:5" in scan.issues[0].path


def test_folder_defect_subfolders(tmp_path):
  data_fakes.make_folder(str(tmp_path))
  scan = readers.scan("folder", str(tmp_path), class_name="widget")
  types = collections.Counter(r.defect_type for r in scan.records)
  assert types == {"good": 3, "anomaly": 2, "scratch": 1}
  assert all(r.mask_path for r in scan.records if r.label)
  assert {r.class_name for r in scan.records} == {"widget"}


def test_elpv_inctrl_rule_from_package():
  scan = readers.scan("elpv", None)
  c = collections.Counter((r.split, r.label) for r in scan.records)
  # labels.csv: 1508 cells with p=0, 715 with p=1, 401 with p=1/3 or 2/3.
  assert c[("train", 0)] == 1131 and c[("test", 0)] == 377
  assert c[("test", 1)] == 715 and ("train", 1) not in c
  assert {r.defect_type for r in scan.records if r.label} == {"mono", "poly"}
  assert "401" in scan.notes[0]
  again = readers.scan("elpv", None)
  assert [r.image_path for r in again.records] == [
      r.image_path for r in scan.records]  # random_state=42: stable


def test_elpv_threshold_rule_keeps_everything():
  scan = readers.scan("elpv", None, label_rule="threshold:0.5")
  assert len(scan.records) == 2624
  assert sum(r.label for r in scan.records) == 715 + 106  # p=1 and p=2/3
  with pytest.raises(ValueError, match="label_rule"):
    readers.scan("elpv", None, label_rule="majority")


def test_unknown_layout_names_the_known_ones():
  with pytest.raises(KeyError, match="mvtec"):
    readers.scan("mvtek", "/tmp")


def test_prompt_nouns_are_data():
  assert class_names.prompt_noun("moeclip", "mvtec", "bottle") == "dark bottle"
  assert class_names.prompt_noun("moeclip", "visa", "macaroni1") == "macaroni"
  assert class_names.prompt_noun("moeclip", "mvtec", "metal_nut") == "metal nut"
  assert class_names.prompt_noun("moeclip", "btad", "02") == "product"
  assert class_names.prompt_noun("inctrl", "ksdd", "SDD") == "SDD"
  assert class_names.prompt_noun("moeclip", "x", "brand_new") == "brand new"


def test_ksdd_inctrl_slices(tmp_path):
  root = str(tmp_path)
  for k in range(4):
    data_fakes.image(f"{root}/kos{k:02d}/Part0.jpg", k)  # 12 x 16
    mask = np.zeros((12, 16), np.uint8)
    if k == 0:
      mask[5:7, 3:6] = 255  # only in the middle band (rows 4..7)
    Image.fromarray(mask).save(f"{root}/kos{k:02d}/Part0_label.bmp")
  scan = readers.scan("ksdd", root, slices=3, split_normals=True,
                      class_name="SDD")
  assert len(scan.records) == 12
  bad = [r for r in scan.records if r.label]
  assert len(bad) == 1 and bad[0].crop == (0, 4, 16, 8)
  assert bad[0].split == "test"
  c = collections.Counter((r.split, r.label) for r in scan.records)
  assert c[("train", 0)] == 8 and c[("test", 0)] == 3  # 11 normals, 75/25
  assert not checks.check(scan).issues
