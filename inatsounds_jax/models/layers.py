"""Layers shared by the backbones, with PyTorch's numerics.

Every backbone builds its layers flat, each named after its PyTorch module
path with dots as underscores (`layer1.0.conv1` -> `layer1_0_conv1`), so that
weight import is a rename plus layout changes (see `convert.py`).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from inatsounds_jax.models import conv as conv_lib


def torch_padding(kernel: int, dilation: int = 1):
  """PyTorch's symmetric `padding=(k - 1) // 2 * d` for a square kernel."""
  pad = (kernel - 1) // 2 * dilation
  return ((pad, pad), (pad, pad))


class Layers:
  """Factory for named conv / batch-norm / dense layers of one backbone."""

  def __init__(self, dtype: Any, train: bool, bn_momentum: float,
               bn_epsilon: float):
    self.dtype = dtype
    self.train = train
    self.bn_momentum = bn_momentum  # Flax convention: 1 - torch momentum.
    self.bn_epsilon = bn_epsilon

  def conv(self, name: str, features: int, kernel: int, stride: int = 1,
           groups: int = 1, bias: bool = False, padding=None,
           dilation: int = 1) -> nn.Conv:
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=torch_padding(kernel, dilation) if padding is None
                   else padding, kernel_dilation=(dilation, dilation),
                   feature_group_count=groups, use_bias=bias, dtype=self.dtype,
                   kernel_init=nn.initializers.variance_scaling(
                       2.0, "fan_out", "normal"),
                   # Fast CPU paths; the native convolution elsewhere.
                   conv_general_dilated=conv_lib.conv_general_dilated,
                   name=name)

  def bn(self, name: str) -> BatchNorm:
    return BatchNorm(use_running_average=not self.train,
                     momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                     dtype=self.dtype, name=name)

  def dense(self, name: str, features: int, bias_init: float = 0.0,
            use_bias: bool = True) -> nn.Dense:
    return nn.Dense(features, use_bias=use_bias, dtype=self.dtype,
                    bias_init=nn.initializers.constant(bias_init),
                    # A faster kernel gradient on CPU; native elsewhere.
                    dot_general=conv_lib.dot_general, name=name)


class BatchNorm(nn.Module):
  """`nn.BatchNorm` over the last axis: same variables, same values.

  Statistics in float32 with the fast variance E[x^2] - E[x]^2 (clipped at
  0) and running averages updated as Flax does. Training uses a
  hand-written gradient (`_batch_norm`): autodiff of the formula keeps the
  centred input as an extra full-size array and reduces it several times,
  where the gradient needs two reductions and one pass.
  """
  use_running_average: bool
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = (x.shape[-1],)
    scale = self.param("scale", nn.initializers.ones, features, jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, features, jnp.float32)
    running_mean = self.variable("batch_stats", "mean", jnp.zeros, features,
                                 jnp.float32)
    running_var = self.variable("batch_stats", "var", jnp.ones, features,
                                jnp.float32)
    dtype = self.dtype or jnp.promote_types(x.dtype, jnp.float32)
    if self.use_running_average:
      return _normalize(x, running_mean.value, running_var.value, scale, bias,
                        self.epsilon).astype(dtype)
    if not self.is_initializing():
      mean, var = jax.lax.stop_gradient(_batch_stats(x))
      running_mean.value = (self.momentum * running_mean.value
                            + (1 - self.momentum) * mean)
      running_var.value = (self.momentum * running_var.value
                           + (1 - self.momentum) * var)
    return _batch_norm(x, scale, bias, self.epsilon).astype(dtype)


def _batch_stats(x):
  """Per-channel mean and (fast, clipped) variance in float32 or wider."""
  axes = tuple(range(x.ndim - 1))
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean = jnp.mean(x, axes)
  return mean, jnp.maximum(0.0, jnp.mean(x * x, axes) - mean * mean)


def _normalize(x, mean, var, scale, bias, epsilon):
  """Flax's order of operations: (x - mean) * (rsqrt(var + eps) * scale)."""
  return (x - mean) * (lax.rsqrt(var + epsilon) * scale) + bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _batch_norm(x, scale, bias, epsilon):
  """Normalisation by the batch's own statistics."""
  return _normalize(x, *_batch_stats(x), scale, bias, epsilon)


def _batch_norm_fwd(x, scale, bias, epsilon):
  mean, var = _batch_stats(x)
  return (_normalize(x, mean, var, scale, bias, epsilon),
          (x, mean, lax.rsqrt(var + epsilon), scale))


def _batch_norm_bwd(epsilon, residuals, grad):
  """With xhat = (x - mean) * rstd and sums over all but the channel axis:
  d bias = sum(g), d scale = sum(g * xhat), and
  dx = rstd * scale * (g - sum(g) / n - xhat * sum(g * xhat) / n).
  """
  del epsilon
  x, mean, rstd, scale = residuals
  axes = tuple(range(x.ndim - 1))
  count = x.size // x.shape[-1]
  grad_sum = jnp.sum(grad, axes)
  grad_xhat = rstd * (jnp.sum(grad * x, axes) - mean * grad_sum)
  a = rstd * scale
  dx = a * grad - a * grad_sum / count - (x - mean) * (
      a * rstd * grad_xhat / count)
  return dx.astype(x.dtype), grad_xhat, grad_sum


_batch_norm.defvjp(_batch_norm_fwd, _batch_norm_bwd)


class DropPath(nn.Module):
  """Stochastic depth: drops a residual branch per example while training."""
  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if not train or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep,
                                (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


def gelu_exact(x):
  """PyTorch's nn.GELU default, x * (1 + erf(x / sqrt(2))) / 2, as it does.

  `jax.nn.gelu(approximate=False)` goes through erfc, whose XLA lowering
  is slower than erf's on CPU.
  """
  return 0.5 * x * (1 + lax.erf(x * np.sqrt(0.5).astype(x.dtype)))


global_avg_pool = functools.partial(jnp.mean, axis=(1, 2))


def backbone_output(embedding: jax.Array, logits: jax.Array,
                    with_embedding: bool):
  """What every backbone returns: float32 logits `[batch, num_classes]`,
  or with `with_embedding` the pair (embedding, logits).

  The embedding `[batch, dim]`, float32, is what the backbone's head reads:
  its pooled features (before the head's dropout, which inference skips).
  It is a second output rather than read from the head's call, so that what
  counts as the embedding is each backbone's own, stated decision.
  """
  logits = logits.astype(jnp.float32)
  if with_embedding:
    return embedding.astype(jnp.float32), logits
  return logits
