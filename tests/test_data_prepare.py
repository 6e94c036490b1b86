"""`data prepare NAME --root RAW --out DIR` (issue #19): the papers'
preprocessing (SDD slices, AITEX tiles, LOCO merged masks) written as an
MVTec-style tree with peers' metadata, deterministic, idempotent, atomic."""

import collections
import json
import os

import data_fakes
import numpy as np
from PIL import Image
import pytest
import zoo_fakes

from moeclip_jax.data import images, materialise, readers
from moeclip_jax.verbs import data as cli


def _sdd_raw(root, parts=4):
  """KolektorSDD v1: kosNN/Part0.jpg + Part0_label.bmp, 12x16 images; the
  mask of kos00 touches the middle band only, kos01 the bottom band."""
  for k in range(parts):
    data_fakes.image(f"{root}/kos{k:02d}/Part0.jpg", k)
    mask = np.zeros((12, 16), np.uint8)
    if k == 0:
      mask[5:7, 3:6] = 255
    if k == 1:
      mask[9:12, 0:2] = 255
    Image.fromarray(mask).save(f"{root}/kos{k:02d}/Part0_label.bmp")


def _prepare(name, raw, out, *extra):
  return cli.main(["prepare", name, "--root", str(raw), "--out", str(out),
                   *extra])


def test_sdd_slices_give_the_counts_and_masks_of_the_rule(tmp_path):
  raw, out = tmp_path / "raw", tmp_path / "sdd"
  _sdd_raw(str(raw))
  assert _prepare("ksdd", raw, out) == 0
  scan = readers.scan("mvtec", str(out))
  assert {r.class_name for r in scan.records} == {"SDD"}
  c = collections.Counter((r.split, r.label) for r in scan.records)
  # 4 images x 3 slices = 12; 2 slices touch a mask; 10 normals 75/25.
  assert c == {("train", 0): 7, ("test", 0): 3, ("test", 1): 2}
  for r in scan.records:
    assert images.image_size(r.image_path) == (4, 16)
  bad = sorted((r for r in scan.records if r.label),
               key=lambda r: r.image_path)
  got = [images.load_mask(r.mask_path) for r in bad]
  want0 = np.zeros((4, 16), np.uint8)
  want0[1:3, 3:6] = 255
  want1 = np.zeros((4, 16), np.uint8)
  want1[1:4, 0:2] = 255
  assert sorted(g.tobytes() for g in got) == sorted(
      w.tobytes() for w in (want0, want1))
  # The peers' metadata files read back to the same records.
  meta = readers.scan("meta_json", str(out))
  assert len(meta.records) == 12
  jsonl = readers.scan("moeclip_jsonl", str(out))
  assert len(jsonl.records) == 5 and sum(r.label for r in jsonl.records) == 2
  assert {os.path.realpath(r.mask_path) for r in jsonl.records if r.label} \
      == {os.path.realpath(r.mask_path) for r in bad}


def test_rerun_verifies_and_a_changed_file_is_named(tmp_path, capsys):
  raw, out = tmp_path / "raw", tmp_path / "sdd"
  _sdd_raw(str(raw))
  assert _prepare("ksdd", raw, out) == 0
  manifest = json.loads((out / materialise.MANIFEST).read_text())
  some = sorted(manifest["files"])[0]
  before = os.stat(out / some).st_mtime_ns
  capsys.readouterr()
  assert _prepare("ksdd", raw, out) == 0
  assert "verified" in capsys.readouterr().out
  assert os.stat(out / some).st_mtime_ns == before
  (out / some).write_bytes(b"changed")
  assert _prepare("ksdd", raw, out) == 1
  assert some in capsys.readouterr().err
  assert _prepare("ksdd", raw, out, "--overwrite") == 0
  assert json.loads((out / materialise.MANIFEST).read_text()) == manifest
  # Other options = other input: refused without --overwrite.
  assert _prepare("ksdd", raw, out, "--option", "slices=1") == 1


def test_prepare_is_deterministic(tmp_path):
  raw = tmp_path / "raw"
  zoo_fakes.make_aitex(str(raw))
  assert _prepare("aitex", raw, tmp_path / "a") == 0
  assert _prepare("aitex", raw, tmp_path / "b") == 0
  a = (tmp_path / "a" / materialise.MANIFEST).read_text()
  assert a == (tmp_path / "b" / materialise.MANIFEST).read_text()


def test_aitex_tiles_are_written_with_their_masks(tmp_path):
  raw, out = tmp_path / "raw", tmp_path / "aitex"
  zoo_fakes.make_aitex(str(raw))
  assert _prepare("aitex", raw, out) == 0
  scan = readers.scan("mvtec", str(out))
  assert {r.class_name for r in scan.records} == {"AITEX"}
  bad = [r for r in scan.records if r.label]
  assert len(bad) == 3 and len(scan.records) == 8 + 3
  assert {r.defect_type for r in bad} == {"Broken_end"}
  for r in scan.records:
    assert images.image_size(r.image_path) == (256, 256)
  full = images.load_mask(str(raw / "Mask_images" / "0001_002_00_mask.png"))
  pixels = sorted(int(images.load_mask(r.mask_path).sum() // 255)
                  for r in bad)
  want = sorted(int(full[:, x:x + 256].sum() // 255) for x in (256, 512, 768))
  assert pixels == want


def test_loco_masks_are_merged_into_one_file(tmp_path):
  raw, out = tmp_path / "raw", tmp_path / "loco"
  zoo_fakes.make_mvtec_loco(str(raw))
  assert _prepare("mvtec_loco", raw, out) == 0
  scan = readers.scan("mvtec", str(out))
  bad = [r for r in scan.records if r.label]
  assert len(bad) == 2
  for r in bad:
    src = raw / "breakfast_box" / "ground_truth" / r.defect_type / "000"
    np.testing.assert_array_equal(images.load_mask(r.mask_path),
                                  images.load_mask(str(src)))


def test_a_failed_build_leaves_nothing(tmp_path, monkeypatch):
  raw, out = tmp_path / "raw", tmp_path / "sdd"
  _sdd_raw(str(raw))
  calls = []

  def failing(*args):
    calls.append(1)
    if len(calls) == 3:
      raise OSError("disk full")
    return real(*args)

  real = materialise._write_one
  monkeypatch.setattr(materialise, "_write_one", failing)
  with pytest.raises(OSError):
    _prepare("ksdd", raw, out)
  assert sorted(os.listdir(tmp_path)) == ["raw"]


def test_meta_only_names_the_original_files(tmp_path):
  raw, out = tmp_path / "raw", tmp_path / "meta"
  n = data_fakes.make_mvtec(str(raw))
  assert _prepare("mvtec", raw, out, "--meta-only") == 0
  assert sorted(os.listdir(out)) == ["full-shot.jsonl", "meta.json"]
  meta = readers.scan("meta_json", str(out))
  original = readers.scan("mvtec", str(raw))
  key = lambda r: (os.path.realpath(r.image_path), r.label, r.split,
                   r.mask_path and os.path.realpath(r.mask_path))
  assert sorted(map(key, meta.records)) == sorted(map(key, original.records))
  assert len(meta.records) == n


def test_inspect_reports_counts_sizes_modes_and_faults(tmp_path, capsys):
  root = tmp_path / "bmad"
  zoo_fakes.make_bmad(str(root))
  os.remove(root / "test" / "Ungood" / "label" / "00001.png")  # missing mask
  (root / "test" / "good" / "img" / "00000.png").write_bytes(b"broken")
  rc = cli.main(["inspect", "bmad", "--root", str(root), "--check",
                 "--json", str(tmp_path / "r.json")])
  out = capsys.readouterr().out
  assert rc == 1
  assert "test: 4 images, 2 normal, 2 anomalous, masks 1/2" in out
  assert "  bmad: 3 (3 normal, 0 anomalous, masks 0/0)" in out
  assert "image sizes: 16x12 x6" in out and "image modes: RGB x6" in out
  bad_lines = [l for l in out.splitlines() if l.startswith("BAD ")]
  assert any("00001.png: no mask in" in l for l in bad_lines)
  assert any("00000.png: unreadable" in l for l in bad_lines)
  summary = json.loads((tmp_path / "r.json").read_text())
  area = summary["groups"]["test/bmad"]["mask_area"]
  assert area["min"] == pytest.approx(9 / (12 * 16))


def test_inspect_says_when_image_metrics_will_be_empty(tmp_path, capsys):
  zoo_fakes.make_pranet(str(tmp_path))
  assert cli.main(["inspect", "cvc_300", "--root", str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert "no normal test images" in out
  assert "  Colon_cvc300: 3 (0 normal, 3 anomalous, masks 3/3)" in out
