r"""Few-shot InCTRL evaluation over prompt draws, per class.

  python -m moeclip_jax.methods.inctrl.evaluate --checkpoint ckpt/inctrl_k2 \
      --dataset elpv --shots 2,4,8 --prompt-draws 5 --seed 0 \
      --out runs/inctrl_elpv.json

For every class: the prompt pool is the class's train normals, the queries its
test split (encoded once and reused by every draw); each K is evaluated on
`--prompt-draws` seeded draws and reported as mean +- std of image AUROC and
AUPRC. `--prompt-set FILE.npz` evaluates a saved set instead of drawing;
`--save-prompts DIR` writes every drawn set for later reuse.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Sequence

import numpy as np

from moeclip_jax.data import images
from moeclip_jax.data import readers
from moeclip_jax.methods.inctrl import detector
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


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m moeclip_jax.methods.inctrl.evaluate",
      description=__doc__.split("\n\n")[0])
  p.add_argument("--checkpoint", required=True,
                 help="folder from `convert inctrl-official`")
  p.add_argument("--dataset", required=True,
                 help="reader name (moeclip_jax.data.readers), e.g. elpv")
  p.add_argument("--root", default=None, help="dataset root (not for elpv)")
  p.add_argument("--classes", default="", help="comma list (default: all)")
  p.add_argument("--shots", default="2,4,8")
  p.add_argument("--prompt-draws", type=int, default=5)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--max-queries", type=int, default=0,
                 help="subsample each class's test split (0 = all)")
  p.add_argument("--max-pool", type=int, default=0,
                 help="subsample each class's prompt pool (0 = all)")
  p.add_argument("--prompt-set", default=None,
                 help="evaluate this saved prompt set (.npz) only")
  p.add_argument("--save-prompts", default=None,
                 help="folder to write every drawn prompt set to")
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--out", default=None, help="write the results as JSON")
  return p


def run(args) -> dict:
  det = detector.load(args.checkpoint, batch_size=args.batch_size)
  records = readers.scan(args.dataset, args.root).records
  if args.prompt_set:
    ps = fewshot.load_prompt_set(args.prompt_set)
    _, q, y = class_split(records, ps.class_name, args.max_queries, args.seed)
    return {ps.class_name: evaluate_prompt_set(det, ps, q, y)}
  names = ([c for c in args.classes.split(",") if c]
           or sorted({r.class_name for r in records}))
  if args.save_prompts:
    pathlib.Path(args.save_prompts).mkdir(parents=True, exist_ok=True)
  results = {}
  for name in names:
    pool, q, y = class_split(records, name, args.max_queries, args.seed,
                             args.max_pool)
    results[name] = evaluate_class(
        det, name, pool, q, y, shots=[int(k) for k in args.shots.split(",")],
        num_draws=args.prompt_draws, seed=args.seed,
        save_dir=args.save_prompts)
  return results


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  results = run(args)
  if args.out:
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(
        json.dumps(results, indent=2, default=str) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
