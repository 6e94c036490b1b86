"""InCTRL's trainable pieces: Adapter, TransformerBasicHead, torch BatchNorm.

These are the only trained parameters of InCTRL (334,916 at D = 640, 225
patches); the CLIP towers stay frozen.

Param / batch_stats paths (the converter maps official keys onto them):

  adapter/fc_0/kernel                [D, D/4]   no bias
  adapter/fc_2/kernel                [D/4, D]   no bias
  <head>/projection{1,2,3}/{kernel, bias}
  <head>/bn{1,2,3}/{scale, bias}              params
  <head>/bn{1,2,3}/{mean, var}                batch_stats (running statistics)

`bn1` is never used by the forward pass (as in the official code) but is
created at init so that official checkpoints load one to one.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def _uniform(bound: float):
  """U(-bound, bound) initialiser."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class TorchDense(nn.Module):
  """Linear layer with torch.nn.Linear's default initialisation.

  torch draws kernel and bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)); Flax's
  `nn.Dense` has no fan-in-aware bias initialiser, hence this small module.
  Params: kernel [fan_in, features] (torch weight transposed), bias
  [features].

  Attributes:
    features: output width.
    use_bias: add a bias.
  """

  features: int
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: float[..., fan_in] -> float[..., features]."""
    fan_in = x.shape[-1]
    init = _uniform(1.0 / math.sqrt(fan_in))
    kernel = self.param("kernel", init, (fan_in, self.features))
    y = jnp.dot(x, kernel)  # [..., features]
    if self.use_bias:
      y = y + self.param("bias", init, (self.features,))
    return y


class TorchBatchNorm(nn.Module):
  """BatchNorm1d with PyTorch semantics, over the leading (batch) axis.

  Differences from `flax.linen.BatchNorm` that matter for parity:
  * the running variance is updated with the *unbiased* batch variance
    (x n / (n - 1)), while the batch itself is normalised with the biased one;
  * eps 1e-5 and Flax-style `momentum` 0.9 (= 1 - torch's 0.1):
    running = momentum * running + (1 - momentum) * batch_stat;
  * a batch of one in training mode raises, as torch does.

  Attributes:
    momentum: Flax convention (weight of the old running statistic).
    epsilon: added to the variance.
  """

  momentum: float = 0.9
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool) -> jax.Array:
    """x: float[B, C] -> float[B, C]."""
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,))
    bias = self.param("bias", nn.initializers.zeros, (features,))
    ra_mean = self.variable(
        "batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32)
    )
    ra_var = self.variable(
        "batch_stats", "var", lambda: jnp.ones((features,), jnp.float32)
    )
    if use_running_average:
      mean, var = ra_mean.value, ra_var.value  # [C]
    else:
      mean, var = self._batch_stats(x, ra_mean, ra_var)
    inv = jax.lax.rsqrt(var + self.epsilon)  # [C]
    return (x - mean) * inv * scale + bias  # [B, C]

  def _batch_stats(self, x, ra_mean, ra_var):
    """Biased batch statistics; updates the running ones (unbiased var)."""
    n = x.shape[0]
    if n < 2:
      raise ValueError(
          "TorchBatchNorm: training mode needs more than 1 value per channel "
          f"(got a batch of {n}); use eval mode for single samples"
      )
    mean = jnp.mean(x, axis=0)  # [C]
    var = jnp.mean(jnp.square(x - mean), axis=0)  # [C] biased
    if not self.is_initializing():
      m = self.momentum
      unbiased = var * (n / (n - 1))
      ra_mean.value = m * ra_mean.value + (1 - m) * mean
      ra_var.value = m * ra_var.value + (1 - m) * unbiased
    return mean, var


class TransformerBasicHead(nn.Module):
  """Linear-ReLU-BN-Linear-ReLU-BN-Linear-sigmoid scoring head.

  Attributes:
    num_classes: output width (1 in InCTRL).
    hidden: widths of the two hidden layers (128, 64 in InCTRL).
  """

  num_classes: int = 1
  hidden: tuple[int, int] = (128, 64)

  def setup(self):
    self.projection1 = TorchDense(self.hidden[0])
    self.projection2 = TorchDense(self.hidden[1])
    self.projection3 = TorchDense(self.num_classes)
    self.bn1 = TorchBatchNorm()  # unused by the forward pass (official)
    self.bn2 = TorchBatchNorm()
    self.bn3 = TorchBatchNorm()

  def __call__(
      self, x: jax.Array, *, train: bool = False
  ) -> tuple[jax.Array, dict]:
    """Scores feature vectors.

    Args:
      x: float[B, dim_in].
      train: BatchNorm on batch statistics (and update the running ones).

    Returns:
      (probs float[B, num_classes], aux) with aux["projection1"] the first
      linear output before ReLU [B, 128] and aux["bn3"] the output of bn3
      [B, 64].
    """
    if self.is_initializing():
      self.bn1(x, use_running_average=True)  # creates bn1's variables only
    h1 = self.projection1(x)  # [B, 128]
    h = self.bn2(nn.relu(h1), use_running_average=not train)
    h = self.projection2(h)  # [B, 64]
    h3 = self.bn3(nn.relu(h), use_running_average=not train)
    out = jax.nn.sigmoid(self.projection3(h3))  # [B, num_classes]
    return out, {"projection1": h1, "bn3": h3}


class Adapter(nn.Module):
  """Linear(D -> D/r) - ReLU - Linear(D/r -> D) - ReLU; no bias, no residual.

  Attributes:
    reduction: bottleneck ratio r (4 in InCTRL).
  """

  reduction: int = 4

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: float[..., D] -> float[..., D]."""
    dim = x.shape[-1]
    down = TorchDense(dim // self.reduction, use_bias=False, name="fc_0")
    h = nn.relu(down(x))  # [..., D/r]
    return nn.relu(TorchDense(dim, use_bias=False, name="fc_2")(h))
