"""Frontend and input-pipeline speed, against named alternatives.

    python benchmarks/frontend.py [--batch 16 --seconds 60 --repeats 5]

On one batch of synthetic-corpus audio (looped to the length asked) it times:
this library's jitted frontend; librosa (`melspectrogram` + `amplitude_to_db`,
same parameters); the float64 numpy/scipy reference; and the bare FFT of the
same frames (window, rfft, |.|), which on a CPU is the floor, both in one
pass and in
the frontend's cache-sized segments. Then the input
pipeline's windows/s from TFDS records (train crops and dense eval windows).
Prints a table; ratios are against librosa and the bare FFT in this process.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from inatsounds_jax import data  # pylint: disable=g-import-not-at-top
from inatsounds_jax import data_sources  # pylint: disable=g-import-not-at-top
from inatsounds_jax import frontend  # pylint: disable=g-import-not-at-top
from inatsounds_jax import frontend_reference  # pylint: disable=g-import-not-at-top
from inatsounds_jax import input_pipeline as ip  # pylint: disable=g-import-not-at-top

CFG = frontend.PRESETS.get("inatsounds")


def _best_time(fn, repeats: int) -> float:
  fn()  # Warm up (compiles).
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def _dense_bare_fft(x):
  """|rfft| of the windowed frames, [n, bins, frames] like the image."""
  frames = frontend.frames(x, CFG)
  window = frontend.periodic_hann(CFG.window_length).astype(np.float32)
  spectrum = jnp.abs(jnp.fft.rfft(frames * window, n=CFG.fft_length))
  return jnp.swapaxes(spectrum, -1, -2)


_bare_fft = jax.jit(_dense_bare_fft)
# The same segmentation as the frontend uses, so the floor is fair.
_bare_fft_segmented = jax.jit(
    functools.partial(frontend.map_segments, _dense_bare_fft, config=CFG))


def _librosa(batch):
  import librosa  # pylint: disable=import-outside-toplevel
  mel = librosa.feature.melspectrogram(
      y=batch, sr=22050, n_fft=1024, hop_length=128, win_length=512,
      window="hann", center=False, power=1.0, n_mels=128, fmin=50.0,
      fmax=11025.0, htk=True, norm=None)
  return librosa.amplitude_to_db(mel, ref=1.0, amin=1e-10, top_db=None)


def _audio_batch(builder, batch: int, seconds: float) -> np.ndarray:
  samples = int(seconds * 22050)
  out = []
  for ex in builder.as_dataset(split="train").take(batch):
    wave = ex["audio"].numpy().astype(np.float32) / 32767.0
    out.append(np.resize(wave, samples))  # Loop short files to the length.
  return np.stack(out)


def frontend_rows(batch: np.ndarray, repeats: int) -> list[tuple]:
  frames_total = batch.shape[0] * CFG.num_frames(batch.shape[1])
  audio_s = batch.size / 22050
  device_batch = jax.device_put(batch)
  rows = []
  timings = {
      "inatsounds_jax (jit)": _best_time(
          lambda: frontend.mel_image(device_batch).block_until_ready(),
          repeats),
      "bare FFT, same frames (jit)": _best_time(
          lambda: _bare_fft(device_batch).block_until_ready(), repeats),
      "bare FFT, same frames and segments (jit)": _best_time(
          lambda: _bare_fft_segmented(device_batch).block_until_ready(),
          repeats),
      "librosa 0.11": _best_time(lambda: _librosa(batch), repeats),
      "numpy/scipy float64 reference": _best_time(
          lambda: [frontend_reference.reference_mel_image(b) for b in batch],
          max(1, repeats // 2)),
  }
  for name, seconds in timings.items():
    rows.append((name, frames_total / 512 / seconds, audio_s / seconds,
                 timings["librosa 0.11"] / seconds,
                 timings["bare FFT, same frames and segments (jit)"] /
                 seconds))
  return rows


def pipeline_rows(builder, batch: int, num_batches: int) -> list[tuple]:
  rows = []
  config = ip.WindowConfig()
  for name, ds in (
      ("train crops (tf.data from TFDS)",
       data_sources.train_dataset(
           [data_sources.tfds_source("train_split", {"split": "train"}, 1.0,
                                     builder)], batch, config,
           process_index=0, process_count=1)),
      ("eval dense windows (tf.data from TFDS)",
       ip.eval_dataset(builder, "test", batch, config, process_index=0,
                       process_count=1))):
    it = iter(ds)
    next(it)
    start, windows = time.perf_counter(), 0
    for _ in range(num_batches):
      try:
        b = next(it)
      except StopIteration:
        break
      windows += int(b["mask"].numpy().sum()) if "mask" in b else batch
    rows.append((name, windows / (time.perf_counter() - start)))
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--seconds", type=float, default=60.0)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--data_dir", default=os.path.join(
      tempfile.gettempdir(), "inatsounds_bench_tfds"))
  args = parser.parse_args()
  ip.hide_gpus_from_tensorflow()
  builder = data.prepare("synthetic", data_dir=args.data_dir)
  batch = _audio_batch(builder, args.batch, args.seconds)
  cpu = platform.processor() or platform.machine()
  print(f"# {time.strftime('%Y-%m-%d')}, {cpu}, "
        f"{os.cpu_count()} cores, jax {jax.__version__} on "
        f"{jax.devices()[0].platform}; batch {args.batch} x "
        f"{args.seconds:g} s\n")
  print("| frontend | windows/s (512 frames) | real-time factor | "
        "x librosa | x bare FFT (segmented) |")
  print("|---|---:|---:|---:|---:|")
  for name, wps, rtf, vs_librosa, vs_fft in frontend_rows(batch,
                                                          args.repeats):
    print(f"| {name} | {wps:,.1f} | {rtf:,.0f} | {vs_librosa:.2f} | "
          f"{vs_fft:.2f} |")
  print("\n| input pipeline | windows/s |")
  print("|---|---:|")
  for name, wps in pipeline_rows(builder, 64, 30):
    print(f"| {name} | {wps:,.0f} |")


if __name__ == "__main__":
  main()
