"""Backbones by name: `create(name, num_classes, **options)`.

Names: resnet18, resnet34, resnet50, resnet101, mobilenet_v3_large,
mobilenet_v3_small, vit_ti16, vit_s16, vit_b16, vit_l16, vit_mu16 (two narrow
blocks, for CPU smoke runs), and `placeholder` (a one-layer stand-in for fast
tests). Inputs are NHWC images; outputs float32 logits, or with the call
argument `with_embedding=True` the pair (embedding, logits), the embedding
being the pooled features the head reads (`layers.backbone_output`).
Options: `dtype` (e.g. jnp.bfloat16 compute, float32 parameters),
`dropout`, `drop_path`, `head_bias_init` (log(1/C) for BCE heads),
`bn_momentum` (CNNs; flax convention). `image_size` (e.g. (128, 512))
reaches the backbones whose parameters depend on it (ViTs: their
position embeddings); convolutional ones take any size and ignore it.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from inatsounds_jax import registry
from inatsounds_jax.models import mobilenet_v3
from inatsounds_jax.models import placeholder
from inatsounds_jax.models import resnet
from inatsounds_jax.models import vit

# Name -> partial of a backbone class (its fields are its options).
BACKBONES: registry.Registry[functools.partial] = registry.Registry("model")
for _name in resnet.STAGES:
  BACKBONES.add(_name, functools.partial(resnet.ResNet, variant=_name))
for _variant in ("large", "small"):
  BACKBONES.add(f"mobilenet_v3_{_variant}", functools.partial(
      mobilenet_v3.MobileNetV3, variant=_variant))
for _size in vit.SIZES:
  BACKBONES.add(f"vit_{_size}16", functools.partial(vit.ViT, size=_size))
BACKBONES.add("placeholder", functools.partial(placeholder.Placeholder))


def create(name: str, num_classes: int, image_size=None,
           **options) -> nn.Module:
  """The backbone `name` with a `num_classes`-way head.

  `image_size` (H, W) is passed on only to backbones with an `image_size`
  field, the ones whose parameters depend on the input size.
  """
  factory = BACKBONES.get(name)
  if image_size is not None and "image_size" in {
      f.name for f in dataclasses.fields(factory.func)}:
    options["image_size"] = tuple(image_size)
  return factory(num_classes=num_classes, **options)


def init(model: nn.Module, rng: jax.Array, image_shape, in_channels: int = 3):
  """Variables for NHWC inputs of `image_shape` (H, W) and `in_channels`.

  Jitted: op-by-op initialisation of a CPU-path backbone (see `conv.py`)
  dispatches thousands of small ops.
  """
  dummy = jnp.zeros((1,) + tuple(image_shape) + (in_channels,), jnp.float32)
  return jax.jit(lambda r: model.init({"params": r, "dropout": r}, dummy,
                                      train=False))(rng)


def head_bias_for_bce(num_classes: int) -> float:
  """log(1/C): initial sigmoid outputs near the base rate."""
  return float(jnp.log(1.0 / num_classes))
