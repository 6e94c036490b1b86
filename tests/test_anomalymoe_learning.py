"""AnomalyMoE learns: a tiny model trained on normal images of synthetic
classes detects painted defects on held-out images above chance, with
component masks from the k-means step (components.py)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moeclip_jax.methods.anomalymoe import components
from moeclip_jax.methods.anomalymoe import inference
from moeclip_jax.methods.anomalymoe import losses
from moeclip_jax.methods.anomalymoe import model as model_lib
from moeclip_jax.methods.anomalymoe import training

S = 392


def _normal_image(rng, cls):
  """Smooth synthetic texture of class `cls` (0 stripes, 1 rings)."""
  yy, xx = np.mgrid[0:S, 0:S] / S
  phase = rng.uniform(0, 2 * np.pi)
  if cls == 0:
    base = 0.5 + 0.4 * np.sin(2 * np.pi * 6 * yy + phase)
    colour = np.array([0.8, 0.4, 0.2])
  else:
    r = np.hypot(yy - 0.5, xx - 0.5)
    base = 0.5 + 0.4 * np.sin(2 * np.pi * 8 * r + phase)
    colour = np.array([0.2, 0.5, 0.8])
  img = base[..., None] * colour + 0.02 * rng.standard_normal((S, S, 3))
  return np.clip(img, 0, 1).astype(np.float32)


def _defect(rng, img):
  """Paints a bright square; returns (image, mask)."""
  size = int(rng.integers(60, 100))
  r0, c0 = rng.integers(20, S - size - 20, size=2)
  img = img.copy()
  mask = np.zeros((S, S), np.float32)
  img[r0:r0 + size, c0:c0 + size] = rng.uniform(0, 1, 3)
  mask[r0:r0 + size, c0:c0 + size] = 1
  return img, mask


def _normalise(img):
  return (img - np.array([0.485, 0.456, 0.406], np.float32)) / np.array(
      [0.229, 0.224, 0.225], np.float32)


@functools.lru_cache(maxsize=1)
def _data():
  rng = np.random.default_rng(0)
  train = [(_normalise(_normal_image(rng, c)), c) for c in (0, 1)
           for _ in range(8)]
  test = []
  for c in (0, 1):
    for i in range(6):
      img = _normal_image(rng, c)
      mask = np.zeros((S, S), np.float32)
      if i % 2:
        img, mask = _defect(rng, img)
      test.append((_normalise(img), c, mask, i % 2))
  return train, test


def _features(config, params, images):
  """Backbone all-target-layer mean maps [N, g, g, D] for k-means."""
  module = model_lib.AnomalyMoE(config)

  @jax.jit
  def fn(x):
    stack, _ = module.apply({"params": params}, x,
                            method=model_lib.AnomalyMoE.encode)
    return model_lib.tokens_to_map(jnp.mean(stack, 0), 5, config.grid)

  return np.concatenate([np.asarray(fn(jnp.asarray(images[i:i + 4])))
                         for i in range(0, len(images), 4)])


def _component_masks(comp, classes, fmaps, k_max):
  masks = np.zeros((len(classes), k_max, S, S), np.float32)
  for i, (c, f) in enumerate(zip(classes, fmaps)):
    m = comp.masks(str(c), f)[:k_max]
    masks[i, :len(m)] = m
  return masks


@pytest.mark.slow
def test_tiny_anomalymoe_detects_synthetic_defects():
  config = model_lib.tiny_config()
  train, test = _data()
  tx = training.make_optimizer(lr=2e-3, total_iters=60, warmup_iters=5)
  est_tx = training.make_estimator_optimizer()
  state = training.init_state(config, jax.random.key(0), tx, est_tx)
  full = lambda s: {**s.params, "encoder": s.frozen}  # noqa: E731

  # Component masks: per-class k-means on the frozen backbone's features.
  train_imgs = np.stack([x for x, _ in train])
  train_cls = [c for _, c in train]
  fmaps = _features(config, full(state), train_imgs)
  centres, keep = {}, {}
  for c in (0, 1):
    maps_c = [f for f, cc in zip(fmaps, train_cls) if cc == c]
    centres[str(c)], keep[str(c)] = components.fit_class(maps_c, S, k=3,
                                                         ratio=0.05)
  comp = components.ComponentModel(centres, keep, S)
  train_masks = _component_masks(comp, train_cls, fmaps, 3)
  assert train_masks.sum() > 0

  step, _, _ = training.make_train_step(config, losses.LossConfig(), tx,
                                        est_tx)
  rng = np.random.default_rng(1)
  first = None
  for it in range(60):
    idx = rng.choice(len(train), 4, replace=False)
    batch = {"images": jnp.asarray(train_imgs[idx]),
             "images_ae": jnp.asarray(train_imgs[idx]),
             "component_masks": jnp.asarray(train_masks[idx]),
             "component_valid": jnp.asarray(train_masks[idx].any((2, 3)))}
    state, metrics = step(state, batch, jax.random.key(it))
    first = float(metrics["loss_total"]) if first is None else first
  assert float(metrics["loss_total"]) < first

  test_imgs = np.stack([t[0] for t in test])
  test_cls = [t[1] for t in test]
  test_masks = _component_masks(
      comp, test_cls, _features(config, full(state), test_imgs), 3)
  module = model_lib.AnomalyMoE(config)
  out = jax.jit(lambda p, x, m: module.apply(
      {"params": p}, x, x, m))(full(state), jnp.asarray(test_imgs),
                               jnp.asarray(test_masks))
  weights = model_lib.split_groups(config, out["routing_weights"])
  raw = inference.raw_maps(out, weights, S)
  gt = np.stack([t[2] for t in test])
  labels = np.array([t[3] for t in test])
  res = inference.evaluate_class(raw, inference.fusion_coefficients(weights),
                                 gt, labels)
  # The gate may route a class away from the patch experts entirely (the
  # patch map is then 0), so judge the fused, routed map as test.py does.
  print("pixel AUROC", res["pixel_auroc"], "image AUROC", res["image_auroc"])
  assert res["pixel_auroc"] > 0.6, res["pixel_auroc"]
  assert res["image_auroc"] > 0.5, res["image_auroc"]
