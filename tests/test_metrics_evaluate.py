"""evaluate(), protocols, reports and the metrics CLI."""
import csv
import json

import numpy as np
import pytest
from sklearn import metrics as skm

from moeclip_jax.verbs import metrics as metrics_cli
from moeclip_jax.eval import evaluate as evaluate_lib
from moeclip_jax.eval import protocols
from moeclip_jax.eval import reports
from moeclip_jax.eval import streaming

KEYS = protocols.ALL_METRICS


def _pred(n=24, size=24, seed=0):
  rng = np.random.default_rng(seed)
  masks = np.zeros((n, size, size), np.uint8)
  masks[n // 2:, 3:9, 4:10] = 1
  maps = (rng.normal(size=masks.shape) + 1.5 * masks).astype(np.float32)
  labels = masks.reshape(n, -1).max(axis=1).astype(np.int64)
  scores = rng.normal(size=n) + labels
  names = np.array(["a", "b"] * (n // 2))
  return dict(image_scores=scores, image_labels=labels, anomaly_maps=maps,
              masks=masks, class_names=names)


def _run(pred, **kw):
  return evaluate_lib.evaluate(
      pred["image_scores"], pred["image_labels"], pred.get("class_names"),
      pred.get("anomaly_maps"), pred.get("masks"), **kw)


def test_raw_protocol_per_class_equals_sklearn_and_schema():
  pred = _pred()
  out = _run(pred)
  assert set(out) >= {"per_class", "mean", "counts", "protocol"}
  for name in ("a", "b"):
    sel = pred["class_names"] == name
    assert set(out["per_class"][name]) == set(KEYS)
    ref = skm.roc_auc_score(pred["image_labels"][sel],
                            pred["image_scores"][sel])
    assert abs(out["per_class"][name]["image_auroc"] - ref) < 1e-12
    ref = skm.average_precision_score(pred["masks"][sel].ravel(),
                                      pred["anomaly_maps"][sel].ravel())
    assert abs(out["per_class"][name]["pixel_ap"] - ref) < 1e-9
  for key in KEYS:
    vals = [out["per_class"][c][key] for c in ("a", "b")]
    assert abs(out["mean"][key] - np.mean(vals)) < 1e-12
    assert 0.0 <= out["mean"][key] <= 1.0


def test_streaming_mode_close_to_exact():
  pred = _pred(seed=1)
  exact = _run(pred, mode="exact")
  stream = _run(pred, mode="streaming", num_bins=1 << 16)
  for name in ("a", "b"):
    for key in ("pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_aupro"):
      bound = stream["details"]["bounds"][name][key]
      diff = abs(stream["per_class"][name][key] - exact["per_class"][name][key])
      assert diff <= bound, (name, key)


def test_streaming_tolerance_refuses():
  pred = _pred(seed=2)
  pred["anomaly_maps"][0, 0, 0] = 1e6
  with pytest.raises(streaming.StreamingToleranceError, match="tolerance"):
    _run(pred, mode="streaming", num_bins=1 << 16, tolerance=1e-12)
  out = _run(pred, mode="streaming", num_bins=1 << 16, tolerance=1e-12,
             on_exceed="report")
  assert out["details"]["bound_exceeded"]


def test_single_label_class_is_null_excluded_and_counted():
  pred = _pred()
  pred["class_names"] = np.array(["a"] * 8 + ["b"] * 16)  # a: all normal
  out = _run(pred)
  assert out["per_class"]["a"]["image_auroc"] is None
  assert out["per_class"]["a"]["pixel_aupro"] is None
  assert out["mean"]["image_auroc"] == out["per_class"]["b"]["image_auroc"]
  assert out["counts"]["undefined"]["image_auroc"] == 1
  assert out["counts"]["undefined_classes"]["pixel_auroc"] == ["a"]


def test_official_zero_policy_is_flagged():
  pred = _pred()
  pred["class_names"] = np.array(["a"] * 8 + ["b"] * 16)
  out = _run(pred, protocol="adaclip")
  assert out["per_class"]["a"]["image_auroc"] == 0.0
  assert out["details"]["flagged"]["image_auroc"] == ["a"]
  assert out["per_class"]["a"]["pixel_aupro"] is None  # not in protocol
  assert out["counts"]["flagged"]["image_auroc"] == 1


def test_moeclip_minmax_and_fusion():
  pred = _pred()
  maps = pred["anomaly_maps"] * 3 + 2  # outside [0, 1]: min-max applies
  pred["anomaly_maps"] = maps
  pred["image_scores"] = np.clip(pred["image_scores"] / 10 + 0.5, 0, 1)
  out = _run(pred, protocol="moeclip-released", domains="industrial")
  sel = pred["class_names"] == "a"
  m = maps[sel]
  norm = (m - m.min()) / (m.max() - m.min())
  fused = 0.5 * norm.reshape(sel.sum(), -1).max(1) + 0.5 * pred[
      "image_scores"][sel]
  ref = skm.roc_auc_score(pred["image_labels"][sel], fused)
  assert abs(out["per_class"]["a"]["image_auroc"] - ref) < 1e-12
  med = _run(pred, protocol="moeclip-paper", domains={"a": "medical",
                                                      "b": "medical"})
  ref = skm.roc_auc_score(pred["image_labels"][sel],
                          norm.reshape(sel.sum(), -1).max(1))
  assert abs(med["per_class"]["a"]["image_auroc"] - ref) < 1e-12
  assert med["per_class"]["a"]["pixel_aupro"] is None


def test_protocol_options_and_errors():
  proto = protocols.get_protocol("raw:ap=trapezoid,fpr_limit=0.1")
  assert proto.ap_definition == "trapezoid" and proto.fpr_limit == 0.1
  assert protocols.get_protocol("anomalyclip").aupro_variant == (
      "legacy_cflow200")
  with pytest.raises(ValueError, match="unknown protocol"):
    protocols.get_protocol("nope")
  with pytest.raises(ValueError, match="ap_definition"):
    protocols.get_protocol("raw", ap="area")
  for name in protocols.PROTOCOLS:
    json.dumps(protocols.get_protocol(name).to_json())


@pytest.mark.parametrize("change, match", [
    (dict(image_scores=np.r_[np.nan, np.zeros(23)]), "non-finite"),
    (dict(image_labels=np.r_[2, np.zeros(23, int)]), "binary"),
    (dict(image_labels=np.zeros(20, int)), "differ in length"),
    (dict(masks=np.full((24, 24, 24), 0.5)), "binary"),
    (dict(masks=np.zeros((24, 12, 12))), "differ in shape"),
    (dict(anomaly_maps=np.full((24, 24, 24), np.inf)), "non-finite"),
    (dict(anomaly_maps=np.zeros((23, 24, 24))), "23 maps"),
    (dict(class_names=np.array(["a"] * 23)), "class_names"),
    (dict(class_names=np.array([""] * 24)), "empty name"),
    (dict(image_scores=np.zeros(0), image_labels=np.zeros(0)), "no images"),
])
def test_bad_inputs_raise_clear_errors(change, match):
  pred = _pred()
  pred.update(change)
  with pytest.raises(ValueError, match=match):
    _run(pred)


def test_empty_listed_class_and_masks_without_maps():
  pred = _pred()
  with pytest.raises(ValueError, match="empty classes"):
    _run(pred, classes=["a", "b", "c"])
  pred["anomaly_maps"] = None
  with pytest.raises(ValueError, match="without anomaly_maps"):
    _run(pred)


def test_no_masks_gives_null_pixel_metrics():
  pred = _pred()
  pred["masks"] = None
  out = _run(pred)
  assert out["mean"]["pixel_auroc"] is None
  assert out["mean"]["image_auroc"] is not None


def test_reports_written_atomically_and_parse(tmp_path):
  pred = _pred()
  pred["class_names"] = np.array(["a"] * 8 + ["b"] * 16)
  out = _run(pred, metadata={"seed": 7})
  paths = reports.write_reports(out, str(tmp_path))
  data = json.loads(open(paths["metrics"]).read())
  assert set(data) == {"per_class", "mean", "counts", "protocol"}
  assert data["per_class"]["a"]["image_auroc"] is None
  rows = list(csv.DictReader(open(paths["csv"])))
  assert [r["class"] for r in rows] == ["a", "b", "mean"]
  assert rows[0]["image_auroc"] == ""
  proto = json.loads(open(paths["protocol"]).read())
  assert proto["seed"] == 7 and proto["aupro_variant"] == "mvtec"
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_cli_end_to_end(tmp_path, capsys):
  pred = _pred()
  np.savez(tmp_path / "pred.npz", **pred)
  status = metrics_cli.main(["--pred", str(tmp_path / "pred.npz"), "--out",
                             str(tmp_path / "out"), "--protocol",
                             "anomalyclip", "--mode", "exact"])
  assert status == 0
  data = json.loads((tmp_path / "out" / "metrics.json").read_text())
  assert data["protocol"]["aupro_variant"] == "legacy_cflow200"
  assert data["mean"]["pixel_aupro"] is not None
  assert "pixel" in capsys.readouterr().out


def test_cli_bad_file_names_the_file(tmp_path, capsys):
  np.savez(tmp_path / "bad.npz", image_scores=np.zeros(3))
  status = metrics_cli.main(["--pred", str(tmp_path / "bad.npz"), "--out",
                             str(tmp_path / "o")])
  assert status == 2
  err = capsys.readouterr().err
  assert "bad.npz" in err and "image_labels" in err


def test_device_path_equals_host_path_in_evaluate():
  pred = _pred(seed=4)
  host = _run(pred, mode="exact", path="host")
  dev = _run(pred, mode="exact", path="device")
  for name in ("a", "b"):
    for key in KEYS:
      assert abs(host["per_class"][name][key]
                 - dev["per_class"][name][key]) < 1e-9, (name, key)


def test_eval_package_never_imports_models_or_methods():
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  code = ("import sys, moeclip_jax.metrics, moeclip_jax.eval.evaluate; "
          "bad = [m for m in sys.modules if m.startswith(("
          "'moeclip_jax.models', 'moeclip_jax.methods'))]; "
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True,
                 env={"JAX_PLATFORMS": "cpu", "PATH": ""},
                 cwd=str(reports.__file__).rsplit("/moeclip_jax/", 1)[0])


def test_auto_mode_streams_when_over_budget():
  pred = _pred(seed=5)
  out = _run(pred, mode="auto", memory_budget_bytes=1, num_bins=1 << 16)
  assert set(out["details"]["mode"].values()) == {"streaming"}
  exact = _run(pred, mode="auto")
  assert set(exact["details"]["mode"].values()) == {"exact"}
  for key in ("pixel_auroc", "pixel_aupro"):
    bound = out["details"]["bounds"]["a"][key]
    assert abs(out["per_class"]["a"][key] - exact["per_class"]["a"][key]) <= (
        bound)
