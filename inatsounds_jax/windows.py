"""Where a recording's model windows lie, and cutting them: numpy, no TF.

Every window is cut on the frame grid of the whole-file spectrogram (starts
at a multiple of the hop), so the frontend applied to a window gives
exactly those frames of the whole file. `cut_windows` is the one function
that cuts windows and `eval_layout` the one dense layout: the input
pipeline runs both inside its tf.data graph (with `input_pipeline`'s
TensorFlow `ArrayOps`), prediction runs them on numpy here, so prediction
and export need not import TensorFlow.

- Eval / prediction: dense windows every `eval_stride_frames`, centred
  zero padding so the last window fits (the iNatSounds paper's evaluation
  protocol, Chasmai et al. 2025); `Layout` holds them for one
  recording, and `chunked_windows` cuts them chunk by chunk as a recording
  is decoded, equal to cutting the whole file.
- Train: `train_layout`, one random window per recording (its start
  uniform over the frame grid; a recording shorter than a window centred
  in zeros), given the uniform draw of the caller's random numbers (TF's
  stateless ones in the input pipeline, Grain's per-element generator in
  the window store), cut by the same `cut_windows`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from inatsounds_jax import frontend as frontend_lib


@dataclasses.dataclass(frozen=True)
class WindowConfig:
  """How recordings are cut into model windows."""
  window_frames: int = 512  # About 2.97 s.
  eval_stride_frames: int = 256
  frontend: frontend_lib.FrontendConfig = frontend_lib.INATSOUNDS

  @property
  def window_samples(self) -> int:
    return self.frontend.num_samples(self.window_frames)


@dataclasses.dataclass(frozen=True)
class ArrayOps:
  """The array operations windowing needs, from one array library.

  `NUMPY` here; `input_pipeline.TENSORFLOW` for tensors in a tf.data graph
  (whose shapes are only known when it runs).
  """
  length: Callable  # 1-D array -> its length.
  max: Callable  # Array -> its largest element.
  maximum: Callable  # Elementwise maximum.
  where: Callable  # (condition, x, y).
  arange: Callable  # n -> 0 .. n - 1.
  pad: Callable  # (1-D array, left, right) -> zero-padded.
  # (1-D array, first samples [n], size) -> [n, size] windows.
  take_windows: Callable
  float32: Callable  # Array -> float32 array.


def _numpy_pad(x: np.ndarray, left: int, right: int) -> np.ndarray:
  out = np.zeros(left + len(x) + right, x.dtype)
  out[left:left + len(x)] = x
  return out


def _numpy_take_windows(x: np.ndarray, first: np.ndarray, size: int
                        ) -> np.ndarray:
  first = np.asarray(first)
  if first.shape == (1,):  # A training window: one slice.
    return x[None, int(first[0]):int(first[0]) + size].copy()
  return np.lib.stride_tricks.sliding_window_view(x, size)[first]


# np.pad and sliding_window_view cost tens of microseconds of Python each,
# as much as reading a training window from the window store.
NUMPY = ArrayOps(
    length=len, max=np.max, maximum=np.maximum, where=np.where,
    arange=np.arange, pad=_numpy_pad, take_windows=_numpy_take_windows,
    float32=lambda x: np.asarray(x, np.float32))


def cut_windows(waveform, start_frames, left_pad_frames,
                config: WindowConfig, ops: ArrayOps = NUMPY):
  """Windows `[n, window_samples]` of a 1-D waveform.

  The waveform is first padded on the left with `left_pad_frames` hops of
  zeros; window k then covers frames start_frames[k] ..
  start_frames[k] + window_frames - 1 of the padded signal. Zeros are added
  on the right as needed.
  """
  hop = config.frontend.hop_length
  left = left_pad_frames * hop
  needed = ops.max(start_frames) * hop + config.window_samples
  right = ops.maximum(0, needed - left - ops.length(waveform))
  return ops.take_windows(ops.pad(waveform, left, right), start_frames * hop,
                          config.window_samples)


def eval_layout(num_samples, config: WindowConfig, ops: ArrayOps = NUMPY):
  """(start frames, left padding in frames) of the dense eval windows.

  n = 1 if the file has at most one window of frames, else
  ceil((frames - window) / stride) + 1; the padding that makes the last
  window fit is split evenly, the odd frame on the right.
  """
  frames = config.frontend.num_frames(num_samples)
  window, stride = config.window_frames, config.eval_stride_frames
  n = ops.where(frames <= window, 1,
                (frames - window + stride - 1) // stride + 1)
  pad = (n - 1) * stride + window - frames
  return ops.arange(n) * stride, pad // 2


def train_layout(num_samples, draw: Callable, config: WindowConfig,
                 ops: ArrayOps = NUMPY):
  """(start frame, left padding in frames) of one random training window.

  The start is `draw(n)`, an integer uniform in [0, n), over the n window
  starts the recording's frames allow; a recording shorter than a window
  starts at 0 padded by half the missing frames (centred, the odd frame on
  the right as in `eval_layout`).
  """
  frames = config.frontend.num_frames(num_samples)
  slack = frames - config.window_frames
  start = draw(ops.maximum(slack, 0) + 1)
  return (ops.where(slack >= 0, start, 0),
          ops.where(slack >= 0, 0, -slack // 2))


def events_in_windows(event_start_s, event_end_s, first_frames,
                      config: WindowConfig, ops: ArrayOps = NUMPY):
  """bool `[windows, events]`: which events (seconds, float32) overlap each
  training window, the window given by its first frame in the unpadded
  signal (negative when it starts in padding). In float32 whichever the
  array library, so the input pipeline and the window store agree."""
  seconds = np.float32(config.frontend.hop_length
                       / config.frontend.sample_rate)
  begin = ops.float32(first_frames) * seconds
  end = begin + np.float32(config.window_samples
                           / config.frontend.sample_rate)
  return ((event_start_s[None, :] < end[:, None]) &
          (event_end_s[None, :] > begin[:, None]))


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where a recording's dense evaluation windows lie (`eval_layout` at
  `windows.eval_stride_frames`): the first sample of each, negative where a
  window starts in the left padding."""
  first_sample: np.ndarray  # [n] int64
  num_samples: int
  windows: WindowConfig

  @classmethod
  def of(cls, num_samples: int, windows: WindowConfig) -> Layout:
    starts, left = eval_layout(num_samples, windows)
    first = (np.asarray(starts, np.int64) - int(left)) * (
        windows.frontend.hop_length)
    return cls(first, num_samples, windows)

  def times(self, first: int = 0, stop: int | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) seconds of windows `first` .. `stop` - 1 (all by
    default), clipped to the recording."""
    rate = self.windows.frontend.sample_rate
    first_sample = self.first_sample[first:stop]
    start = np.maximum(first_sample, 0)
    end = np.minimum(first_sample + self.windows.window_samples,
                     self.num_samples)
    return start / rate, end / rate


class LengthChanged(Exception):
  """A stream's length differs from its layout's (a header that was wrong);
  cut it again with `actual`."""

  def __init__(self, actual: int):
    super().__init__(actual)
    self.actual = actual


def chunked_windows(blocks: Iterable[np.ndarray], layout: Layout,
                    chunk_samples: int) -> Iterator[np.ndarray]:
  """int16 windows `[k, window_samples]` of a block stream, in order.

  Windows are cut whenever `chunk_samples` samples have arrived, each with
  `cut_windows` on the buffered samples, so the result equals cutting the
  whole file at once; only the samples of windows not yet cut are kept.

  Raises:
    LengthChanged: the stream's length differs from `layout.num_samples`.
  """
  hop = layout.windows.frontend.hop_length
  size = layout.windows.window_samples
  first = layout.first_sample
  pending: list[np.ndarray] = []
  buffer_start = 0  # Sample index of the buffer's first sample.
  received = 0
  next_window = 0

  def cut(upto: int, final: bool):
    nonlocal pending, buffer_start, next_window
    ready = len(first) if final else int(np.searchsorted(
        first + size, upto, side="right"))
    if ready <= next_window:
      return None
    buffer = np.concatenate(pending) if pending else np.zeros(0, np.int16)
    # Frames relative to the buffer; windows before its start are padding.
    relative = (first[next_window:ready] - buffer_start) // hop
    left = int(max(0, -relative.min()))
    out = cut_windows(buffer, relative + left, left, layout.windows)
    next_window = ready
    end = buffer_start + len(buffer)
    # The next window's first sample (or the end: samples not yet received
    # are never dropped, whatever the hop).
    keep_from = min(max(0, int(first[ready])) if ready < len(first) else end,
                    end)
    pending = [buffer[keep_from - buffer_start:]]
    buffer_start = keep_from
    return out

  buffered = 0
  for block in blocks:
    pending.append(block)
    received += len(block)
    buffered += len(block)
    if buffered >= chunk_samples:
      buffered = 0
      windows = cut(received, final=False)
      if windows is not None:
        yield windows
  if received != layout.num_samples:
    raise LengthChanged(received)
  windows = cut(received, final=True)
  if windows is not None:
    yield windows
