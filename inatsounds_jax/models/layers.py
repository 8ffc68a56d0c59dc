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
                       2.0, "fan_out", "normal"), name=name)

  def bn(self, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not self.train,
                        momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                        dtype=self.dtype, name=name)

  def dense(self, name: str, features: int, bias_init: float = 0.0,
            use_bias: bool = True) -> nn.Dense:
    return nn.Dense(features, use_bias=use_bias, dtype=self.dtype,
                    bias_init=nn.initializers.constant(bias_init), name=name)


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
  return jax.nn.gelu(x, approximate=False)  # PyTorch's nn.GELU default.


global_avg_pool = functools.partial(jnp.mean, axis=(1, 2))
