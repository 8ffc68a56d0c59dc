"""Backbones by name: `create(name, num_classes, **options)`.

Names: resnet18, resnet34, resnet50, resnet101, mobilenet_v3_large,
mobilenet_v3_small, vit_ti16, vit_s16, vit_b16, vit_l16. Inputs are NHWC
images; outputs float32 logits. Options: `dtype` (e.g. jnp.bfloat16 compute,
float32 parameters), `dropout`, `drop_path`, `head_bias_init` (log(1/C) for
BCE heads), `bn_momentum` (CNNs; flax convention), and for ViTs
`image_size` (e.g. (128, 512)).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from inatsounds_jax.models import mobilenet_v3
from inatsounds_jax.models import resnet
from inatsounds_jax.models import vit

REGISTRY = {
    **{name: functools.partial(resnet.ResNet, variant=name)
       for name in resnet.STAGES},
    "mobilenet_v3_large": functools.partial(mobilenet_v3.MobileNetV3,
                                            variant="large"),
    "mobilenet_v3_small": functools.partial(mobilenet_v3.MobileNetV3,
                                            variant="small"),
    **{f"vit_{size}16": functools.partial(vit.ViT, size=size)
       for size in vit.SIZES},
}


def create(name: str, num_classes: int, **options) -> nn.Module:
  """The backbone `name` with a `num_classes`-way head."""
  try:
    factory = REGISTRY[name]
  except KeyError:
    raise ValueError(f"unknown model {name!r}; registered: "
                     f"{sorted(REGISTRY)}") from None
  return factory(num_classes=num_classes, **options)


def init(model: nn.Module, rng: jax.Array, image_shape, in_channels: int = 3):
  """Variables for NHWC inputs of `image_shape` (H, W) and `in_channels`."""
  dummy = jnp.zeros((1,) + tuple(image_shape) + (in_channels,), jnp.float32)
  return model.init({"params": rng, "dropout": rng}, dummy, train=False)


def head_bias_for_bce(num_classes: int) -> float:
  """log(1/C): initial sigmoid outputs near the base rate."""
  return float(jnp.log(1.0 / num_classes))
