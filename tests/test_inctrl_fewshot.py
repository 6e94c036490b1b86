"""Few-shot InCTRL evaluation on real ELPV cells with a tiny random CLIP.

ELPV comes from the installed `elpv-dataset` package through the data
reader (`inctrl` label rule: probability 0 normal, 1 anomalous). Prompts are
drawn from the train normals, queries are a fixed subset of the test split.
Random weights: the numbers check the protocol (draws, K, mean +- std), not
accuracy.
"""

from __future__ import annotations


import numpy as np
import pytest
from sklearn import metrics as sk_metrics

import inctrl_golden_utils as G

from moeclip_jax.data import images as data_images
from moeclip_jax.data import readers
from moeclip_jax.data.readers import elpv
from moeclip_jax.methods.inctrl import detector
from moeclip_jax.methods.inctrl import evaluate
from moeclip_jax.methods.inctrl import fewshot
from moeclip_jax.models import tokenize
from moeclip_jax.checkpoint import params as ckpt_params

POOL, PER_LABEL = 16, 12


@pytest.fixture(scope="module")
def elpv_subset():
  records = elpv.scan_elpv().records
  rng = np.random.default_rng(0)

  def pick(cond, n):
    paths = sorted(r.image_path for r in records if cond(r))
    return [paths[i] for i in rng.choice(len(paths), n, replace=False)]

  pool = pick(lambda r: r.split == "train" and r.label == 0, POOL)
  normal = pick(lambda r: r.split == "test" and r.label == 0, PER_LABEL)
  anomalous = pick(lambda r: r.label == 1, PER_LABEL)
  load = lambda ps: np.stack([data_images.load_image(p) for p in ps])
  labels = np.array([0] * PER_LABEL + [1] * PER_LABEL)
  return load(pool), load(normal + anomalous), labels


@pytest.fixture(scope="module")
def tiny_detector():
  model, variables = G.tiny_inctrl(32, (1, 2, 3))
  return detector.InCTRLDetector(model, variables,
                                 tokenize.load_tokenizer(),
                                 batch_size=16)


@pytest.fixture(scope="module")
def results(elpv_subset, tiny_detector):
  pool, queries, labels = elpv_subset
  det = tiny_detector
  query_feats = det.encode(queries)  # once for every draw
  score_fn = lambda prompts: det.score(query_feats, "elpv",
                                       det.encode(prompts))[0]
  return {k: fewshot.evaluate_prompt_draws(
      score_fn, pool, labels, shots=k, num_draws=3, seed=10)
          for k in (1, 2, 4, 8)}


@pytest.mark.parametrize("shots", [1, 2, 4, 8])
def test_prompt_draws_summary(results, shots):
  res = results[shots]
  assert res["shots"] == shots and res["num_draws"] == 3
  for key in ("auroc", "auprc"):
    values = [d[key] for d in res["draws"]]
    assert all(0.0 <= v <= 1.0 for v in values)
    np.testing.assert_allclose(res[f"{key}_mean"], np.mean(values))
    np.testing.assert_allclose(res[f"{key}_std"], np.std(values))
  assert [d["seed"] for d in res["draws"]] == [10, 11, 12]
  assert all(len(d["indices"]) == shots for d in res["draws"])
  assert "AUROC" in fewshot.format_summary(res)


def test_draws_change_the_scores(results):
  aurocs = [d["auroc"] for r in results.values() for d in r["draws"]]
  assert len(set(np.round(aurocs, 12))) > 1


def test_metrics_match_sklearn(elpv_subset, tiny_detector):
  pool, queries, labels = elpv_subset
  det = tiny_detector
  det.set_prompts(pool[:4])
  scores = det.predict(queries, "elpv")["image_score"]
  got = fewshot.image_metrics(scores, labels)
  np.testing.assert_allclose(got["auroc"],
                             sk_metrics.roc_auc_score(labels, scores))
  np.testing.assert_allclose(
      got["auprc"], sk_metrics.average_precision_score(labels, scores))


def test_predict_outputs_and_text_cache(elpv_subset, tiny_detector):
  pool, queries, _ = elpv_subset
  det = tiny_detector
  det.set_prompts(pool[:2])
  calls = det.text_cache.encode_calls
  out = det.predict(queries[:5], "elpv")
  out2 = det.predict(queries[5:7], "elpv")
  assert out["image_score"].shape == (5,)
  assert out["anomaly_map"].shape == (5,) + queries.shape[1:3]
  assert out2["image_score"].shape == (2,)
  assert np.all(np.isfinite(out["anomaly_map"]))
  wide = det.predict(queries[:2, :, :200], "elpv")["anomaly_map"]
  assert wide.shape == (2, queries.shape[1], 200)
  assert det.predict(queries[0], "elpv")["image_score"].shape == (1,)
  assert det.text_cache.encode_calls <= calls + 1  # one text pass per class
  # Batch-independent: one image at a time gives the same scores.
  single = np.concatenate([det.predict(queries[i:i + 1], "elpv")["image_score"]
                           for i in range(3)])
  np.testing.assert_allclose(single, out["image_score"][:3], atol=1e-6)


def test_prompt_set_save_and_reload(elpv_subset, tmp_path):
  pool = elpv_subset[0]
  drawn = fewshot.draw_prompt_set(pool, "elpv", 4, seed=3,
                                  paths=[f"p{i}.png" for i in range(len(pool))])
  path = fewshot.save_prompt_set(tmp_path / "elpv_k4.npz", drawn)
  back = fewshot.load_prompt_set(path)
  assert back.class_name == "elpv" and back.seed == 3 and back.shots == 4
  np.testing.assert_array_equal(back.indices, drawn.indices)
  np.testing.assert_array_equal(back.images, pool[drawn.indices])
  assert back.paths == drawn.paths
  np.testing.assert_array_equal(
      fewshot.draw_prompt_indices(len(pool), 4, 3), drawn.indices)


def test_draw_rejects_too_many_shots():
  with pytest.raises(ValueError, match="cannot draw 9"):
    fewshot.draw_prompt_indices(8, 9, 0)


def test_evaluate_records_on_elpv(tmp_path):
  model, variables = G.tiny_inctrl(32, (1, 2, 3))
  ckpt = ckpt_params.write_params_checkpoint(
      tmp_path / "ckpt", variables,
      {"method": "inctrl", "clip": model.clip_config.to_dict(),
       "inctrl": {"feature_layers": [1, 2, 3]}}, {"source_format": "test"},
      tokenizer_dir=tokenize.packaged_tokenizer_dir())
  det = detector.load(ckpt)
  records = readers.scan("elpv", None).records
  res = evaluate.evaluate_records(
      det, records, shots=(2, 4), num_draws=2, max_queries=16, max_pool=8,
      save_prompts=tmp_path / "sets")
  assert set(res) == {"elpv"} and set(res["elpv"]) == {2, 4}
  assert res["elpv"][4]["num_draws"] == 2
  saved = sorted((tmp_path / "sets").glob("*.npz"))
  assert len(saved) == 4
  one = evaluate.evaluate_records(det, records, max_queries=16,
                                  prompt_set=saved[0])["elpv"]
  draw = res["elpv"][2]["draws"][0]
  np.testing.assert_allclose(one["auroc"], draw["auroc"])
