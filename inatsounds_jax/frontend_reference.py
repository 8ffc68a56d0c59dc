"""A float64 numpy/scipy reference of the spectrogram image, for checking.

Written from the iNatSounds paper's spectrogram definition (the steps in
`frontend`'s docstring) with scipy's STFT, independently of the JAX
path in `frontend.py` (only the mel matrix is shared, and that is checked
against TensorFlow's on its own). Slow; used by tests and benchmarks.
"""

from __future__ import annotations

import numpy as np
from scipy import signal

from inatsounds_jax import frontend


def reference_mel_image(waveform: np.ndarray,
                        preset: str | frontend.FrontendConfig = "inatsounds"
                        ) -> np.ndarray:
  """float64 `[num_mel_bins, frames]` image of one 1-D float waveform."""
  config = frontend.get_config(preset)
  x = np.asarray(waveform, np.float64) * config.waveform_scale
  window = signal.get_window("hann", config.window_length, fftbins=True)
  # scipy scales by 1 / sum(window) and doubles nothing: undo, then apply
  # the paper's |X| * 2 / sum(window).
  _, _, stft = signal.stft(
      x, nperseg=config.window_length, noverlap=config.window_length -
      config.hop_length, nfft=config.fft_length, window=window,
      boundary=None, padded=False, detrend=False, return_onesided=True)
  magnitude = np.abs(stft * window.sum()) * 2.0 / window.sum()
  mel = magnitude.T @ frontend.mel_weight_matrix(config)
  db = np.clip(20.0 * np.log10(np.maximum(config.magnitude_floor, mel)),
               config.db_min, config.db_max)
  image = (db - config.db_min) / (config.db_max - config.db_min) * 255.0
  if config.quantize:
    image = np.floor(image)
  return image.T[::-1]
