"""A placeholder backbone for fast tests and smoke runs: not a real model.

Mean over the time axis of the NHWC image, a batch norm, then one dense
layer: a few hundred parameters, compiled in well under a second, with the
same call signature and options as the real backbones (`train`, `dtype`,
`head_bias_init`, `bn_momentum`) and, like the CNNs, `batch_stats` that
training updates over the global batch, so anything built around a backbone
(sharded statistics, their checkpointing and resume) can be tested without
paying for one (as perch-hoplite tests its model zoo).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from inatsounds_jax.models import layers


class Placeholder(nn.Module):
  """NHWC images -> logits `[batch, num_classes]`; with `with_embedding`,
  (the normed time-averaged image `[batch, H * C]`, logits)."""
  num_classes: int
  dtype: Any = jnp.float32
  head_bias_init: float = 0.0
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               with_embedding: bool = False):
    features = x.astype(self.dtype).mean(axis=2).reshape(x.shape[0], -1)
    features = layers.BatchNorm(use_running_average=not train,
                                momentum=self.bn_momentum, dtype=self.dtype,
                                name="norm")(features)
    logits = nn.Dense(self.num_classes, dtype=self.dtype,
                      bias_init=nn.initializers.constant(self.head_bias_init),
                      name="head")(features)
    return layers.backbone_output(features, logits, with_embedding)
