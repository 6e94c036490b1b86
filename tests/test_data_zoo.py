"""Dataset-zoo readers (issue #19): each reads its fake tree, built from the
distributor's documented structure, into the right records, and names the
path when the tree is wrong."""

import collections
import os

import numpy as np
import pytest
import zoo_fakes

from moeclip_jax.data import checks, images, readers
from moeclip_jax.data import records as rec


def _scan(name, tmp_path):
  facts = zoo_fakes.MAKERS[name](str(tmp_path))
  return facts, readers.scan(name, facts.get("root", str(tmp_path)))


@pytest.mark.parametrize("name", sorted(zoo_fakes.MAKERS))
def test_zoo_reader_reads_its_tree(tmp_path, name):
  facts, scan = _scan(name, tmp_path)
  assert not scan.issues, [str(i) for i in scan.issues]
  assert len(scan.records) == facts["n"]
  assert sum(r.label for r in scan.records) == facts["anomalous"]
  assert sum(r.mask_path is not None for r in scan.records) == facts["masks"]
  assert {r.split for r in scan.records} == facts["splits"]
  assert scan.expects_masks == (facts["masks"] > 0)
  for r in scan.records:
    assert (r.defect_type == rec.GOOD) == (r.label == rec.NORMAL)
    assert r.mask_path is None or r.label == rec.ANOMALOUS
  report = checks.check(scan)
  assert not report.issues, [str(i) for i in report.issues]


@pytest.mark.parametrize("name", sorted(zoo_fakes.MAKERS))
def test_zoo_reader_names_the_path_of_a_wrong_tree(tmp_path, name):
  wrong = tmp_path / "not_a_dataset"
  (wrong / "something_else").mkdir(parents=True)
  try:
    scan = readers.scan(name, str(wrong))
  except FileNotFoundError as e:
    assert str(wrong) in str(e)
    return
  assert scan.issues and str(wrong) in str(scan.issues[0])
  assert not scan.records


def test_anomaly_only_sets_say_image_metrics_are_empty(tmp_path):
  _, scan = _scan("kvasir_seg", tmp_path)
  assert not scan.image_level
  assert any("no normal test images" in n for n in scan.notes)
  _, head = _scan("head_ct", tmp_path / "h")
  assert head.image_level and not head.expects_masks
  assert any("no masks" in n for n in head.notes)


def test_bmad_ungood_masks_and_layout(tmp_path):
  _, scan = _scan("bmad", tmp_path)
  bad = [r for r in scan.records if r.label]
  assert all(r.mask_path.endswith(os.path.join("Ungood", "label",
                                               os.path.basename(r.image_path)))
             for r in bad)
  assert not any("valid" in r.image_path for r in scan.records)
  c = collections.Counter((r.split, r.label) for r in scan.records)
  assert c == {("train", 0): 3, ("test", 0): 2, ("test", 1): 2}
  with_valid = readers.scan("bmad", str(tmp_path), include_valid=True)
  assert len(with_valid.records) == len(scan.records) + 1


def test_brain_mri_reads_bmad_and_kaggle_forms(tmp_path):
  zoo_fakes.make_bmad(str(tmp_path / "bmad"))
  bmad = readers.scan("brain_mri", str(tmp_path / "bmad"))
  assert {r.class_name for r in bmad.records} == {"brain"}
  assert bmad.expects_masks
  _, kaggle = _scan("brain_mri", tmp_path / "k")
  c = collections.Counter((r.split, r.label) for r in kaggle.records)
  assert c == {("train", 0): 3, ("test", 0): 1, ("test", 1): 3}


def test_head_ct_labels_and_inctrl_split(tmp_path):
  _, scan = _scan("head_ct", tmp_path)
  by_stem = {os.path.basename(r.image_path): r.label for r in scan.records}
  assert by_stem == {"000.png": 1, "001.png": 1, "002.png": 1,
                     "003.png": 0, "004.png": 0, "005.png": 0}
  inctrl = readers.scan("head_ct", str(tmp_path), split_normals=True)
  c = collections.Counter((r.split, r.label) for r in inctrl.records)
  assert c == {("train", 0): 2, ("test", 0): 1, ("test", 1): 3}


def test_clinicdb_prefers_png_and_isic_segmentation_suffix(tmp_path):
  _, scan = _scan("cvc_clinicdb", tmp_path)
  assert all(f"{os.sep}PNG{os.sep}" in r.image_path for r in scan.records)
  _, isic = _scan("isic2016", tmp_path / "i")
  assert all(r.mask_path.endswith("_Segmentation.png") for r in isic.records)


def test_loco_masks_are_merged_per_image(tmp_path):
  _, scan = _scan("mvtec_loco", tmp_path)
  bad = [r for r in scan.records if r.label]
  assert {r.defect_type for r in bad} == {"logical_anomalies",
                                          "structural_anomalies"}
  r = bad[0]
  assert os.path.isdir(r.mask_path)
  parts = [images.load_mask(os.path.join(r.mask_path, n))
           for n in ("000.png", "001.png")]
  merged = images.load_mask(r.mask_path)
  np.testing.assert_array_equal(merged, np.maximum(*parts))
  assert merged.sum() > parts[0].sum()


def test_dagm_labels_txt_and_fallback(tmp_path):
  _, scan = _scan("dagm", tmp_path)
  bad = [r for r in scan.records if r.label]
  assert all(os.path.basename(r.image_path) == "0003.PNG" for r in bad)
  os.remove(tmp_path / "Class1" / "Train" / "Label" / "Labels.txt")
  again = readers.scan("dagm", str(tmp_path))
  assert sum(r.label for r in again.records) == 4


def test_aitex_tiles_follow_inctrl_rule(tmp_path):
  zoo_fakes.make_aitex(str(tmp_path))
  scan = readers.scan("aitex", str(tmp_path), tile=256)
  normals = [r for r in scan.records if not r.label]
  bad = [r for r in scan.records if r.label]
  assert len(normals) == 2 * 4  # every tile of the normal images
  assert sorted(r.crop for r in bad) == [
      (256, 0, 512, 256), (512, 0, 768, 256), (768, 0, 1024, 256)]
  assert {r.defect_type for r in bad} == {"Broken_end"}
  c = collections.Counter(r.split for r in normals)
  assert c == {"train": 6, "test": 2}  # 75/25
  assert all(r.split == "test" for r in bad)


def test_ped2_frame_labels_come_from_gt_masks(tmp_path):
  facts, scan = _scan("ped2", tmp_path)
  test = sorted((r for r in scan.records if r.split == "test"),
                key=lambda r: r.image_path)
  assert [r.label for r in test] == [0, 1, 1]
  assert readers.scan("ped2", str(tmp_path)).records  # parent root works


def test_realiad_single_view_json(tmp_path):
  _, scan = _scan("realiad", tmp_path)
  bad = [r for r in scan.records if r.label]
  assert len(bad) == 1 and bad[0].defect_type == "HS"
  assert os.path.isfile(bad[0].mask_path)
  assert {r.class_name for r in scan.records} == {"audiojack"}


def test_realiad_prefers_single_view_jsons_inside_the_archive_folder(tmp_path):
  zoo_fakes.make_realiad(str(tmp_path))
  nested = tmp_path / "realiad_jsons"
  nested.mkdir()
  os.rename(tmp_path / "realiad_jsons_sv", nested / "realiad_jsons_sv")
  (nested / "realiad_jsons").mkdir()  # multi-view: must not be chosen
  (nested / "realiad_jsons" / "audiojack.json").write_text(
      '{"meta": {"normal_class": "OK"}, "train": [], "test": []}')
  scan = readers.scan("realiad", str(tmp_path))
  assert len(scan.records) == 3


@pytest.mark.parametrize("labels", ["npy", "mat"])
def test_ped2_frames_form_with_frame_label_files(tmp_path, labels):
  from scipy import io as scipy_io  # pylint: disable=g-import-not-at-top
  import data_fakes  # pylint: disable=g-import-not-at-top
  base = tmp_path / "ped2"
  for v in ("01", "02"):
    for i in range(3):
      data_fakes.image(f"{base}/training/frames/{v}/{i:03d}.jpg", i)
      data_fakes.image(f"{base}/testing/frames/{v}/{i:03d}.jpg", 10 + i)
  want = [0, 1, 1, 1, 0, 0]  # video 01 frames 2-3, video 02 frame 1
  if labels == "npy":
    np.save(tmp_path / "frame_labels_ped2.npy", np.asarray([want]))
  else:
    gt = np.empty((1, 2), object)
    gt[0, 0], gt[0, 1] = np.array([[2], [3]]), np.array([[1], [1]])
    scipy_io.savemat(str(tmp_path / "ped2.mat"), {"gt": gt})
  scan = readers.scan("ped2", str(tmp_path))
  test = [r for r in scan.records if r.split == "test"]
  assert [r.label for r in test] == want
  assert sum(r.split == "train" for r in scan.records) == 6
  assert not scan.expects_masks


def test_bmad_doubled_split_level(tmp_path):
  zoo_fakes.make_bmad(str(tmp_path / "x"))
  os.makedirs(tmp_path / "RESC" / "Test")
  os.rename(tmp_path / "x" / "test", tmp_path / "RESC" / "Test" / "test")
  os.rename(tmp_path / "x" / "train", tmp_path / "RESC" / "train")
  scan = readers.scan("retina_oct", str(tmp_path / "RESC"))
  assert len(scan.records) == 7 and not scan.issues
