"""InCTRL training on auxiliary data: episodes, the step, a small loop.

Official recipe (spec A4): each query (normal or anomalous image of the
auxiliary set) comes with K normal images of its own class drawn afresh for
every query; batches are balanced (8 normal + 8 anomalous); the loss is
Focal(s, y) + Focal(s_i, y) with the official double sigmoid; AdamW with
torch's defaults made explicit (lr 1e-3, betas 0.9/0.999, eps 1e-8, weight
decay 0.01; optax's own default decay is 1e-4); BatchNorm heads in train mode
with torch semantics (running variance from the unbiased batch variance).

Only the heads (adapter, diff_head, diff_head_ref) are trained. The frozen
towers run outside the differentiated function (their outputs are constants
of the step), so no gradient or optimizer state exists for them.

The generic trainer (moeclip_jax/train) carries params and opt_state only;
InCTRL also needs the BN running statistics updated by each step, so this
module has its own pure step until the trainer grows a mutable-state slot.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from moeclip_jax.methods.inctrl import losses
from moeclip_jax.methods.inctrl import model as inctrl_model

HEAD_KEYS = ("adapter", "diff_head", "diff_head_ref")


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  heads: Any  # trainable params of HEAD_KEYS
  batch_stats: Any  # BN running statistics
  opt_state: Any


def split_params(params) -> tuple[dict, dict]:
  """(frozen towers {img, txt}, trainable heads {adapter, diff_head*})."""
  heads = {k: v for k, v in params.items() if k in HEAD_KEYS}
  towers = {k: v for k, v in params.items() if k not in HEAD_KEYS}
  return towers, heads


def make_optimizer(lr: float = 1e-3, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8, weight_decay: float = 0.01):
  """torch.optim.AdamW's defaults, explicit (decay on every head leaf)."""
  return optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


def init_state(variables, tx) -> tuple[TrainState, dict]:
  """(TrainState over the heads, frozen tower params)."""
  towers, heads = split_params(variables["params"])
  # Copies: the step donates its state, the caller keeps `variables`.
  heads = jax.tree.map(jnp.array, heads)
  stats = jax.tree.map(jnp.array, variables["batch_stats"])
  state = TrainState(step=jnp.zeros((), jnp.int32), heads=heads,
                     batch_stats=stats, opt_state=tx.init(heads))
  return state, towers


def _loss(heads, batch_stats, towers, model, feats, text, labels):
  """Loss and new BN statistics; `feats` are constants (frozen towers)."""
  variables = {"params": {**towers, **heads}, "batch_stats": batch_stats}
  (score, aux), updates = model.apply(
      variables, feats["query"], feats["prompts"], text, train=True,
      method=inctrl_model.InCTRL.score_features, mutable=["batch_stats"])
  loss = losses.inctrl_loss(score, aux["image_residual_score"], labels)
  return loss, (updates["batch_stats"], score)


def train_step(state: TrainState, towers, batch: dict, *,
               model: inctrl_model.InCTRL, tx) -> tuple[TrainState, dict]:
  """One AdamW step on the heads.

  Args:
    state: TrainState.
    towers: frozen params {img, txt}.
    batch: query float[B, S, S, 3], prompts float[B, K, S, S, 3],
      text float[B, 2, D] (each query's class features), label int[B].
    model: the InCTRL module (static).
    tx: optimizer (static).

  Returns:
    (new state, metrics {loss, grad_norm, score_mean}).
  """
  frozen = {"params": towers}
  encode = lambda x: model.apply(frozen, x,
                                 method=inctrl_model.InCTRL.encode_images)
  encode_p = lambda x: model.apply(frozen, x,
                                   method=inctrl_model.InCTRL.encode_prompts)
  feats = jax.lax.stop_gradient({"query": encode(batch["query"]),
                                 "prompts": encode_p(batch["prompts"])})
  grad_fn = jax.value_and_grad(_loss, has_aux=True)
  (loss, (stats, score)), grads = grad_fn(
      state.heads, state.batch_stats, towers, model, feats, batch["text"],
      batch["label"])
  updates, opt_state = tx.update(grads, state.opt_state, state.heads)
  heads = optax.apply_updates(state.heads, updates)
  metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
             "score_mean": jnp.mean(score)}
  return state.replace(step=state.step + 1, heads=heads, batch_stats=stats,
                       opt_state=opt_state), metrics


def jit_train_step(model, tx):
  """`train_step` jitted with the state donated."""
  return jax.jit(lambda s, t, b: train_step(s, t, b, model=model, tx=tx),
                 donate_argnums=(0,))


@dataclasses.dataclass
class EpisodeSampler:
  """Balanced batches of (query, K same-class normal prompts, label).

  As the official `BalancedBatchSampler` + `IC_dataset`: normals and
  anomalies are drawn from endless random permutations of the whole
  auxiliary set; each query's K prompts are sampled without replacement from
  the normals of its class (the query itself may be among them, as in the
  official dataset).

  Attributes:
    normals: class name -> float32[M, S, S, 3] normalised normal images.
    anomalies: class name -> float32[A, S, S, 3] anomalous images.
    shots: K.
    per_label: queries per label in a batch (8 officially).
    seed: numpy seed.
  """

  normals: dict[str, np.ndarray]
  anomalies: dict[str, np.ndarray]
  shots: int
  per_label: int = 8
  seed: int = 10

  def __post_init__(self):
    self._rng = np.random.default_rng(self.seed)
    self._index = {
        label: [(c, i) for c, arr in pool.items() for i in range(len(arr))]
        for label, pool in ((0, self.normals), (1, self.anomalies))}
    self._perm = {0: [], 1: []}

  def _next(self, label: int) -> tuple[str, int]:
    if not self._perm[label]:
      order = self._rng.permutation(len(self._index[label]))
      self._perm[label] = [self._index[label][i] for i in order]
    return self._perm[label].pop()

  def sample(self) -> tuple[dict, list[str]]:
    """(batch {query, prompts, label}, class names of the queries)."""
    queries, prompts, labels, names = [], [], [], []
    for label in (0, 1):
      pool = self.normals if label == 0 else self.anomalies
      for _ in range(self.per_label):
        cls, i = self._next(label)
        idx = self._rng.choice(len(self.normals[cls]), self.shots,
                               replace=False)
        queries.append(pool[cls][i])
        prompts.append(self.normals[cls][idx])
        labels.append(label)
        names.append(cls)
    batch = {"query": np.stack(queries), "prompts": np.stack(prompts),
             "label": np.asarray(labels, np.int32)}
    return batch, names


def fit(model, variables, sampler: EpisodeSampler, text_cache, *,
        steps: int, tx=None, log_every: int = 0, prepare=None,
        on_epoch=None, steps_per_epoch: int = 0) -> tuple[dict, list[dict]]:
  """Runs `steps` training steps; returns (variables, metric history).

  Args:
    model, variables: the InCTRL module and its {params, batch_stats}.
    sampler: episode sampler.
    text_cache: `text.TextFeatureCache` (one text pass per class).
    steps: number of steps.
    tx: optimizer (default: torch-default AdamW, lr 1e-3).
    log_every: record metrics every this many steps (0: never).
    prepare: optional images -> float32 normalised (e.g. for uint8 pools).
    on_epoch: optional callback(epoch, variables) every `steps_per_epoch`.
    steps_per_epoch: epoch length for `on_epoch`.
  """
  tx = tx or make_optimizer()
  state, towers = init_state(variables, tx)
  step_fn = jit_train_step(model, tx)
  prepare = prepare or (lambda x: x)
  history = []
  current = lambda s: {"params": {**towers, **s.heads},
                       "batch_stats": s.batch_stats}
  for i in range(steps):
    batch, names = sampler.sample()
    batch["query"] = prepare(batch["query"])
    batch["prompts"] = prepare(batch["prompts"])
    batch["text"] = text_cache.batch(names)
    state, metrics = step_fn(state, towers, batch)
    if log_every and (i % log_every == 0 or i == steps - 1):
      history.append({"step": i, **{k: float(v) for k, v in metrics.items()}})
      print(f"step {i}: " + ", ".join(
          f"{k} {v:.4f}" for k, v in history[-1].items() if k != "step"),
            flush=True)
    if on_epoch and steps_per_epoch and (i + 1) % steps_per_epoch == 0:
      on_epoch((i + 1) // steps_per_epoch, current(state))
  return current(state), history

