"""Reading and writing recordings in the dataset's canonical form.

The canonical form is what the iNatSounds release ships: mono 16-bit PCM at
22,050 Hz. Anything else that libsndfile can read (other rates, stereo, 24-bit,
float, FLAC) is converted to it; anything broken raises `AudioError` with a
reason a person can act on.
"""

from __future__ import annotations

import io
import math
import struct

import numpy as np
import soundfile
from scipy import signal

SAMPLE_RATE = 22_050
# REFERENCE section 2: float audio = int16 / 32767.
INT16_SCALE = 32767.0


class AudioError(ValueError):
  """A recording that cannot be turned into a waveform, with the reason."""


def _check_wav_not_truncated(data: bytes) -> None:
  """Raises if a RIFF/WAVE file's data chunk is shorter than its header says.

  libsndfile silently returns the frames that are present, which would turn a
  half-downloaded file into a short but valid-looking example.
  """
  if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
    return
  offset = 12
  while offset + 8 <= len(data):
    chunk_id = data[offset:offset + 4]
    (chunk_size,) = struct.unpack("<I", data[offset + 4:offset + 8])
    if chunk_id == b"data":
      available = len(data) - offset - 8
      # 0xFFFFFFFF and 0 are used by streaming writers for "unknown length".
      if chunk_size not in (0, 0xFFFFFFFF) and chunk_size > available:
        raise AudioError(
            f"truncated WAV: header declares {chunk_size} bytes of audio, "
            f"file holds {available}")
      return
    offset += 8 + chunk_size + (chunk_size & 1)
  raise AudioError("WAV file has no data chunk")


def to_int16(waveform: np.ndarray) -> np.ndarray:
  """Float audio in [-1, 1] to int16 with the dataset's 32767 scale."""
  scaled = np.round(np.asarray(waveform, np.float64) * INT16_SCALE)
  return np.clip(scaled, -32768, 32767).astype(np.int16)


def decode_audio(data: bytes) -> np.ndarray:
  """Decodes a recording's bytes to mono int16 at `SAMPLE_RATE`.

  Mono 16-bit input at 22,050 Hz passes through bit for bit. Stereo is
  averaged, other rates are resampled with a polyphase filter.

  Raises:
    AudioError: empty, corrupt or truncated input, or no samples.
  """
  if not data:
    raise AudioError("empty file (0 bytes)")
  _check_wav_not_truncated(data)
  try:
    with soundfile.SoundFile(io.BytesIO(data)) as f:
      native_int16 = f.subtype == "PCM_16"
      samples = f.read(dtype="int16" if native_int16 else "float64",
                       always_2d=True)
      rate = f.samplerate
  except (soundfile.LibsndfileError, RuntimeError, TypeError) as e:
    raise AudioError(f"unreadable audio: {e}") from e
  if samples.shape[0] == 0:
    raise AudioError("audio has no samples")
  if native_int16 and samples.shape[1] == 1 and rate == SAMPLE_RATE:
    return samples[:, 0].copy()
  if native_int16:
    mono = samples.astype(np.float64).mean(axis=1) / INT16_SCALE
  else:
    mono = samples.mean(axis=1)
  if rate != SAMPLE_RATE:
    g = math.gcd(rate, SAMPLE_RATE)
    mono = signal.resample_poly(mono, SAMPLE_RATE // g, rate // g)
  if not np.all(np.isfinite(mono)):
    raise AudioError("audio contains NaN or infinite samples")
  return to_int16(mono)


def read_audio_file(path: str) -> np.ndarray:
  """`decode_audio` on a file; errors name the file."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise AudioError(f"cannot read {path}: {e.strerror}") from e
  try:
    return decode_audio(data)
  except AudioError as e:
    raise AudioError(f"{path}: {e}") from e


def write_wav(path_or_file, waveform_int16: np.ndarray,
              sample_rate: int = SAMPLE_RATE) -> None:
  """Writes mono 16-bit PCM WAV, the release's format."""
  soundfile.write(path_or_file, np.asarray(waveform_int16, np.int16),
                  sample_rate, subtype="PCM_16", format="WAV")
