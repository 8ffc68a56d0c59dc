"""ResNet-18/34/50/101 with torchvision's exact architecture (v1.5).

Stem 7x7/2 conv, BN, ReLU, 3x3/2 max-pool; basic blocks (18, 34) or
bottlenecks with the stride on the 3x3 conv (50, 101); BN eps 1e-5, momentum
0.1 (0.9 in Flax's convention); global average pool; linear head.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from inatsounds_jax.models import conv as conv_lib
from inatsounds_jax.models import layers as layers_lib

STAGES = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
}


class ResNet(nn.Module):
  """NHWC images -> logits `[batch, num_classes]`; with `with_embedding`,
  (the global average pool `[batch, 512 | 2048]`, logits)."""
  variant: str
  num_classes: int
  dtype: Any = jnp.float32
  dropout: float = 0.0  # Before the head (torchvision has none).
  drop_path: float = 0.0  # Max stochastic-depth rate, linear over blocks.
  head_bias_init: float = 0.0
  # Flax convention (1 - torch's); torchvision's default. Lower it for short
  # runs, whose running statistics would otherwise lag.
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               with_embedding: bool = False):
    block, depths = STAGES[self.variant]
    L = layers_lib.Layers(self.dtype, train, self.bn_momentum, 1e-5)  # pylint: disable=invalid-name
    x = nn.relu(L.bn("bn1")(L.conv("conv1", 64, 7, 2)(x)))
    x = conv_lib.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
    expansion = 1 if block == "basic" else 4
    total, index = sum(depths), 0
    for stage, depth in enumerate(depths):
      width = 64 * 2 ** stage
      for i in range(depth):
        p = f"layer{stage + 1}_{i}_"
        stride = 2 if i == 0 and stage > 0 else 1
        residual = x
        if block == "basic":
          y = nn.relu(L.bn(p + "bn1")(L.conv(p + "conv1", width, 3, stride)(x)))
          y = L.bn(p + "bn2")(L.conv(p + "conv2", width, 3)(y))
        else:
          y = nn.relu(L.bn(p + "bn1")(L.conv(p + "conv1", width, 1)(x)))
          y = nn.relu(L.bn(p + "bn2")(L.conv(p + "conv2", width, 3, stride)(y)))
          y = L.bn(p + "bn3")(L.conv(p + "conv3", width * expansion, 1)(y))
        if stride != 1 or x.shape[-1] != width * expansion:
          residual = L.bn(p + "downsample_1")(
              L.conv(p + "downsample_0", width * expansion, 1, stride)(x))
        rate = self.drop_path * index / max(total - 1, 1)
        y = layers_lib.DropPath(rate, name=p + "drop_path")(y, train)
        x = nn.relu(residual + y)
        index += 1
    embedding = layers_lib.global_avg_pool(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(embedding)
    logits = L.dense("fc", self.num_classes, self.head_bias_init)(x)
    return layers_lib.backbone_output(embedding, logits, with_embedding)
