"""The backbone's input image (models/image.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inatsounds_jax.models import image as image_lib


def test_model_image_resize_and_normalise():
  images = jnp.full((2, 128, 512), 255 * 0.6569, jnp.float32)
  out = image_lib.to_model_image(images, image_lib.ImageConfig())
  assert out.shape == (2, 224, 224, 3)
  np.testing.assert_allclose(out, 0.0, atol=1e-4)
  native = image_lib.to_model_image(
      images, image_lib.ImageConfig(size=None, channels=1))
  assert native.shape == (2, 128, 512, 1)


@pytest.mark.parametrize("antialias", [True, False])
def test_resize_is_jax_image_resize(antialias):
  images = jax.random.uniform(jax.random.PRNGKey(0), (2, 40, 96)) * 255
  config = image_lib.ImageConfig(size=(24, 128), channels=1, mean=0.0,
                                 std=1.0, antialias=antialias)
  want = jax.image.resize(images / 255.0, (2, 24, 128), "bilinear",
                          antialias=antialias)
  np.testing.assert_allclose(
      image_lib.to_model_image(images, config)[..., 0], want, rtol=1e-5,
      atol=1e-6)
