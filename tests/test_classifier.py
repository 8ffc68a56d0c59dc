"""The classifier's outputs (models/classifier.py) and what it takes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inatsounds_jax import frontend
from inatsounds_jax.models import classifier as classifier_lib
from inatsounds_jax.models import image as image_lib
from inatsounds_jax.models import mae

NUM_CLASSES = 5


def small_classifier(backbone, **fields):
  return classifier_lib.Classifier(
      backbone=backbone, num_classes=NUM_CLASSES,
      image=image_lib.ImageConfig(size=(32, 32)), window_frames=32, **fields)


def waveforms(model, n=3):
  rng = np.random.default_rng(0)
  return jnp.asarray(rng.integers(-3000, 3000, (n, model.window_samples)),
                     jnp.int16)


def _inside(module, name):
  while module is not None:
    if module.name == name:
      return True
    module = module.parent
  return False


def intercepted_head_input(model, variables, waveform):
  """(the input of the backbone's last `nn.Dense` call, logits), read by
  intercepting that call: how the embedding was defined before the
  backbones returned it."""
  head_inputs = []

  def record_dense_input(next_fn, args, kwargs, context):
    if isinstance(context.module, nn.Dense) and (
        context.method_name == "__call__") and _inside(context.module, "net"):
      head_inputs.append(args[0])
    return next_fn(*args, **kwargs)

  with nn.intercept_methods(record_dense_input):
    logits = model.apply(variables, waveform)
  return head_inputs[-1].astype(jnp.float32), logits


# One of each backbone family, and every way a ViT pools.
BACKBONES = [
    ("resnet18", {}),
    ("mobilenet_v3_small", {}),
    ("vit_mu16", {}),
    ("vit_mu16", {"global_pool": "avg", "class_token": False,
                  "head_batchnorm": True}),
    ("placeholder", {}),
    ("placeholder", {"dtype": jnp.bfloat16}),
]


@pytest.mark.parametrize("backbone, options", BACKBONES, ids=[
    "resnet18", "mobilenet_v3_small", "vit_token", "vit_avg_batchnorm",
    "placeholder", "placeholder_bfloat16"])
def test_embedding_is_the_input_of_the_backbones_head(backbone, options):
  model = small_classifier(backbone,
                           backbone_options=tuple(options.items()))
  w = waveforms(model)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), w)
  want_embedding, want_logits = jax.jit(
      lambda v, w: intercepted_head_input(model, v, w))(variables, w)
  out = jax.jit(lambda v, w: model.apply(
      v, w, method=classifier_lib.Classifier.infer))(variables, w)
  assert out.embedding.dtype == out.logits.dtype == jnp.float32
  assert out.logits.shape == (3, NUM_CLASSES)
  np.testing.assert_array_equal(out.embedding, want_embedding)
  np.testing.assert_array_equal(out.logits, want_logits)


def test_infer_logits_are_the_calls():
  model = small_classifier("placeholder")
  w = waveforms(model)
  variables = model.init(jax.random.PRNGKey(0), w)
  out = model.apply(variables, w, method=classifier_lib.Classifier.infer)
  np.testing.assert_array_equal(out.logits, model.apply(variables, w))


def test_infer_takes_images_with_an_image_frontend():
  model = small_classifier(
      "placeholder", frontend=frontend.ImageInputConfig(height=6, width=10))
  images = jnp.asarray(np.random.default_rng(0).integers(
      0, 256, (2, 6, 10, 3)), jnp.uint8)
  variables = model.init(jax.random.PRNGKey(0), images)
  out = model.apply(variables, images, method=classifier_lib.Classifier.infer)
  np.testing.assert_array_equal(out.logits, model.apply(variables, images))


def test_input_kind_is_image_only_with_an_image_frontend():
  assert small_classifier("placeholder").input_kind == (
      classifier_lib.WAVEFORM)
  assert small_classifier(
      "placeholder", frontend=frontend.ImageInputConfig()).input_kind == (
          classifier_lib.IMAGE)
  assert mae.MaskedAutoencoder(size="mu").input_kind == (
      classifier_lib.WAVEFORM)
