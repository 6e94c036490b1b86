"""InCTRL training loss: the official binary focal loss, double sigmoid kept.

The official `BinaryFocalLoss(alpha=1, gamma=2, logits=True)` applies
BCE-with-logits to scores that are *already* sigmoid outputs (the final score
s = (s_h + s_p) / 2 and the image residual score s_i, both in (0, 1)). The
loss therefore sees sigma(sigma(.)): for a positive label the BCE term is
softplus(-p) with p in (0, 1), never below log(1 + e^-1) ~= 0.313. This is
kept on purpose so that trained heads match the published training dynamics;
`logits=False` gives the textbook focal loss on probabilities for study.

Focal term: pt = exp(-bce) (the model's probability of the true label under
the sigmoid), loss = alpha * (1 - pt) ** gamma * bce, averaged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def binary_focal_loss(
    inputs: jax.Array,
    targets: jax.Array,
    *,
    alpha: float = 1.0,
    gamma: float = 2.0,
    logits: bool = True,
) -> jax.Array:
  """Mean binary focal loss, as the official `BinaryFocalLoss`.

  Args:
    inputs: float[B] scores; read as logits when `logits` (official default,
      even though InCTRL passes probabilities).
    targets: float[B] labels in {0, 1}.
    alpha: scale of the focal term.
    gamma: focusing exponent.
    logits: True = BCE with logits (torch `binary_cross_entropy_with_logits`),
      False = BCE on probabilities (log clamped at -100 like torch).

  Returns:
    float[] mean loss.
  """
  targets = targets.astype(inputs.dtype)
  if logits:
    # max(x, 0) - x t + log(1 + exp(-|x|)): torch's stable form.
    bce = (
        jnp.maximum(inputs, 0) - inputs * targets
        + jnp.log1p(jnp.exp(-jnp.abs(inputs)))
    )  # [B]
  else:
    log_p = jnp.maximum(jnp.log(inputs), -100.0)
    log_1mp = jnp.maximum(jnp.log1p(-inputs), -100.0)
    bce = -(targets * log_p + (1 - targets) * log_1mp)  # [B]
  pt = jnp.exp(-bce)
  return jnp.mean(alpha * (1 - pt) ** gamma * bce)


def inctrl_loss(
    final_score: jax.Array,
    image_residual_score: jax.Array,
    labels: jax.Array,
) -> jax.Array:
  """Official objective: Focal(s, y) + Focal(s_i, y), double sigmoid kept.

  Args:
    final_score: float[B] s = (s_h + s_p) / 2.
    image_residual_score: float[B] s_i = diff_head_ref(prototype - query).
    labels: int or float[B], 1 = anomalous.

  Returns:
    float[] loss.
  """
  labels = labels.astype(jnp.float32)
  return binary_focal_loss(final_score, labels) + binary_focal_loss(
      image_residual_score, labels
  )
