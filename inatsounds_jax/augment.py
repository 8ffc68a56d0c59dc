"""On-device augmentation (the iNatSounds paper's recipe).

Pure functions of (rng, arrays) on spectrogram images `[batch, mel, frames]`
with values 0..255 as made by `frontend.mel_image`, jit- and shard-friendly:
SpecAugment and mixup in the exponential domain with soft labels. The resize
plus normalisation that turns a window into a backbone's input is the
model's (`models/image.py`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from inatsounds_jax import frontend as frontend_lib


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Training-time augmentation; zero widths / False switch a part off."""
  freq_mask_max_width: int = 14  # Masks of width U{0..max}, filled with 0.
  time_mask_max_width: int = 14
  num_freq_masks: int = 1
  num_time_masks: int = 1
  mixup: bool = False
  mixup_alpha: float = 1.0  # lambda ~ Beta(alpha, alpha).


def _band_masks(rng, batch: int, length: int, max_width: int, num: int):
  """[batch, length] bool, True inside `num` random bands of width <= max."""
  if max_width <= 0 or num <= 0:
    return jnp.zeros((batch, length), bool)
  width_rng, start_rng = jax.random.split(rng)
  widths = jax.random.randint(width_rng, (batch, num, 1), 0, max_width + 1)
  starts = (jax.random.uniform(start_rng, (batch, num, 1)) *
            (length - widths + 1)).astype(jnp.int32)
  pos = jnp.arange(length)
  return jnp.any((pos >= starts) & (pos < starts + widths), axis=1)


def spec_augment(rng: jax.Array, images: jax.Array,
                 config: AugmentConfig) -> jax.Array:
  """Frequency and time masks filled with 0 (silence in the image)."""
  freq_rng, time_rng = jax.random.split(rng)
  batch, mel, frames = images.shape
  freq = _band_masks(freq_rng, batch, mel, config.freq_mask_max_width,
                     config.num_freq_masks)
  time = _band_masks(time_rng, batch, frames, config.time_mask_max_width,
                     config.num_time_masks)
  masked = freq[:, :, None] | time[:, None, :]
  return jnp.where(masked, jnp.zeros_like(images), images)


def _pixels_to_amplitude(images, fe: frontend_lib.FrontendConfig):
  return 10.0 ** (fe.pixels_to_db(images) / 20.0)


def _amplitude_to_pixels(amplitude, fe: frontend_lib.FrontendConfig):
  return fe.db_to_pixels(
      20.0 * jnp.log10(jnp.maximum(amplitude, fe.magnitude_floor)))


def mixup(rng: jax.Array, images: jax.Array, targets: jax.Array,
          config: AugmentConfig,
          frontend: frontend_lib.FrontendConfig = frontend_lib.INATSOUNDS
          ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Mixes each example with the next one in the batch (rolled by one).

  Images are mixed as amplitudes (the exponential of the dB image), labels
  the same way, so a mix is what two sounds played together would look like.

  Returns:
    (mixed images, mixed soft targets [batch, classes], lambdas [batch]).
  """
  lam = jax.random.beta(rng, config.mixup_alpha, config.mixup_alpha,
                        (images.shape[0],))
  partner_images = jnp.roll(images, 1, axis=0)
  partner_targets = jnp.roll(targets, 1, axis=0)
  lam_img = lam[:, None, None]
  mixed = _amplitude_to_pixels(
      lam_img * _pixels_to_amplitude(images, frontend) +
      (1 - lam_img) * _pixels_to_amplitude(partner_images, frontend), frontend)
  mixed_targets = lam[:, None] * targets + (1 - lam[:, None]) * partner_targets
  return mixed, mixed_targets, lam


def augment(rng: jax.Array, images: jax.Array, targets: jax.Array,
            config: AugmentConfig,
            frontend: frontend_lib.FrontendConfig = frontend_lib.INATSOUNDS
            ) -> tuple[jax.Array, jax.Array]:
  """SpecAugment, then mixup if configured: (images, soft targets)."""
  spec_rng, mix_rng = jax.random.split(rng)
  images = spec_augment(spec_rng, images, config)
  if config.mixup:
    images, targets, _ = mixup(mix_rng, images, targets, config, frontend)
  return images, targets
