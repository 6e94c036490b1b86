"""Few-shot InCTRL evaluation over prompt draws, per class (library).

  evaluate_records(det, records, shots=(2, 4, 8), num_draws=5, seed=0)

From the command line the same protocol is `moeclip-jax eval --shots K
--prompt-draws N` (one K) or the `inctrl_fewshot` benchmark suite (every K).

For every class: the prompt pool is the class's train normals, the queries its
test split (encoded once and reused by every draw); each K is evaluated on
`num_draws` seeded draws and reported as mean +- std of image AUROC and
AUPRC. `prompt_set=FILE.npz` evaluates a saved set instead of drawing;
`save_prompts=DIR` writes every drawn set for later reuse.
"""

from __future__ import annotations

import pathlib
from typing import Sequence

import numpy as np

from moeclip_jax.data import images
from moeclip_jax.methods.inctrl import fewshot


def _load_images(paths: Sequence[str]) -> np.ndarray:
  return np.stack([images.load_image(p) for p in paths])


def _subsample(items: list, limit: int | None, seed: int) -> list:
  if not limit or len(items) <= limit:
    return items
  keep = np.random.default_rng(seed).choice(len(items), limit, replace=False)
  return [items[i] for i in sorted(keep)]


def class_split(records, class_name: str, max_queries: int | None, seed: int,
                max_pool: int | None = None):
  """(pool paths, query paths, query labels) of one class.

  The pool (train normals) and the queries (test split) are optionally
  subsampled with `seed`, so a run stays reproducible.
  """
  pool = sorted(r.image_path for r in records
                if r.class_name == class_name and r.split == "train"
                and r.label == 0)
  test = sorted((r.image_path, r.label) for r in records
                if r.class_name == class_name and r.split == "test")
  pool = _subsample(pool, max_pool, seed)
  test = _subsample(test, max_queries, seed)
  return pool, [p for p, _ in test], np.array([l for _, l in test])


def evaluate_class(det, class_name, pool_paths, query_paths, labels, *,
                   shots: Sequence[int], num_draws: int, seed: int,
                   save_dir=None) -> dict:
  """{K: summary} for one class (queries encoded once)."""
  queries = det.encode(_load_images(query_paths))
  pool = _load_images(pool_paths)
  score_fn = lambda prompts: det.score(queries, class_name,
                                       det.encode(prompts))[0]
  out = {}
  for k in shots:
    res = fewshot.evaluate_prompt_draws(score_fn, pool, labels, shots=k,
                                        num_draws=num_draws, seed=seed)
    out[k] = res
    print(f"{class_name}: {fewshot.format_summary(res)}", flush=True)
    if save_dir is not None:
      for d in res["draws"]:
        ps = fewshot.PromptSet(class_name, d["seed"], np.asarray(d["indices"]),
                               pool[d["indices"]],
                               tuple(pool_paths[i] for i in d["indices"]))
        fewshot.save_prompt_set(
            pathlib.Path(save_dir) / f"{class_name}_k{k}_seed{d['seed']}.npz",
            ps)
  return out


def evaluate_prompt_set(det, prompt_set, query_paths, labels) -> dict:
  """Metrics of one saved prompt set."""
  scores, _ = det.score(det.encode(_load_images(query_paths)),
                        prompt_set.class_name, det.encode(prompt_set.images))
  return {**fewshot.image_metrics(scores, labels), "shots": prompt_set.shots,
          "seed": prompt_set.seed}


def evaluate_records(det, records, *, classes: Sequence[str] = (),
                     shots: Sequence[int] = (2, 4, 8), num_draws: int = 5,
                     seed: int = 0, max_queries: int | None = None,
                     max_pool: int | None = None, prompt_set=None,
                     save_prompts=None) -> dict:
  """{class: {K: summary}} over a dataset's records (or {class: metrics}
  of one saved `prompt_set` path)."""
  if prompt_set:
    ps = fewshot.load_prompt_set(prompt_set)
    _, q, y = class_split(records, ps.class_name, max_queries, seed)
    return {ps.class_name: evaluate_prompt_set(det, ps, q, y)}
  names = list(classes) or sorted({r.class_name for r in records})
  if save_prompts:
    pathlib.Path(save_prompts).mkdir(parents=True, exist_ok=True)
  results = {}
  for name in names:
    pool, q, y = class_split(records, name, max_queries, seed, max_pool)
    results[name] = evaluate_class(det, name, pool, q, y, shots=shots,
                                   num_draws=num_draws, seed=seed,
                                   save_dir=save_prompts)
  return results
