"""MobileNet-V3 Large and Small with torchvision's exact architecture.

Inverted residual blocks (expand 1x1, depthwise kxk, squeeze-excite with
hard-sigmoid, project 1x1), hard-swish, BN eps 1e-3 and momentum 0.01 (0.99 in
Flax's convention), a 1x1 last conv, then Linear, hard-swish, dropout 0.2,
Linear.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from inatsounds_jax.models import layers as layers_lib

# (kernel, expanded, out, squeeze-excite, activation, stride) per block.
BLOCKS = {
    "large": ((3, 16, 16, False, "RE", 1), (3, 64, 24, False, "RE", 2),
              (3, 72, 24, False, "RE", 1), (5, 72, 40, True, "RE", 2),
              (5, 120, 40, True, "RE", 1), (5, 120, 40, True, "RE", 1),
              (3, 240, 80, False, "HS", 2), (3, 200, 80, False, "HS", 1),
              (3, 184, 80, False, "HS", 1), (3, 184, 80, False, "HS", 1),
              (3, 480, 112, True, "HS", 1), (3, 672, 112, True, "HS", 1),
              (5, 672, 160, True, "HS", 2), (5, 960, 160, True, "HS", 1),
              (5, 960, 160, True, "HS", 1)),
    "small": ((3, 16, 16, True, "RE", 2), (3, 72, 24, False, "RE", 2),
              (3, 88, 24, False, "RE", 1), (5, 96, 40, True, "HS", 2),
              (5, 240, 40, True, "HS", 1), (5, 240, 40, True, "HS", 1),
              (5, 120, 48, True, "HS", 1), (5, 144, 48, True, "HS", 1),
              (5, 288, 96, True, "HS", 2), (5, 576, 96, True, "HS", 1),
              (5, 576, 96, True, "HS", 1)),
}
LAST_CHANNELS = {"large": 1280, "small": 1024}
_ACTIVATIONS = {"RE": nn.relu, "HS": jax.nn.hard_swish}


def make_divisible(value: float, divisor: int = 8) -> int:
  """torchvision's channel rounding."""
  new = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return new + divisor if new < 0.9 * value else new


class MobileNetV3(nn.Module):
  """NHWC images -> logits `[batch, num_classes]`; with `with_embedding`,
  (the last hidden layer after its hard-swish, `LAST_CHANNELS` wide,
  logits)."""
  variant: str  # "large" or "small".
  num_classes: int
  dtype: Any = jnp.float32
  dropout: float = 0.2
  drop_path: float = 0.0
  head_bias_init: float = 0.0
  # Flax convention (1 - torch's); torchvision's default. Lower it for short
  # runs, whose running statistics would otherwise lag.
  bn_momentum: float = 0.99

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               with_embedding: bool = False):
    L = layers_lib.Layers(self.dtype, train, self.bn_momentum, 1e-3)  # pylint: disable=invalid-name
    x = jax.nn.hard_swish(L.bn("features_0_1")(
        L.conv("features_0_0", 16, 3, 2)(x)))
    blocks = BLOCKS[self.variant]
    for i, (kernel, expanded, out, se, act_name, stride) in enumerate(
        blocks, start=1):
      act = _ACTIVATIONS[act_name]
      p, j = f"features_{i}_block_", 0
      y = x
      if expanded != x.shape[-1]:
        y = act(L.bn(f"{p}{j}_1")(L.conv(f"{p}{j}_0", expanded, 1)(y)))
        j += 1
      y = act(L.bn(f"{p}{j}_1")(L.conv(f"{p}{j}_0", expanded, kernel, stride,
                                       groups=expanded)(y)))
      j += 1
      if se:
        squeeze = make_divisible(expanded // 4)
        s = jnp.mean(y, axis=(1, 2), keepdims=True)
        s = nn.relu(L.conv(f"{p}{j}_fc1", squeeze, 1, bias=True)(s))
        s = jax.nn.hard_sigmoid(L.conv(f"{p}{j}_fc2", expanded, 1,
                                       bias=True)(s))
        y = y * s
        j += 1
      y = L.bn(f"{p}{j}_1")(L.conv(f"{p}{j}_0", out, 1)(y))
      if stride == 1 and x.shape[-1] == out:
        rate = self.drop_path * (i - 1) / max(len(blocks) - 1, 1)
        y = layers_lib.DropPath(rate, name=f"features_{i}_drop_path")(y, train)
        y = x + y
      x = y
    last = len(blocks) + 1
    x = jax.nn.hard_swish(L.bn(f"features_{last}_1")(
        L.conv(f"features_{last}_0", 6 * x.shape[-1], 1)(x)))
    x = layers_lib.global_avg_pool(x)
    embedding = jax.nn.hard_swish(L.dense("classifier_0",
                                          LAST_CHANNELS[self.variant])(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(embedding)
    logits = L.dense("classifier_3", self.num_classes,
                     self.head_bias_init)(x)
    return layers_lib.backbone_output(embedding, logits, with_embedding)
