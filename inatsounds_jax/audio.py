"""Reading and writing recordings in the dataset's canonical form.

The canonical form is what the iNatSounds release ships: mono 16-bit PCM at
22,050 Hz. Anything else that libsndfile can read (other rates, stereo, 24-bit,
float, FLAC) is converted to it, samples beyond full scale clipped with a
warning; anything broken raises `AudioError` with a reason a person can act
on. Decoding streams: the output is the only full-length array it holds.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import struct
from collections.abc import Iterator
from typing import BinaryIO

from absl import logging
import numpy as np
import soundfile
from scipy import signal

from inatsounds_jax import registry

SAMPLE_RATE = 22_050
# What `find_audio` takes for a recording (case-insensitive).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
# The iNatSounds spectrogram is computed on float audio = int16 / 32767.
INT16_SCALE = 32767.0


# Frames decoded at a time: a 48 kHz stereo block in float64 is 1 MB, so
# decoding holds the output and a few blocks, never the whole file as float.
_BLOCK_FRAMES = 1 << 16


class AudioError(ValueError):
  """A recording that cannot be turned into a waveform, with the reason.

  Attributes:
    kind: the problem's short name for summaries ("truncated WAV",
      "unreadable audio", ...); the message is the full sentence.
  """

  def __init__(self, kind: str, message: str):
    super().__init__(message)
    self.kind = kind


def _check_wav_not_truncated(f: BinaryIO, size: int) -> None:
  """Raises if a RIFF/WAVE file's data chunk is shorter than its header says.

  libsndfile silently returns the frames that are present, which would turn a
  half-downloaded file into a short but valid-looking example. Reads only the
  chunk headers of `f` (`size` bytes long).
  """
  f.seek(0)
  head = f.read(12)
  if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
    return
  offset = 12
  while offset + 8 <= size:
    f.seek(offset)
    chunk = f.read(8)
    chunk_id, (chunk_size,) = chunk[:4], struct.unpack("<I", chunk[4:])
    if chunk_id == b"data":
      available = size - offset - 8
      # 0xFFFFFFFF and 0 are used by streaming writers for "unknown length".
      if chunk_size not in (0, 0xFFFFFFFF) and chunk_size > available:
        raise AudioError(
            "truncated WAV", f"truncated WAV: header declares {chunk_size} "
            f"bytes of audio, file holds {available}")
      return
    offset += 8 + chunk_size + (chunk_size & 1)
  raise AudioError("no data chunk", "WAV file has no data chunk")


def to_int16(waveform: np.ndarray) -> np.ndarray:
  """Float audio in [-1, 1] to int16 with the dataset's 32767 scale.

  Samples beyond full scale are clipped to it: int16 cannot hold them, and
  clipping keeps the rest of the recording as it is (scaling it down would
  change every sample). What reaches int16's range is kept, down to -32768
  (-1.00003), which int16 recordings hold.
  """
  return _to_int16_counting(waveform)[0]


def _to_int16_counting(waveform: np.ndarray
                       ) -> tuple[np.ndarray, int, float]:
  """`to_int16`, the number of samples it clipped and the largest magnitude
  among them (0.0 when none)."""
  x = np.asarray(waveform, np.float64)
  scaled = np.round(x * INT16_SCALE)
  beyond = (scaled > 32767) | (scaled < -32768)
  count = int(np.count_nonzero(beyond))
  peak = float(np.abs(x[beyond]).max()) if count else 0.0
  return np.clip(scaled, -32768, 32767).astype(np.int16), count, peak


def _resample_filter(up: int, down: int) -> tuple[np.ndarray, int]:
  """`scipy.signal.resample_poly`'s filter (Kaiser, beta 5) and output offset.

  The filter is front-padded with zeros so that output m is
  `upfirdn(h, x, up, down)[m + offset]`, as resample_poly computes it.
  """
  max_rate = max(up, down)
  half_len = 10 * max_rate
  h = signal.firwin(2 * half_len + 1, 1.0 / max_rate,
                    window=("kaiser", 5.0)) * up
  pre_pad = down - half_len % down
  return np.concatenate([np.zeros(pre_pad), h]), (half_len + pre_pad) // down


class StreamingResampler:
  """Polyphase resampling by `up / down`, fed in pieces, equal to whole-file.

  Output m of `scipy.signal.resample_poly(x, up, down)` (zero padding) is
  `sum_k h[k] u[(m + offset) down - k]`, with u the input stuffed with zeros
  (u[n up] = x[n]): it needs the inputs n with
  `(m + offset) down - len(h) < n up <= (m + offset) down`. `upfirdn` on a
  slice `x[start:]`, `start` a multiple of `down`, computes the same sums at
  index `m + offset - start up / down` as long as the slice holds every input
  that output needs, so each piece keeps only that overlap of the last.
  """

  def __init__(self, up: int, down: int):
    self.up, self.down = up, down
    self._h, self._offset = _resample_filter(up, down)
    self._pending = np.zeros(0)  # Inputs from `_start` on.
    self._start = 0  # Index of _pending[0]: a multiple of `down`.
    self._received = 0
    self._emitted = 0

  def output_length(self, num_inputs: int) -> int:
    """Outputs for `num_inputs` inputs: ceil(num_inputs up / down)."""
    return -(-num_inputs * self.up // self.down)

  def _first_input(self, m: int) -> int:
    """Start of the slice output m needs: a multiple of `down`, >= 0."""
    first = -(-((m + self._offset) * self.down - len(self._h) + 1) // self.up)
    return max(0, first) // self.down * self.down

  def _emit(self, end: int) -> np.ndarray:
    """Outputs `_emitted` to `end` (exclusive); drops inputs not needed."""
    if end <= self._emitted:
      return np.zeros(0)
    y = signal.upfirdn(self._h, self._pending, self.up, self.down)
    first = self._emitted + self._offset - self._start * self.up // self.down
    out = y[first:first + end - self._emitted]
    self._emitted = end
    start = self._first_input(end)
    self._pending = self._pending[start - self._start:]
    self._start = start
    return out

  def process(self, x: np.ndarray) -> np.ndarray:
    """Takes the next inputs; returns every output they complete."""
    self._pending = np.concatenate([self._pending, x])
    self._received += len(x)
    # Output m is complete once (m + offset) down < received up.
    return self._emit(self.output_length(self._received) - self._offset)

  def finish(self) -> np.ndarray:
    """The remaining outputs (zeros after the end, as resample_poly)."""
    self._pending = np.concatenate(
        [self._pending, np.zeros(len(self._h) // self.up + 1)])
    return self._emit(self.output_length(self._received))


class BlockDecoder:
  """A recording decoded block by block: mono int16 at `SAMPLE_RATE`.

  `num_samples` is the length the header declares (after resampling);
  iterating yields consecutive int16 blocks whose concatenation is exactly
  `decode_audio`'s output. A file whose samples end early yields fewer
  (`decode_audio` trims to what came); one that declares no length, or
  whose samples are unreadable, raises `AudioError` while iterating. Use as
  a context manager (it holds the open sound file).

  Samples beyond full scale (a float file louder than [-1, 1], or the
  overshoot of resampling a full-scale one) are clipped to it (`to_int16`);
  `clipped_samples` counts them so far and `clipped_peak` is the largest
  magnitude among them (0.0 while none), in full-scale units (1.0 = 32767).
  Once the file is decoded (or the decoder closed), a file with clipped
  samples is reported in one warning naming it and its peak
  (`clipping_report`), unless `report_clipping` is False: a caller that
  reports problems per file itself (prediction) says it once, its own way.
  """

  def __init__(self, f: BinaryIO, name: str | None = None,
               report_clipping: bool = True):
    self._name = name
    f.seek(0, io.SEEK_END)
    size = f.tell()
    if size == 0:
      self._fail("empty file", "empty file (0 bytes)")
    try:
      _check_wav_not_truncated(f, size)
    except AudioError as e:
      self._fail(e.kind, str(e))
    f.seek(0)
    with self._libsndfile_errors():
      self._file = soundfile.SoundFile(f)
    sf = self._file
    self._native_int16 = sf.subtype == "PCM_16"
    self._passthrough = (self._native_int16 and sf.channels == 1
                         and sf.samplerate == SAMPLE_RATE)
    self._resampler = None
    if sf.samplerate != SAMPLE_RATE:
      g = math.gcd(sf.samplerate, SAMPLE_RATE)
      self._resampler = StreamingResampler(SAMPLE_RATE // g,
                                           sf.samplerate // g)
    self.num_samples = (self._resampler.output_length(sf.frames)
                        if self._resampler else sf.frames)
    self.clipped_samples = 0
    self.clipped_peak = 0.0
    self._clipping_reported = not report_clipping

  def _fail(self, kind: str, reason: str):
    raise AudioError(kind, f"{self._name}: {reason}" if self._name
                     else reason)

  @contextlib.contextmanager
  def _libsndfile_errors(self):
    try:
      yield
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as e:
      # libsndfile's own text names the file object ("<_io.BytesIO ...>").
      reason = getattr(e, "error_string", None) or str(e)
      self._fail("unreadable audio", f"unreadable audio: {reason}")

  def __enter__(self) -> "BlockDecoder":
    return self

  def __exit__(self, *exc) -> None:
    self._file.close()
    self._report_clipping()

  def _to_int16(self, mono: np.ndarray) -> np.ndarray:
    out, count, peak = _to_int16_counting(mono)
    self.clipped_samples += count
    self.clipped_peak = max(self.clipped_peak, peak)
    return out

  def clipping_report(self) -> str:
    """One sentence naming the file, how many samples were clipped to full
    scale and their peak ("" while none were)."""
    if not self.clipped_samples:
      return ""
    return (f"{self._name or 'a recording'}: {self.clipped_samples} samples "
            f"beyond full scale (peak {self.clipped_peak:.3g}, 1.0 = full "
            "scale) were clipped to it.")

  def _report_clipping(self) -> None:
    if self.clipped_samples and not self._clipping_reported:
      self._clipping_reported = True
      logging.warning("%s", self.clipping_report())

  def __iter__(self) -> Iterator[np.ndarray]:
    written = 0
    with self._libsndfile_errors():
      for block in self._file.blocks(
          _BLOCK_FRAMES, dtype="int16" if self._native_int16 else "float64",
          always_2d=True):
        if self._passthrough:
          out = block[:, 0].copy()
        else:
          if self._native_int16:
            mono = block.astype(np.float64).mean(axis=1) / INT16_SCALE
          else:
            mono = block.mean(axis=1)
          if not np.all(np.isfinite(mono)):
            self._fail("non-finite samples",
                       "audio contains NaN or infinite samples")
          out = self._to_int16(self._resampler.process(mono)
                               if self._resampler else mono)
        written += len(out)
        yield out
      if self._resampler:
        out = self._to_int16(self._resampler.finish())
        written += len(out)
        yield out
    if written == 0:
      self._fail("no samples", "audio has no samples")
    self._report_clipping()


def decode_audio(data: bytes | BinaryIO, name: str | None = None
                 ) -> np.ndarray:
  """Decodes a recording to mono int16 at `SAMPLE_RATE`.

  Mono 16-bit input at 22,050 Hz passes through bit for bit. Stereo is
  averaged, other rates are resampled exactly as `scipy.signal.resample_poly`
  would resample the whole file. Decoding runs in blocks (`BlockDecoder`), so
  memory holds the int16 output plus a few blocks, whatever the input's
  length, rate or sample format.

  Args:
    data: the file's bytes, or a seekable binary file holding them.
    name: the file's name for error messages.

  Raises:
    AudioError: empty, corrupt or truncated input, or no samples; the message
      starts with `name` when given.
  """
  f = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
  with BlockDecoder(f, name) as decoder:
    out = np.empty(decoder.num_samples, np.int16)
    written = 0
    for block in decoder:
      if written + len(block) > len(out):  # More samples than declared.
        out = np.concatenate([out[:written], np.empty(len(block), np.int16)])
      out[written:written + len(block)] = block
      written += len(block)
  return out if written == len(out) else out[:written].copy()


@contextlib.contextmanager
def open_audio_file(path: str, report_clipping: bool = True
                    ) -> Iterator[BlockDecoder]:
  """A `BlockDecoder` streaming `path` from disk; errors name the file.

  Raises:
    AudioError: as `decode_audio`, or the file cannot be opened.
  """
  try:
    f = open(path, "rb")
  except OSError as e:
    raise AudioError("unreadable file",
                     f"cannot read {path}: {e.strerror}") from e
  with f, BlockDecoder(f, name=path,
                       report_clipping=report_clipping) as decoder:
    yield decoder


def header_seconds(path: str) -> float:
  """A recording's duration as its header declares it, 0 when the header
  cannot be read (decoding will report the file): for progress bars, never
  for windows (a few compressed files' headers are wrong)."""
  try:
    return soundfile.info(path).duration
  except Exception:  # pylint: disable=broad-except
    return 0.0


def read_audio_file(path: str) -> np.ndarray:
  """`decode_audio` on a file, streamed from disk; errors name the file."""
  try:
    f = open(path, "rb")
  except OSError as e:
    raise AudioError("unreadable file",
                     f"cannot read {path}: {e.strerror}") from e
  with f:
    return decode_audio(f, name=path)


def write_wav(path_or_file, waveform_int16: np.ndarray,
              sample_rate: int = SAMPLE_RATE) -> None:
  """Writes mono 16-bit PCM WAV, the release's format."""
  soundfile.write(path_or_file, np.asarray(waveform_int16, np.int16),
                  sample_rate, subtype="PCM_16", format="WAV")


class NoAudioError(registry.ConfigError):
  """An input naming no recordings to read (`find_audio`).

  Attributes:
    path: the input as given.
    reason: what is wrong with it, for a message that names the input as
      its caller calls it (a flag, a config field).
  """

  def __init__(self, path: str, reason: str):
    super().__init__(f"{path}: {reason}")
    self.path, self.reason = path, reason


def _inside(base: str, name: str) -> str:
  """A listed name as a relative path that stays inside an output folder:
  the name, or for an absolute one or one climbing out with `..`, its
  absolute path without the root (so outputs mirror it, never escape)."""
  if os.path.isabs(name) or os.pardir in os.path.normpath(name).split(
      os.sep):
    full = os.path.abspath(os.path.join(base, name))
    return os.path.relpath(full, os.path.splitdrive(full)[0] + os.sep)
  return os.path.normpath(name)


def find_audio(path: str) -> list[tuple[str, str]]:
  """(path, path relative to the input) of every recording under `path`.

  `path` is a recording, a folder (searched recursively, sorted), or a
  text file listing recordings one a line (relative to the list's folder;
  an absolute or `..` entry's relative path is its absolute path without
  the root, so outputs named after it stay inside the output folder).
  Recordings are files with an `AUDIO_EXTENSIONS` extension; whether they
  decode is left to decoding.

  Raises:
    NoAudioError: nothing to read, or listed files that do not exist.
  """
  if os.path.isdir(path):
    found = []
    for root, dirs, names in os.walk(path):
      dirs.sort()
      for name in sorted(names):
        if name.lower().endswith(AUDIO_EXTENSIONS):
          full = os.path.join(root, name)
          found.append((full, os.path.relpath(full, path)))
    if not found:
      raise NoAudioError(path, f"no audio files ({', '.join(AUDIO_EXTENSIONS)}"
                         ") in this folder")
    return found
  if not os.path.exists(path):
    raise NoAudioError(path, "no such file or folder")
  if path.lower().endswith(AUDIO_EXTENSIONS):
    return [(path, os.path.basename(path))]
  base = os.path.dirname(os.path.abspath(path))
  try:
    with open(path, encoding="utf-8") as f:
      listed = [line.strip() for line in f]
  except (OSError, UnicodeDecodeError) as e:
    raise NoAudioError(path, "neither a recording "
                       f"({', '.join(AUDIO_EXTENSIONS)}) nor a readable "
                       f"text list of recordings ({e})") from None
  files = [(os.path.join(base, name), _inside(base, name))
           for name in listed if name]
  missing = [f"{path}:{i + 1}: {name}" for i, name in enumerate(listed)
             if name and not os.path.exists(os.path.join(base, name))]
  if missing:
    raise NoAudioError(path, "listed recordings not found:\n  "
                       + "\n  ".join(missing[:20]))
  if not files:
    raise NoAudioError(path, "the list names no recordings")
  return files
