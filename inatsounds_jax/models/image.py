"""The backbone's input image: how a spectrogram window becomes it.

The frontend makes a window's spectrogram image, `[batch, mel, frames]`
with values 0..255 (an image input's one-channel `[batch, height, width]`,
the same way); a backbone reads a normalised NHWC image `[batch, H, W,
C]`: the window scaled to 0..1, resized to `ImageConfig.size` (bilinear, as
`jax.image.resize`), repeated into `channels` and normalised by `mean` and
`std`. These settings belong to the model, not to augmentation: a model is
trained, evaluated and exported with the same ones, its parameters may
depend on them (a ViT's position embeddings cover the grid of `size`,
`WindowedModel.image_size`), and imported weights expect their own
statistics (ImageNet's for L48's images). Augmentation (`augment.py`)
works on the 0..255 window before this conversion.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class ImageConfig:
  """How a spectrogram window becomes the backbone's input.

  `size=None` keeps the native [mel, frames] size (e.g. 128 x 512).
  """
  size: tuple[int, int] | None = (224, 224)
  channels: int = 3  # The paper repeats the image into 3 channels.
  # Of the 0..1 image: one value, or one per channel (ImageNet's for L48).
  mean: float | tuple[float, ...] = 0.6569
  std: float | tuple[float, ...] = 0.1786
  antialias: bool = True


@functools.lru_cache(maxsize=None)
def resize_matrix(size_in: int, size_out: int, antialias: bool) -> np.ndarray:
  """`[size_out, size_in]` weights of `jax.image.resize`'s bilinear resize
  along one axis (the resize is separable and linear: the images of the
  unit vectors)."""
  with jax.ensure_compile_time_eval():
    return np.asarray(jax.image.resize(
        jnp.eye(size_in, dtype=jnp.float32), (size_out, size_in), "bilinear",
        antialias=antialias))


def _resize(x: jax.Array, size: tuple[int, int], antialias: bool
            ) -> jax.Array:
  """`jax.image.resize(x, (batch,) + size, "bilinear")` as two 2-D matrix
  products, which TFLite's converter maps to its fully-connected op (the
  resize's own contraction over a middle axis it cannot convert)."""
  batch, height, width = x.shape
  rows = resize_matrix(height, size[0], antialias)
  cols = resize_matrix(width, size[1], antialias)
  hi = jax.lax.Precision.HIGHEST
  x = jnp.matmul(x.reshape(batch * height, width), cols.T, precision=hi)
  x = jnp.swapaxes(x.reshape(batch, height, size[1]), 1, 2)
  x = jnp.matmul(x.reshape(batch * size[1], height), rows.T, precision=hi)
  return jnp.swapaxes(x.reshape(batch, size[1], size[0]), 1, 2)


def to_model_image(images: jax.Array, config: ImageConfig) -> jax.Array:
  """`[batch, mel, frames]` 0..255 -> normalised NHWC `[batch, H, W, C]`."""
  x = images.astype(jnp.float32) / 255.0
  if config.size is not None and tuple(config.size) != x.shape[1:]:
    x = _resize(x, tuple(config.size), config.antialias)
  x = jnp.repeat(x[..., None], config.channels, axis=-1)
  return ((x - np.asarray(config.mean, np.float32)) /
          np.asarray(config.std, np.float32))
