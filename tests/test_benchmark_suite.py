"""benchmarks/suite.py plumbing on its tiny setting: every row has the
measured fields, "auto" resolves to this backend's dtype, efficiency uses
the GEMM rate measured in the run, the JSON / markdown / PNG are written,
the accelerator peak table is found by device kind. No timing is asserted
(numbers on a shared CPU mean nothing here)."""

import dataclasses
import importlib.util
import json
import math
import sys

from PIL import Image
import pytest

import train_fixtures as tf


@pytest.fixture(scope="module")
def suite():
  path = tf.REPO / "benchmarks" / "suite.py"
  spec = importlib.util.spec_from_file_location("perf_suite", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # its dataclass looks itself up there
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def quick_run(suite, tmp_path_factory):
  out = tmp_path_factory.mktemp("suite") / "suite_test.json"
  result = suite.main([
      "--quick", "--methods", "moeclip,inctrl", "--sizes", "32",
      "--batches", "1", "--dtypes", "auto", "--rounds", "1",
      "--train-methods", "inctrl", "--out", str(out)])
  return out, result


def test_quick_rows_have_every_measure(quick_run):
  out, result = quick_run
  rows = json.loads(out.read_text())["rows"]
  assert [(r["method"], r["size"], r["batch"]) for r in rows] == [
      ("moeclip", 32, 1), ("inctrl", 32, 1)]
  for row in rows:
    assert row["dtype"] == "auto" and row["compute_dtype"] == "float32"
    for key in ("images_per_s", "eval_compile_s", "eval_flops",
                "peak_bytes", "reference_gflops", "eval_efficiency"):
      assert math.isfinite(row[key]) and row[key] >= 0, key
    assert row["eval_flops"] > 0 and row["reference_gflops"] > 0
    assert row["reference_kind"] == "XLA float32 GEMM"
    want = (row["eval_flops"] / row["eval_batch_s"]
            / (row["reference_gflops"] * 1e9))
    assert row["eval_efficiency"] == pytest.approx(want)
  assert "train_step_ms" not in rows[0]  # --train-methods inctrl
  assert rows[1]["train_step_ms"] > 0 and rows[1]["train_flops"] > 0
  assert result["machine"]["backend"] == "cpu" and result["machine"]["cpu"]


def test_quick_writes_table_and_chart(quick_run):
  out, _ = quick_run
  table = out.with_suffix(".md").read_text()
  assert "| moeclip | 32 | 1 | float32 |" in table
  assert "| inctrl | 32 | 1 | float32 |" in table
  with Image.open(out.with_suffix(".png")) as image:
    assert image.format == "PNG" and image.height >= 2 * 200  # 2 panels


def test_official_rows_reach_table_and_chart(suite, tmp_path):
  row = {"method": "anomalymoe", "size": 392, "batch": 2,
         "compute_dtype": "float32", "images_per_s": 0.1,
         "official_batch_s": 30.0, "ratio_official_over_ours": 1.5}
  result = {"command": "x", "rows": [row], "machine": {
      "device": "cpu", "backend": "cpu", "cpu": "c", "cores": 2}}
  assert "| 1.50 |" in suite.markdown(result)
  suite.chart([row], tmp_path / "c.png")
  assert (tmp_path / "c.png").stat().st_size > 0


@dataclasses.dataclass
class _Device:
  device_kind: str


@pytest.mark.parametrize("kind,peak", [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H200", 989.0),
    ("NVIDIA A100-SXM4-40GB", 312.0), ("TPU v4", 275.0),
    ("TPU v5 lite", 197.0), ("TPU v5p", 459.0), ("TPU v6 lite", 918.0),
    ("NVIDIA GeForce RTX 3090", None)])
def test_peak_table_by_device_kind(suite, kind, peak):
  assert suite.peak_tflops(_Device(kind)) == peak


def test_bad_arguments_are_refused(suite):
  with pytest.raises(SystemExit):
    suite.parse_args(["--official", "no-equals-sign"])
  with pytest.raises(SystemExit):
    suite.parse_args(["--dtypes", "bf16"])
  with pytest.raises(SystemExit):
    suite.parse_args(["--methods", "nope"])
