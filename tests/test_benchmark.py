"""`moeclip-jax benchmark`: a tiny random-CLIP InCTRL suite end to end.

Fake MVTec-, BTAD- and VisA-layout trees, an anomaly-only target (no
normal images), a no-mask target and a missing root; resume after SIGKILL,
shards merged, --force, aggregation rules, references, LaTeX and charts.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import cli_fixtures
import data_fakes
from moeclip_jax.benchmark import execute, plan, store, suite, tables
from moeclip_jax.data import synthetic
from moeclip_jax.verbs import benchmark as verb

REPO = pathlib.Path(__file__).resolve().parents[1]
TABLES = ("summary.csv", "per_class.csv", "summary.md", "per_class.md",
          "summary.tex", "per_class.tex")


def _visa_tree(root: pathlib.Path) -> None:
  """VisA layout (split_csv/1cls.csv): 3 train normals, 2 test normals and
  2 anomalies (with masks) per class."""
  rows = [("object", "split", "label", "image", "mask")]
  for c, name in enumerate(("candle", "pcb1")):
    for i in range(7):
      anomalous = i >= 5
      kind = "Anomaly" if anomalous else "Normal"
      img = f"{name}/Data/Images/{kind}/{i:03d}.JPG"
      data_fakes.image(str(root / img), 10 * c + i, size=(40, 40))
      msk = ""
      if anomalous:
        msk = f"{name}/Data/Masks/Anomaly/{i:03d}.png"
        data_fakes.mask(str(root / msk), i, size=(40, 40))
      rows.append((name, "train" if i < 3 else "test",
                   "anomaly" if anomalous else "normal", img, msk))
  (root / "split_csv").mkdir(parents=True)
  with open(root / "split_csv" / "1cls.csv", "w") as f:
    f.write("\n".join(",".join(r) for r in rows) + "\n")


def _jsonl_tree(root: pathlib.Path, normals: bool, masks: bool) -> None:
  """A MoECLIP JSONL set from a synthetic MVTec tree: anomaly-only
  (normals=False) or without masks (masks=False)."""
  synthetic.write_mvtec_tree(str(root), ("organ",), n_train=3, n_good=2,
                             n_bad=3, size=(40, 40), seed=7)
  lines = []
  for path in sorted((root / "organ" / "test").rglob("*.png")):
    rel = path.relative_to(root).as_posix()
    good = path.parent.name == "good"
    if good and not normals:
      continue
    line = {"image_path": rel, "label": 0 if good else 1,
            "class_name": "organ"}
    if not good and masks:
      mask = root / "organ" / "ground_truth" / path.parent.name / (
          path.stem + "_mask.png")
      line["mask_path"] = mask.relative_to(root).as_posix()
    lines.append(line)
  (root / "full-shot.jsonl").write_text(
      "\n".join(json.dumps(x) for x in lines) + "\n")


SUITE = '''
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.name = "tiny"
  c.method = "inctrl"
  c.detector = "{ckpt}"
  c.prompt_draws = 1
  c.references = ["{ref}"]
  c.batch_size = 4
  prompts = ["{data}/mvtec/widget/train/good"]
  c.targets = [
      dict(name="mvtec", reader="mvtec", root="{data}/mvtec",
           prompt_draws=2),
      dict(name="btad", reader="btad", root="{data}/btad"),
      dict(name="visa", reader="visa", root="{data}/visa"),
      dict(name="endo", reader="moeclip_jsonl", root="{data}/endo",
           domain="medical", prompts=prompts),
      dict(name="headct", reader="moeclip_jsonl", root="{data}/headct",
           domain="medical", prompts=prompts),
      dict(name="gone", reader="mvtec", root="{data}/no_such_root"),
  ]
  return c
'''


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  root = tmp_path_factory.mktemp("bench")
  data = root / "data"
  synthetic.write_mvtec_tree(str(data / "mvtec"), ("widget", "gadget"),
                             n_train=4, n_good=2, n_bad=2, size=(40, 40),
                             seed=3)
  data_fakes.make_btad(str(data / "btad"))
  _visa_tree(data / "visa")
  _jsonl_tree(data / "endo", normals=False, masks=True)
  _jsonl_tree(data / "headct", normals=True, masks=False)
  ckpt = cli_fixtures.tiny_inctrl_checkpoint(root / "inctrl")
  ref = root / "ref.json"
  ref.write_text(json.dumps({"name": "toy_ref", "rows": {
      "mvtec": {"image_auroc": 50.0, "pixel_auroc": 60.0},
      "Average (all)": {"image_auroc": 55.0}}}))
  path = root / "suite.py"
  path.write_text(SUITE.format(ckpt=ckpt, data=data, ref=ref))
  out = root / "full"
  code = verb.main(["run", "--suite", str(path), "--out", str(out)])
  return {"root": root, "suite": path, "full": out, "code": code}


def _tables(out) -> dict[str, bytes]:
  return {n: (pathlib.Path(out) / "tables" / n).read_bytes() for n in TABLES}


def _csv(out, name="summary.csv") -> list[dict]:
  import csv  # pylint: disable=g-import-not-at-top
  with open(pathlib.Path(out) / "tables" / name) as f:
    return list(csv.DictReader(f))


def test_suite_end_to_end(world):
  out = world["full"]
  assert world["code"] == 1  # the missing root fails its unit
  rows = {r["target"]: r for r in _csv(out)}
  assert list(rows)[:6] == ["mvtec", "btad", "visa", "endo", "headct",
                            "gone"]
  assert rows["gone"]["status"] == "error"
  assert rows["gone"]["image_auroc"] == "error"
  for name in ("mvtec", "btad", "visa"):
    for metric in tables.METRICS:
      value = float(rows[name][metric])
      assert 0.0 <= value <= 100.0 and rows[name][metric].count(".") == 1
      assert len(rows[name][metric].split(".")[1]) == 1
  # no normals: image metrics empty; no masks: pixel metrics empty.
  assert rows["endo"]["image_auroc"] == rows["endo"]["image_ap"] == ""
  assert rows["endo"]["pixel_auroc"] != ""
  assert rows["headct"]["pixel_auroc"] == rows["headct"]["pixel_ap"] == ""
  assert rows["headct"]["image_auroc"] != ""
  # mean +- std over the two prompt draws of mvtec only.
  assert rows["mvtec"]["draws"] == "2" and rows["mvtec"]["image_auroc_std"]
  assert rows["btad"]["draws"] == "1" and rows["btad"]["image_auroc_std"] == ""
  per_class = _csv(out, "per_class.csv")
  assert {(r["target"], r["class"]) for r in per_class} >= {
      ("mvtec", "widget"), ("mvtec", "gadget"), ("btad", "01"),
      ("visa", "candle"), ("visa", "pcb1"), ("gone", "*")}
  # the store: one JSON per unit with the run's facts.
  records = store.load([out])[1]
  assert len(records) == 4 + 2 + 2 + 1 + 1 + 1
  ok = [r for r in records if r["status"] == "ok"]
  assert all(r["checkpoint_hash"] and r["timing"]["images_per_s"] > 0
             and r["version"] and r["protocol"] for r in ok)
  gone = [r for r in records if r["unit"]["target"] == "gone"]
  assert "no_such_root" in gone[0]["error"]
  assert (out / "benchmark.log").is_file()


def test_averages_follow_the_aggregation_rules(world):
  rows = {r["target"]: r for r in _csv(world["full"])}
  for metric, members in (("image_auroc", ("mvtec", "btad", "visa",
                                           "headct")),
                          ("pixel_auroc", ("mvtec", "btad", "visa",
                                           "endo"))):
    values = [float(rows[t][metric]) for t in members]
    # each target's displayed value is rounded; the mean is of the exact
    # values, so allow the rounding.
    assert abs(float(rows["Average (all)"][metric]) - np.mean(values)) <= \
        0.051
  medical = rows["Average (medical)"]
  assert medical["image_auroc"] == rows["headct"]["image_auroc"]
  assert medical["pixel_auroc"] == rows["endo"]["pixel_auroc"]
  assert rows["Average (all)"]["status"] == "partial"  # gone is left out


def test_reference_delta_columns(world):
  rows = {r["target"]: r for r in _csv(world["full"])}
  mvtec = rows["mvtec"]
  assert mvtec["image_auroc_ref"] == "50.0"
  delta = float(mvtec["image_auroc"]) - 50.0
  assert abs(float(mvtec["image_auroc_delta"]) - delta) <= 0.051
  assert mvtec["image_ap_ref"] == mvtec["image_ap_delta"] == ""
  assert rows["Average (all)"]["image_auroc_ref"] == "55.0"
  md = (world["full"] / "tables" / "summary.md").read_text()
  assert "Δ image AUROC" in md and " ± " in md


def test_latex_is_balanced_booktabs(world):
  for name in ("summary.tex", "per_class.tex"):
    tex = (world["full"] / "tables" / name).read_text()
    begin = tex.index(r"\begin{tabular}{")
    spec = tex[begin + len(r"\begin{tabular}{"):].split("}", 1)[0]
    body = tex[tex.index(r"\toprule"):tex.index(r"\bottomrule")]
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 1
    assert tex.index(r"\toprule") < tex.index(r"\midrule") < \
        tex.index(r"\bottomrule")
    lines = [ln for ln in body.splitlines() if ln.endswith(r"\\")]
    assert len(lines) >= 6
    for line in lines:
      assert line.replace(r"\&", "").count("&") == len(spec) - 1, line
      assert line.count("{") == line.count("}")
      assert line.count("$") % 2 == 0
    assert "_" not in body.replace(r"\_", "")


def test_charts_are_non_trivial_pngs(world):
  charts = sorted((world["full"] / "charts").glob("*.png"))
  assert {p.stem for p in charts} >= {"image_auroc", "pixel_auroc"}
  image = np.asarray(Image.open(world["full"] / "charts" /
                                "image_auroc.png").convert("RGB"))
  assert image.shape[0] > 100 and image.shape[1] > 300
  colours = {tuple(c) for c in image.reshape(-1, 3)[::7]}
  assert len(colours) > 3
  assert (image == (52, 101, 164)).all(-1).sum() > 200  # "ours" bars


def test_rerun_skips_force_redoes_and_tables_match(world, tmp_path):
  before = _tables(world["full"])
  records = {r["uid"]: r for r in store.load([world["full"]])[1]}
  outcome = execute.run(suite.load(str(world["suite"])),
                        execute.RunOptions(out=str(world["full"])))
  assert outcome.done == 0 and outcome.skipped == 11 - 1
  assert _tables(world["full"]) == before
  outcome = execute.run(suite.load(str(world["suite"])),
                        execute.RunOptions(out=str(world["full"]),
                                           force=True))
  assert outcome.done == 10 and outcome.skipped == 0
  again = {r["uid"]: r for r in store.load([world["full"]])[1]}
  assert all(again[k]["timing"] != records[k]["timing"]
             for k in again if again[k]["status"] == "ok")
  assert _tables(world["full"]) == before


def test_resume_after_sigkill_gives_byte_identical_tables(world, tmp_path):
  out = tmp_path / "killed"
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      [str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
  proc = subprocess.Popen(
      [sys.executable, "-m", "moeclip_jax.benchmark", "run", "--suite",
       str(world["suite"]), "--out", str(out)], env=env,
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  units = store.units_dir(out)
  while time.time() < deadline and proc.poll() is None:
    if units.is_dir() and len(list(units.glob("*.json"))) >= 3:
      break
    time.sleep(0.05)
  assert proc.poll() is None, "the run ended before it could be killed"
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  finished = len(list(units.glob("*.json")))
  assert 3 <= finished < 11
  code = verb.main(["run", "--suite", str(world["suite"]), "--out",
                    str(out)])
  assert code == 1
  assert _tables(out) == _tables(world["full"])


def test_two_shards_merged_equal_one_run(world, tmp_path, monkeypatch):
  """Shard 0 by --shard 0/2, shard 1 as task 8 of `sbatch --array=7-8`
  with --shard auto and {shard} in --out."""
  halves = [tmp_path / "s0", tmp_path / "s1"]
  verb.main(["run", "--suite", str(world["suite"]), "--out", str(halves[0]),
             "--shard", "0/2"])
  monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "8")
  monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "7")
  monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
  verb.main(["run", "--suite", str(world["suite"]), "--out",
             str(tmp_path / "s{shard}"), "--shard", "auto"])
  counts = [len(store.load([h])[1]) for h in halves]
  assert sum(counts) == 11 and min(counts) > 0
  merged = tmp_path / "merged"
  assert verb.main(["report", *sum([["--out", str(h)] for h in halves], []),
                    "--to", str(merged)]) == 1
  assert _tables(merged) == _tables(world["full"])
  assert verb.main(["merge", "--out", str(halves[0]), "--out",
                    str(halves[1]), "--to", str(tmp_path / "m2")]) == 1
  assert _tables(tmp_path / "m2") == _tables(world["full"])


def test_dry_run_lists_units_and_missing(world, tmp_path, capsys):
  out = tmp_path / "dry"
  assert verb.main(["run", "--suite", str(world["suite"]), "--out", str(out),
                    "--dry-run"]) == 0
  text = capsys.readouterr().out
  assert "11 unit(s)" in text and "tiny/visa/candle" in text
  assert "no_such_root" in text
  assert not out.exists()


def test_auto_shard_rules(monkeypatch):
  assert plan.array_shard({}) is None
  assert plan.array_shard({"SLURM_ARRAY_TASK_ID": "3",
                           "SLURM_ARRAY_TASK_COUNT": "4"}) == (3, 4)
  with pytest.raises(ValueError, match="contiguous"):
    plan.array_shard({"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_MIN": "0",
                      "SLURM_ARRAY_TASK_COUNT": "4"})
  for var in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"):
    monkeypatch.delenv(var, raising=False)
  # One process, no cluster variables: the whole suite.
  assert verb._auto_shard("off") == (0, 1)  # pylint: disable=protected-access


# ---- suites --------------------------------------------------------------------
def test_presets_load_and_overrides_apply():
  for name in suite.PRESETS:
    config = suite.load(name)
    assert config.targets and config.name == name
  config = suite.load("moeclip_zsad13", ["targets.mvtec.root=/x/mvtec",
                                         "detector.visa=ck/m"])
  target = [t for t in config.targets if t["name"] == "mvtec"][0]
  assert target["root"] == "/x/mvtec"
  assert suite.detector_folder(config, "visa", None) == "ck/m"
  assert suite.detector_folder(config, "btad", None) == \
      "runs/moeclip_visa/detector"
  assert len(config.targets) == 14
  inctrl = suite.load("inctrl_fewshot")
  assert suite.target_shots(inctrl, inctrl.targets[0]) == [2, 4, 8]
  assert suite.detector_folder(inctrl, "visa", 4) == "ckpt/inctrl_mvtec/4"


def test_bad_suites_are_clear_errors(tmp_path, capsys):
  path = tmp_path / "bad.py"
  path.write_text("def get_config():\n  return dict(name='x', method="
                  "'moeclip', detector='d', colour=1, targets=[dict("
                  "name='a', reader='folder', root='r', shots=2, "
                  "speed=3)])\n")
  with pytest.raises(suite.SuiteError, match="colour"):
    suite.load(str(path))
  path.write_text(path.read_text().replace("colour=1, ", ""))
  with pytest.raises(suite.SuiteError, match="speed"):
    suite.load(str(path))
  path.write_text(path.read_text().replace(", speed=3", ""))
  with pytest.raises(suite.SuiteError, match="shots"):  # not a MoECLIP option
    suite.load(str(path))
  assert verb.main(["run", "--suite", str(path), "--out",
                    str(tmp_path / "o")]) == 2
  assert "shots" in capsys.readouterr().err
  assert verb.main(["run", "--suite", "no_such_preset", "--out",
                    str(tmp_path / "o")]) == 2
  with pytest.raises(suite.SuiteError, match="unknown key"):
    suite.load("moeclip_zsad13", ["targets.mvtec.colour=1"])
  with pytest.raises(ValueError, match="I/N"):
    plan.parse_shard("2/2")


# ---- aggregation rules on hand-made units --------------------------------------
def _unit(target, cls, metrics, domain="industrial", draw=0, normal=2,
          masked=2, status="ok", t_index=0, c_index=0, shots=None):
  return {"uid": f"s/{target}/{cls}/k{shots}/d{draw}", "status": status,
          "unit": {"suite": "s", "target": target, "class": cls,
                   "shots": shots, "draw": draw},
          "metrics": metrics, "domain": domain, "target_index": t_index,
          "class_index": c_index,
          "counts": {"images": 4, "normal": normal, "anomalous": 2,
                     "masked": masked}}


def test_aggregation_drops_sets_without_normals_or_masks():
  m = lambda a, p: {"image_auroc": a, "image_ap": a, "pixel_auroc": p,
                    "pixel_ap": p, "pixel_aupro": None}
  units = [
      _unit("a", "x", m(0.9, 0.8), t_index=0),
      _unit("a", "y", m(0.7, 0.6), t_index=0, c_index=1),
      # released protocol writes 0.0 for single-label classes: dropped.
      _unit("colon", "c", m(0.0, 0.95), "medical", normal=0, t_index=1),
      _unit("head", "h", m(0.85, 0.0), "medical", masked=0, t_index=2),
      _unit("bad", "*", {}, status="error", t_index=3),
  ]
  rows = {r.target: r for r in tables.summary_rows(units)}
  assert rows["a"].mean["image_auroc"] == pytest.approx(80.0)
  assert rows["colon"].mean["image_auroc"] is None
  assert rows["head"].mean["pixel_auroc"] is None
  avg = rows["Average (all)"]
  assert avg.mean["image_auroc"] == pytest.approx((80.0 + 85.0) / 2)
  assert avg.mean["pixel_auroc"] == pytest.approx((70.0 + 95.0) / 2)
  assert avg.mean["pixel_aupro"] is None and avg.status == "partial"
  assert rows["Average (medical)"].mean["image_auroc"] == pytest.approx(85.0)
  csv_text = tables.to_csv(list(rows.values()))
  bad = [ln for ln in csv_text.splitlines() if ln.startswith("bad,")][0]
  assert "error" in bad
  colon = [ln for ln in csv_text.splitlines() if ln.startswith("colon,")][0]
  assert colon.split(",")[5:7] == ["", ""]  # empty, never 0


def test_draws_mean_and_std_and_shots_rows():
  m = lambda a: {"image_auroc": a, "image_ap": a, "pixel_auroc": a,
                 "pixel_ap": a, "pixel_aupro": a}
  units = [_unit("v", "c", m(v), draw=d, shots=k)
           for k, vals in ((2, (0.80, 0.90)), (4, (0.85, 0.95)))
           for d, v in enumerate(vals)]
  rows = tables.summary_rows(units)
  by = {(r.target, r.shots): r for r in rows}
  assert by[("v", 2)].mean["image_auroc"] == pytest.approx(85.0)
  assert by[("v", 2)].std["image_auroc"] == pytest.approx(5.0)
  assert by[("Average (all)", 4)].mean["image_auroc"] == pytest.approx(90.0)
  tables.add_deltas(rows, {"rows": {"v@k2": {"image_auroc": 80.0},
                                    "v": {"image_auroc": 70.0}}}, {})
  assert by[("v", 2)].delta["image_auroc"] == pytest.approx(5.0)
  assert by[("v", 4)].delta["image_auroc"] == pytest.approx(20.0)
  md = tables.to_markdown(rows)
  assert "85.0 ± 5.0" in md and "| K |" in md


def test_shipped_references_match_the_specs():
  from moeclip_jax.benchmark import references  # pylint: disable=g-import-not-at-top
  paper = references.load("moeclip_paper")["rows"]
  image = [v["image_auroc"] for k, v in paper.items()
           if "image_auroc" in v and not k.startswith("Average")]
  pixel = [v["pixel_auroc"] for k, v in paper.items()
           if "pixel_auroc" in v and not k.startswith("Average")]
  assert len(image) == 9 and len(pixel) == 13
  assert np.mean(image) == pytest.approx(89.56, abs=0.01)  # spec §9 check
  assert np.mean(pixel) == pytest.approx(94.25, abs=0.01)
  assert references.load("inctrl_paper")["rows"]["visa@k8"][
      "image_auroc"] == 88.7
  with pytest.raises(ValueError, match="no reference table"):
    references.load("nope")


TRAIN_SUITE = '''
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.name = "trained"
  c.method = "moeclip"
  c.batch_size = 4
  c.train = dict(name="src", config="{config}",
                 overrides={{"data": {{"root": "{data}/src"}}, "total_steps": 3,
                            "ckpt_every": 3, "batch_size": 8}})
  c.targets = [dict(name="t1", reader="mvtec", root="{data}/t1"),
               dict(name="t2", reader="mvtec", root="{data}/t2")]
  return c
'''


def test_train_spec_trains_once_and_serves_every_target(tmp_path):
  data = tmp_path / "data"
  for name, seed in (("src", 1), ("t1", 2), ("t2", 3)):
    synthetic.write_mvtec_tree(str(data / name), ("thing",), n_train=4,
                               n_good=2, n_bad=2, size=(40, 40), seed=seed)
  path = tmp_path / "suite.py"
  path.write_text(TRAIN_SUITE.format(
      config=REPO / "configs" / "moeclip_tiny.py", data=data))
  out = tmp_path / "out"
  assert verb.main(["run", "--suite", str(path), "--out", str(out)]) == 0
  detector = out / "train" / "src" / "detector"
  assert (detector / "config.json").is_file()
  records = store.load([out])[1]
  assert sorted(r["unit"]["target"] for r in records) == ["t1", "t2"]
  assert all(r["status"] == "ok" and r["checkpoint_hash"] for r in records)
  assert len({r["checkpoint_hash"] for r in records}) == 1  # one training
  stamp = (detector / "config.json").stat().st_mtime_ns
  before = _tables(out)
  outcome = execute.run(suite.load(str(path)),
                        execute.RunOptions(out=str(out)))
  assert outcome.done == 0 and outcome.skipped == 2
  assert (detector / "config.json").stat().st_mtime_ns == stamp  # not retrained
  assert _tables(out) == before


def test_docs_list_every_suite_key():
  text = (REPO / "docs" / "benchmark.md").read_text()
  for keys in (suite.SUITE_KEYS, suite.TARGET_KEYS, suite.TRAIN_KEYS):
    for key in keys:
      assert f"| `{key}` |" in text, key
  for preset in suite.PRESETS:
    assert f"`{preset}`" in text, preset
