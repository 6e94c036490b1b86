"""MoECLIP losses and map operators on hand-checkable inputs."""

import jax.numpy as jnp
import numpy as np
import pytest

from moeclip_jax.methods.moeclip import config as config_lib
from moeclip_jax.methods.moeclip import heads
from moeclip_jax.methods.moeclip import losses
from moeclip_jax.methods.moeclip import maps


def _simplex(num=4, dim=16):
  """`num` unit vectors with pairwise cosine -1/(num-1)."""
  centred = np.eye(num) - 1.0 / num
  vecs = centred / np.linalg.norm(centred, axis=1, keepdims=True)
  out = np.zeros((num, dim))
  out[:, :num] = vecs
  return out


def test_etf_sanity_values():
  tokens = 7
  simplex = np.broadcast_to(_simplex(), (tokens, 4, 16))
  assert float(losses.etf_loss(jnp.asarray(simplex))) == pytest.approx(
      0.0, abs=1e-7)
  same = np.broadcast_to(np.arange(1.0, 17.0), (tokens, 4, 16))
  assert float(losses.etf_loss(jnp.asarray(same))) == pytest.approx(4 / 3)
  zeros = jnp.zeros((2, tokens, 4, 16))
  assert float(losses.etf_loss(zeros)) == pytest.approx(1 / 3)


def test_balance_cv2_matches_unbiased_numpy():
  rng = np.random.default_rng(0)
  probs = rng.dirichlet(np.ones(4), size=(2, 9))
  mass = probs.reshape(-1, 4).sum(0)
  want = (mass.std(ddof=1) / (mass.mean() + 1e-6)) ** 2
  assert float(losses.balance_cv2(jnp.asarray(probs))) == pytest.approx(
      want, rel=1e-5)
  assert float(losses.balance_cv2(jnp.full((3, 5, 4), 0.25))) == 0.0


def test_focal_and_dice_hand_values():
  probs = jnp.zeros((1, 2, 2, 2)).at[:, 1].set(1.0)  # always "abnormal"
  mask = jnp.array([[[1.0, 0.0], [0.0, 0.0]]])
  # p_t = 1 - 1e-5 + 1e-5 on the anomalous pixel, 1e-5 + 1e-5 elsewhere.
  p_good, p_bad = 1.0, 2e-5
  want = (3 * -((1 - p_bad) ** 2) * np.log(p_bad)
          - (1 - p_good) ** 2 * np.log(p_good)) / 4
  assert float(losses.focal_loss(probs, mask)) == pytest.approx(want, rel=1e-4)
  dice = losses.dice_loss(probs[:, 1], mask)
  assert float(dice) == pytest.approx(1 - (2 * 1 + 1) / (4 + 1 + 1))


def test_loss_weights_by_faithful_mode():
  released = config_lib.MoECLIPConfig().loss_weights()
  paper = config_lib.MoECLIPConfig(faithful="paper").loss_weights()
  assert (released.etf, released.balance) == (0.0, 0.0)
  assert (paper.etf, paper.balance) == (0.01, 0.01)
  assert released.ce == paper.ce == released.seg == paper.seg == 1.0
  with pytest.raises(ValueError, match="faithful"):
    config_lib.MoECLIPConfig(faithful="other")


def test_total_loss_weighs_named_terms_in_one_place():
  rng = np.random.default_rng(1)
  seg = heads.l2_normalize(jnp.asarray(rng.normal(size=(3, 2, 16, 8))))
  det = jnp.asarray(rng.normal(size=(2, 8)) * 0.1)
  text = heads.l2_normalize(jnp.asarray(rng.normal(size=(2, 8)))).T
  moe_aux = {0: {
      "router_probs": jnp.asarray(rng.dirichlet(np.ones(4), (2, 17))),
      "expert_outputs": jnp.asarray(rng.normal(size=(2, 17, 4, 8)))}}
  masks = jnp.zeros((2, 12, 12)).at[1, 3:6, 3:6].set(1.0)
  labels = jnp.array([0, 1])
  weights = config_lib.LossWeights(ce=2.0, seg=0.5, etf=0.3, balance=0.7)
  total, named = losses.total_loss({"seg_tokens": seg, "det_feature": det},
                                   {"moe": moe_aux}, text, labels, masks,
                                   weights)
  want = (2.0 * named["loss_ce"] + 0.5 * named["loss_seg_sum"]
          + 0.3 * named["loss_etf_sum"] + 0.7 * named["loss_balance_cv2_sum"])
  assert float(total) == pytest.approx(float(want), rel=1e-6)
  assert named["loss_seg_per_map"].shape == (3,)
  assert float(named["loss_etf_sum"]) > 0


def test_per_image_text_features_match_shared_ones():
  rng = np.random.default_rng(2)
  seg = heads.l2_normalize(jnp.asarray(rng.normal(size=(3, 2, 16, 8))))
  text = heads.l2_normalize(jnp.asarray(rng.normal(size=(2, 8)))).T
  per_image = jnp.stack([text, text])
  np.testing.assert_allclose(maps.similarity_maps(seg, text),
                             maps.similarity_maps(seg, per_image), atol=1e-6)


def test_blur_and_align_corners_resize_properties():
  const = jnp.full((2, 5, 5), 3.0)
  np.testing.assert_allclose(maps.gaussian_blur(const, 7, 1.0), 3.0,
                             rtol=1e-6)
  assert maps.gaussian_kernel1d(9, 1.5).sum() == pytest.approx(1.0)
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 4, 6)))
  up = maps.resize_bilinear_align_corners(x, (7, 11))
  for r, c in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
    np.testing.assert_allclose(up[:, r, c], x[:, r, c], atol=1e-6)
  np.testing.assert_allclose(up[:, 0, 3], (x[:, 0, 1] + x[:, 0, 2]) / 2,
                             atol=1e-6)  # output col 2 -> input col 1.5
  with pytest.raises(ValueError, match="domain"):
    maps.blur_for_domain(x, "satellite")


def test_postprocess_class_rules():
  maps_in = np.array([[[0.0, 4.0]], [[2.0, 1.0]]])  # leaves [0, 1]
  scores = np.array([0.2, 0.6])  # inside [0, 1]: untouched
  norm, final_ind = maps.postprocess_class(maps_in, scores, "Industrial")
  np.testing.assert_allclose(norm, maps_in / 4.0)
  np.testing.assert_allclose(final_ind, [0.5 * 1.0 + 0.1, 0.5 * 0.5 + 0.3])
  _, final_med = maps.postprocess_class(maps_in, scores, "medical")
  np.testing.assert_allclose(final_med, [1.0, 0.5])
