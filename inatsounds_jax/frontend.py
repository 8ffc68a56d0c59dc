"""The paper's mel-spectrogram image, jitted and batched in JAX.

`mel_image(waveform, preset="inatsounds")` computes the image of the
iNatSounds paper (Chasmai et al. 2025, "The iNaturalist Sounds Dataset", and
the authors' data preparation), on float audio = int16 / 32767: STFT with a
periodic Hann window of 512 samples, hop 128, FFT length 1024, no padding
(frames = 1 + (samples - 512) // 128); magnitude |X| * 2 / sum(window);
128 HTK mel bands from 50 Hz to 11,025 Hz built like
`tf.signal.linear_to_mel_weight_matrix`; 20 log10, clipped; quantised to
0..255; highest band in row 0.

All parameters live in one `FrontendConfig`; presets are registered by name
and the config is saved with every model (`Frontend` module), so an exported
model cannot drift from the frontend it was trained with.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from inatsounds_jax import audio
from inatsounds_jax import registry


@dataclasses.dataclass(frozen=True)
class FrontendConfig:
  """Everything that defines the spectrogram image.

  Attributes:
    waveform_scale: multiplies the [-1, 1] float waveform first (1 for the
      paper; 32767 for the legacy preset computed on unscaled int16).
    db_min, db_max: dB range kept; mapped linearly onto 0..255.
    quantize: floor to integer levels like the paper's uint8 images.
  """
  sample_rate: int = 22_050
  window_length: int = 512
  hop_length: int = 128
  fft_length: int = 1024
  num_mel_bins: int = 128
  lower_edge_hz: float = 50.0
  upper_edge_hz: float = 11_025.0
  waveform_scale: float = 1.0
  db_min: float = -100.0
  db_max: float = 0.0
  magnitude_floor: float = 1e-10
  quantize: bool = True

  def num_frames(self, num_samples):
    """Frames of a waveform: the STFT has no centre or end padding.

    Works on Python ints and on integer tensors (TF, JAX, numpy), so the
    input pipeline counts frames with this same formula.
    """
    frames = (num_samples - self.window_length) // self.hop_length + 1
    return (frames + abs(frames)) // 2  # max(0, frames) for any tensor type.

  def num_samples(self, num_frames: int) -> int:
    """Samples that make exactly `num_frames` frames."""
    return (num_frames - 1) * self.hop_length + self.window_length

  def db_to_pixels(self, db):
    """dB (any array type) -> image values 0..255 (before quantisation)."""
    db = db.clip(self.db_min, self.db_max)
    return (db - self.db_min) * np.float32(255.0 / (self.db_max - self.db_min))

  def pixels_to_db(self, pixels):
    """The inverse of `db_to_pixels` (exact for unclipped, unquantised dB)."""
    scale = np.float32((self.db_max - self.db_min) / 255.0)
    return pixels * scale + self.db_min

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


PRESETS: registry.Registry[FrontendConfig] = registry.Registry(
    "frontend preset")
# The paper's image, the default wherever a frontend is not named.
INATSOUNDS = PRESETS.add("inatsounds", FrontendConfig())
# The older variant: dB of the unscaled int16 signal, clipped to [-50, 50].
PRESETS.add("inatsounds_legacy", FrontendConfig(
    waveform_scale=audio.INT16_SCALE, db_min=-50.0, db_max=50.0))
# Same scale as `inatsounds` (0..255) without the floor to integer levels.
PRESETS.add("inatsounds_float", FrontendConfig(quantize=False))


@dataclasses.dataclass(frozen=True)
class ImageInputConfig:
  """Inputs that are already spectrogram images, as the Merlin L48 clips
  (Sun et al., NeurIPS 2025, arXiv:2511.00252): uint8 `[height, width,
  channels]` per example, every clip brought to this size by the input
  pipeline (the release's are 750 x 236). The module (`ImageFrontend`)
  makes them the one-channel 0..255 image the classifier resizes and
  normalises (`models.image.to_model_image`): L48's spectrograms are grey,
  stored as RGB, so the channel mean keeps all they hold.
  """
  height: int = 236
  width: int = 750
  channels: int = 3

  @property
  def example_shape(self) -> tuple[int, int, int]:
    return (self.height, self.width, self.channels)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


PRESETS.add("image", ImageInputConfig())


def get_config(preset: "str | FrontendConfig | ImageInputConfig"
               ) -> "FrontendConfig | ImageInputConfig":
  """A preset by name, or a config as it is."""
  if isinstance(preset, (FrontendConfig, ImageInputConfig)):
    return preset
  return PRESETS.get(preset)


def hz_to_mel(hz):
  """HTK mel scale."""
  return 1127.0 * np.log1p(np.asarray(hz, np.float64) / 700.0)


def mel_weight_matrix(config: FrontendConfig) -> np.ndarray:
  """[fft_length // 2 + 1, num_mel_bins] triangles, float64.

  Built like `tf.signal.linear_to_mel_weight_matrix`: band edges linear in
  mel over num_mel_bins + 2 points, linear bins at linspace(0, sr / 2), the DC
  bin weighted 0, no area normalisation.
  """
  num_bins = config.fft_length // 2 + 1
  bin_mel = hz_to_mel(np.linspace(0.0, config.sample_rate / 2, num_bins))[1:]
  edges = np.linspace(hz_to_mel(config.lower_edge_hz),
                      hz_to_mel(config.upper_edge_hz),
                      config.num_mel_bins + 2)
  lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
  rising = (bin_mel[:, None] - lower) / (center - lower)
  falling = (upper - bin_mel[:, None]) / (upper - center)
  weights = np.maximum(0.0, np.minimum(rising, falling))
  return np.concatenate([np.zeros((1, config.num_mel_bins)), weights])


def _mel_blocks(weights: np.ndarray, bands_per_block: int = 16):
  """Splits the banded mel matrix into dense blocks over their bin ranges.

  Each band touches a contiguous range of FFT bins, so a block of adjacent
  bands needs only its own bins: about 8x fewer multiply-adds than the dense
  [513, 128] matmul, with exactly the same result (the rest is zeros).
  """
  blocks = []
  for start in range(0, weights.shape[1], bands_per_block):
    block = weights[:, start:start + bands_per_block]
    rows = np.nonzero(block.any(axis=1))[0]
    lo, hi = (rows[0], rows[-1] + 1) if len(rows) else (0, 1)
    blocks.append((int(lo), int(hi), block[lo:hi].astype(np.float32)))
  return blocks


def frames(waveform: jax.Array, config: FrontendConfig) -> jax.Array:
  """[..., samples] -> [..., num_frames, window_length] without a gather."""
  num_frames = config.num_frames(waveform.shape[-1])
  hop, window = config.hop_length, config.window_length
  if window % hop:
    # General case: index arithmetic (slower, but any hop works).
    idx = np.arange(num_frames)[:, None] * hop + np.arange(window)
    return waveform[..., idx]
  hops_per_window = window // hop
  num_hops = num_frames + hops_per_window - 1
  # lax slices stay slices under a symbolic batch (indexing would gather).
  blocks = jax.lax.slice_in_dim(waveform, 0, num_hops * hop, axis=-1).reshape(
      waveform.shape[:-1] + (num_hops, hop))
  return jnp.concatenate(
      [jax.lax.slice_in_dim(blocks, k, k + num_frames, axis=-2)
       for k in range(hops_per_window)], axis=-1)


def periodic_hann(n: int) -> np.ndarray:
  return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)


# Long inputs are computed in segments of this many frames: the per-frame
# intermediates (frames, FFT, magnitudes) then stay in cache, which halves the
# time on CPU, and memory stays bounded on hour-long files.
_SEGMENT_FRAMES = 256


def map_segments(per_frame_fn, waveform: jax.Array, config: FrontendConfig
                 ) -> jax.Array:
  """Applies `per_frame_fn` ([n, samples] -> [n, K, frames]) in segments.

  Each segment holds the samples of `_SEGMENT_FRAMES` whole frames, cut on
  the hop grid, so the result is `per_frame_fn(waveform)` up to float32
  rounding (a quantised pixel on a level boundary can move by one).
  """
  hop, num_samples = config.hop_length, waveform.shape[-1]
  total = config.num_frames(num_samples)
  if (total <= _SEGMENT_FRAMES or config.window_length % hop
      or not jax.core.is_constant_shape(waveform.shape)):
    # A symbolic batch (`jax.export`, jax2tf) cannot be grouped below.
    return per_frame_fn(waveform)
  lead = waveform.shape[:-1]
  x = waveform.reshape((-1, num_samples))
  num_segments = -(-total // _SEGMENT_FRAMES)
  extra_hops = config.window_length // hop - 1
  needed = (num_segments * _SEGMENT_FRAMES + extra_hops) * hop
  x = jnp.pad(x, [(0, 0), (0, max(0, needed - num_samples))])[:, :needed]
  hops = x.reshape((x.shape[0], -1, hop))
  index = (np.arange(num_segments)[:, None] * _SEGMENT_FRAMES +
           np.arange(_SEGMENT_FRAMES + extra_hops))
  segments = hops[:, index].reshape((-1, (_SEGMENT_FRAMES + extra_hops) * hop))
  # Sequential groups on CPU keep the working set in cache; accelerators
  # take every segment at once.
  group = 4 if jax.default_backend() == "cpu" else segments.shape[0]
  out = jax.lax.map(per_frame_fn, segments, batch_size=group)
  out = out.reshape((x.shape[0], num_segments) + out.shape[1:])
  out = jnp.moveaxis(out, 1, -2).reshape(
      (x.shape[0],) + out.shape[2:-1] + (num_segments * _SEGMENT_FRAMES,))
  return out[..., :total].reshape(lead + out.shape[1:-1] + (total,))


def _mel_image(waveform: jax.Array, config: FrontendConfig) -> jax.Array:
  """[..., samples] -> [..., mel, frames]."""
  return map_segments(lambda x: _dense_mel_image(x, config), waveform, config)


def _dense_mel_image(waveform: jax.Array, config: FrontendConfig
                     ) -> jax.Array:
  window = periodic_hann(config.window_length)
  x = frames(waveform.astype(jnp.float32) * config.waveform_scale, config)
  # The 512-sample window sits at the start of each 1024-point FFT frame.
  spectrum = jnp.fft.rfft(x * window.astype(np.float32), n=config.fft_length)
  magnitude = jnp.abs(spectrum) * np.float32(2.0 / window.sum())
  mel = jnp.concatenate([
      jnp.einsum("...fk,km->...fm",
                 jax.lax.slice_in_dim(magnitude, lo, hi, axis=-1), w,
                 precision=jax.lax.Precision.HIGHEST)
      for lo, hi, w in _mel_blocks(mel_weight_matrix(config))], axis=-1)
  image = config.db_to_pixels(
      20.0 * jnp.log10(jnp.maximum(config.magnitude_floor, mel)))
  if config.quantize:
    image = jnp.floor(image)
  # [..., frames, mel] -> [..., mel, frames], highest band in row 0.
  return jnp.flip(jnp.swapaxes(image, -1, -2), axis=-2)


@functools.partial(jax.jit, static_argnames="config")
def _mel_image_jit(waveform, config):
  return _mel_image(waveform, config)


def mel_image(waveform, preset: str | FrontendConfig = "inatsounds"
              ) -> jax.Array:
  """The paper's spectrogram image of float waveforms in [-1, 1].

  Args:
    waveform: float `[batch, samples]` (or one `[samples]`) at 22,050 Hz.
    preset: a registered preset name or a `FrontendConfig`.

  Returns:
    float32 `[batch, num_mel_bins, frames]` (or `[num_mel_bins, frames]`)
    with values in 0..255 (integer levels for quantised presets), frames =
    1 + (samples - 512) // 128.
  """
  config = get_config(preset)
  waveform = jnp.asarray(waveform)
  if waveform.ndim not in (1, 2):
    raise ValueError(f"waveform must be [samples] or [batch, samples], got "
                     f"shape {waveform.shape}")
  if waveform.shape[-1] < config.window_length:
    raise ValueError(f"waveform has {waveform.shape[-1]} samples, fewer "
                     f"than one window ({config.window_length})")
  return _mel_image_jit(waveform, config)


class Frontend(nn.Module):
  """The spectrogram as a Flax module, so a model carries its frontend.

  Takes int16 or float waveforms `[batch, samples]`; int16 is scaled to
  [-1, 1] with the dataset's scale (`audio.INT16_SCALE`). The config is a
  module attribute and so part of every exported model's definition.
  """
  config: FrontendConfig = INATSOUNDS

  @nn.compact
  def __call__(self, waveform: jax.Array) -> jax.Array:
    if jnp.issubdtype(waveform.dtype, jnp.integer):
      waveform = waveform.astype(jnp.float32) / np.float32(audio.INT16_SCALE)
    return _mel_image(waveform, self.config)


class ImageFrontend(nn.Module):
  """uint8 images `[batch, height, width, channels]` -> float `[batch,
  height, width]` 0..255, the channel mean (`ImageInputConfig`)."""
  config: ImageInputConfig = ImageInputConfig()

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    return images.astype(jnp.float32).mean(axis=-1)


def module(config: "FrontendConfig | ImageInputConfig") -> nn.Module:
  """The frontend module of a config: spectrogram of waveforms, or images."""
  if isinstance(config, ImageInputConfig):
    return ImageFrontend(config)
  return Frontend(config)
