"""Training input at the release's scale: today's path against the window
store, on recordings of 6 s to 10 minutes.

    python benchmarks/input_scale.py [--seconds 4 --lengths 6,30,120,600]

For each length it generates a small synthetic corpus of recordings of
exactly that length (and one with the release's durations,
`--duration_distribution=release`), builds it into TFDS records (TFRecord,
and ArrayRecord with one record per recording) and into a window store
(`window_store.write`), then draws training windows three ways, each in
one process:

- tfrecord: `input_pipeline.train_windows` (tf.data; reads and decodes the
  whole recording per window);
- tfds array_record: Grain over `builder.as_data_source` (random access to
  a recording's record, still read whole), cut like the store's windows;
- window store: `window_store.train_loader`'s pipeline (Grain, reads the
  chunks the window covers);
- store, training stream: what training reads from a store
  (`data_sources.store_stream`: `window_store.TrainStream` in blocks
  made by one tf.data thread), over the store seen at the release's size
  (`_release_sized_store`).

Both Grain paths run over an index of the release's size (`_ReleaseSized`),
one thread reading 16 elements ahead.

Every path is drawn in batches of 64 windows, as training reads them, and
closed before the next is timed. It prints windows/s (wall time), windows
per CPU-second of the process (its threads together: the per-core rate,
robust to other work on the machine), bytes read per window (record bytes
per window for the whole-record paths, the chunk bytes counted by the
store), build MB/s per core (int16 bytes), and the extrapolation to the
full release with the published accelerator throughputs below.
"""

from __future__ import annotations

import argparse
import copy
import gc
import multiprocessing
import os
import platform
import shutil
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import grain.python as grain  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

from inatsounds_jax import data  # pylint: disable=g-import-not-at-top
from inatsounds_jax import data_sources  # pylint: disable=g-import-not-at-top
from inatsounds_jax import input_pipeline  # pylint: disable=g-import-not-at-top
from inatsounds_jax import synthetic  # pylint: disable=g-import-not-at-top
from inatsounds_jax import window_store  # pylint: disable=g-import-not-at-top
from inatsounds_jax import windows  # pylint: disable=g-import-not-at-top
from tfds_builders.inat_sounds import inat_sounds_dataset_builder  # pylint: disable=g-import-not-at-top

CONFIG = input_pipeline.WindowConfig()
# Windows are drawn in batches, as training reads them (`data_sources.
# train_dataset`): a path's per-element Python iteration is not timed.
BATCH = 64
# The release's train split (Chasmai et al. 2025; the dataset's README):
# recordings, hours, and int16 bytes at 22,050 Hz.
RELEASE_RECORDINGS = 137_012
RELEASE_BYTES = 1_200 * 3600 * 22_050 * 2
# Training throughput per accelerator chip, images/s at 224 x 224 (a
# window's spectrogram is resized to that size, `models/image.py`).
# ResNet-50 on A100 is measured and published: NVIDIA DeepLearningExamples,
# PyTorch ResNet50 v1.5 README, DGX A100 80GB, 1 GPU, mixed precision:
# 2,470 img/s. The others are ESTIMATES: that number scaled by each chip's
# published dense bf16 peak (A100 312 TFLOP/s, H100 SXM 989, TPU v4 275,
# TPU v5e 197; NVIDIA's and Google Cloud's data sheets), and ViT-B/16 by
# its forward FLOPs against ResNet-50's (17.6 G / 4.1 G per image,
# Dosovitskiy et al. 2021; He et al. 2016).
_A100_RESNET50 = 2_470.0
_PEAK_TFLOPS = {"A100": 312.0, "H100": 989.0, "TPU v4": 275.0,
                "TPU v5e": 197.0}
_VIT_B_FLOPS_RATIO = 17.6 / 4.1
# Chips and CPU cores of one host (vendor specs: DGX A100 2 x 64-core EPYC
# 7742; DGX H100 2 x 56-core Xeon 8480C; TPU v4 VM 4 chips, 240 vCPUs; TPU
# v5e v5litepod-8 host 8 chips, 224 vCPUs; vCPUs halved to cores).
# One reading thread and a short read-ahead: Grain's default (16 threads,
# 500 elements ahead) would be timed filling its buffer, and polls it per
# element.
_READ_OPTIONS = grain.ReadOptions(num_threads=1, prefetch_buffer_size=16)
_HOSTS = {"A100": (8, 128), "H100": (8, 112), "TPU v4": (4, 120),
          "TPU v5e": (8, 112)}


def _corpus_config(seconds: float | None) -> synthetic.CorpusConfig:
  """Recordings of exactly `seconds` (None: the release's durations)."""
  if seconds is None:
    return synthetic.CorpusConfig(
        num_species=4, num_recordings=60, seed=0, max_duration_s=600.0,
        duration_distribution="release", archives=False)
  # A median far above the cap clips every duration to the cap.
  return synthetic.CorpusConfig(
      num_species=2, num_recordings=8, seed=0, median_duration_s=1e9,
      max_duration_s=float(seconds), long_recording_fraction=0.0,
      archives=False)


def _build(root: str, seconds: float | None) -> dict:
  corpus = os.path.join(root, "corpus")
  synthetic.generate(corpus, _corpus_config(seconds), num_workers=1)
  start = time.process_time()
  records = data.prepare("full", data_dir=os.path.join(root, "tfrecord"),
                         manual_dir=corpus)
  tfds_cpu = time.process_time() - start
  array_records = inat_sounds_dataset_builder.Builder(
      config="full", data_dir=os.path.join(root, "array_record"),
      file_format="array_record")
  array_records.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=corpus))
  start = time.process_time()
  written = window_store.write(records, "train", os.path.join(root, "store"))
  store_cpu = time.process_time() - start
  return {"records": records, "array_records": array_records,
          "tfds_mb_per_cpu_s": _split_bytes(records) / 1e6 / tfds_cpu,
          "store_mb_per_cpu_s": written["bytes"] / 1e6 / store_cpu,
          "store": window_store.WindowStore(os.path.join(root, "store"))}


def _split_bytes(builder) -> int:
  """int16 bytes of every split's audio."""
  return sum(len(x["audio"]) * 2 for x in tfds.as_numpy(
      builder.as_dataset(split="all", shuffle_files=False)))


def _record_bytes_per_window(builder, split: str = "train") -> float:
  """Bytes of a split's record files per recording: what a whole-record
  read costs per window."""
  info = builder.info.splits[split]
  return sum(os.path.getsize(f) for f in info.filepaths) / info.num_examples


def _cpu_seconds() -> float:
  """CPU seconds of this process and its live worker processes (Linux's
  /proc: a worker's time is otherwise only counted when it exits)."""
  ticks = 0
  for child in multiprocessing.active_children():
    try:
      with open(f"/proc/{child.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
      ticks += int(fields[11]) + int(fields[12])  # utime, stime.
    except OSError:
      pass  # Exited.
  return time.process_time() + ticks / os.sysconf("SC_CLK_TCK")


def _rate(stream, seconds: float) -> tuple[float, float, int]:
  """(windows/s, windows per CPU-second, windows drawn with the warm-up)
  over batches of BATCH windows drawn for at least `seconds` (and two
  batches), after two batches of warm-up. The stream is closed after, so
  that its read-ahead threads and workers do not run into the next
  measurement."""
  for _ in range(2):
    next(stream)
  wall, cpu, batches = time.perf_counter(), _cpu_seconds(), 0
  while batches < 2 or time.perf_counter() - wall < seconds:
    next(stream)
    batches += 1
  wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
  del stream
  gc.collect()
  return batches * BATCH / wall, batches * BATCH / cpu, (batches + 2) * BATCH


class _WholeRecordWindow(grain.RandomMapTransform):
  """A TFDS array_record example (decoded whole) -> its training window,
  drawn and cut as the store's."""

  def random_map(self, element, rng):
    audio = element["audio"]
    start, left = windows.train_layout(len(audio), rng.integers, CONFIG)
    return windows.cut_windows(audio, np.array([start]), left, CONFIG)[0]


class _ReleaseSized:
  """A source seen through an index of the release's size (key modulo its
  length): Grain's shuffle costs per element depend on the index size
  (about 1 ms at 15 records, 3 us at 137,012), so the small corpora here
  are read at the release's."""

  def __init__(self, source):
    self.source = source

  def __len__(self) -> int:
    return RELEASE_RECORDINGS

  def __getitem__(self, key):
    return self.source[key % len(self.source)]


def _release_sized_store(store):
  """`store` with RELEASE_RECORDINGS recordings, repeating its own, so that
  Grain's sampler works at the release's index size: its per-recording
  columns seen through `_ReleaseSized`."""
  n = len(store)
  view = copy.copy(store)
  view.index = {key: _ReleaseSized(column)
                for key, column in store.index.items() if len(column) == n}
  view.labels_of = lambda recording, name: store.labels_of(recording % n,
                                                           name)
  view.read_samples = lambda recording, first, stop: store.read_samples(
      recording % n, first, stop)
  return view


def _grain_stream(source, transform) -> iter:
  """`window_store.train_loader`'s pipeline (one process, no workers) over
  `source` at the release's size."""
  return iter(grain.DataLoader(
      data_source=_ReleaseSized(source), sampler=grain.IndexSampler(
          RELEASE_RECORDINGS, shuffle=True, seed=0, num_epochs=None),
      operations=[transform, grain.Batch(BATCH, drop_remainder=True)],
      worker_count=0, read_options=_READ_OPTIONS))


def _batches(windows):
  """A tf.data stream of windows batched as `data_sources.train_dataset`
  batches them."""
  return windows.batch(BATCH, drop_remainder=True).prefetch(
      tf.data.AUTOTUNE).as_numpy_iterator()


def _measure(built: dict, seconds: float, workers: int) -> dict:
  records, store = built["records"], built["store"]
  out = {"tfrecord": _rate(_batches(input_pipeline.train_windows(
      records, "train", CONFIG, seed=0, num_epochs=1, process_index=0,
      process_count=1)), seconds)}
  out["tfds array_record"] = _rate(_grain_stream(
      built["array_records"].as_data_source("train"),
      _WholeRecordWindow()), seconds)
  before = store.bytes_read
  out["window store"] = _rate(_grain_stream(
      grain.RangeDataSource(0, len(store), 1),
      window_store.TrainWindow(store, CONFIG)), seconds)
  per_window = (store.bytes_read - before) / out["window store"][2]
  out["store, training stream"] = _rate(_batches(data_sources.store_stream(
      _release_sized_store(store), CONFIG, 0, 0, 0, 1)), seconds)
  if workers:
    out[f"store, training stream, {workers} workers"] = _rate(
        _batches(data_sources.store_stream(_release_sized_store(store),
                                           CONFIG, 0, 0, 0, 1, workers)),
        seconds)
  return {"rates": {path: rate[:2] for path, rate in out.items()},
          "bytes": {
              "tfrecord": _record_bytes_per_window(records),
              "tfds array_record": _record_bytes_per_window(
                  built["array_records"]),
              **{path: per_window for path in out if path.startswith(
                  ("window store", "store,"))}}}


def _extrapolation(realistic: dict, build: dict) -> None:
  # With worker processes, their per-core rate (hand-over included).
  store_per_core = [rate for path, rate in realistic["rates"].items()
                    if path.startswith("store, training stream")][-1][1]
  old_per_core = realistic["rates"]["tfrecord"][1]
  print("\n| full release (190 GB int16) | 1 core | 16 cores | 64 cores "
        "| 256 cores |\n|---|---:|---:|---:|---:|")
  for name, rate in (("TFDS build (decode + write)", build["tfds"]),
                     ("window store write", build["store"])):
    hours = [RELEASE_BYTES / 1e6 / (rate * n) / 3600 for n in
             (1, 16, 64, 256)]
    print(f"| {name}, hours (at {rate:.0f} MB/s per core) | "
          + " | ".join(f"{h:,.2f}" for h in hours) + " |")
  print("\n| host | chips | cores | ResNet-50 windows/s needed | ViT-B/16 "
        "needed | training stream windows/s (every core a worker) | hosts "
        "fed, ResNet-50 | "
        "ViT-B/16 | today's path, ResNet-50 |\n|---|---:|---:|---:|---:|"
        "---:|---:|---:|---:|")
  for name, (chips, cores) in _HOSTS.items():
    resnet = chips * _A100_RESNET50 * _PEAK_TFLOPS[name] / _PEAK_TFLOPS[
        "A100"]
    vit = resnet / _VIT_B_FLOPS_RATIO
    supply = store_per_core * cores
    print(f"| {name} | {chips} | {cores} | {resnet:,.0f} | {vit:,.0f} | "
          f"{supply:,.0f} | {supply / resnet:.1f} | {supply / vit:.1f} | "
          f"{old_per_core * cores / resnet:.1f} |")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seconds", type=float, default=4.0,
                      help="Wall seconds each path is timed for.")
  parser.add_argument("--lengths", default="6,30,120,600")
  parser.add_argument("--workers", type=int, default=2,
                      help="Worker processes of the training stream's "
                      "extra row (0: no such row).")
  args = parser.parse_args()
  lengths = [float(x) for x in args.lengths.split(",")]
  print(f"{platform.machine()}, {os.cpu_count()} cores; grain, tf.data; "
        f"{args.seconds:g} s per measurement")
  root = tempfile.mkdtemp(prefix="input_scale_")
  results, builds = {}, []
  try:
    for seconds in [*lengths, None]:
      name = "release durations" if seconds is None else f"{seconds:g} s"
      built = _build(os.path.join(root, name.replace(" ", "_")), seconds)
      builds.append(built)
      results[name] = _measure(built, args.seconds, args.workers)
      print(f"measured {name}", flush=True)
  finally:
    shutil.rmtree(root, ignore_errors=True)
  print("\n| recordings | path | windows/s | windows per CPU-s | KB read per "
        "window |\n|---|---|---:|---:|---:|")
  for name, result in results.items():
    for path, (wall, cpu) in result["rates"].items():
      print(f"| {name} | {path} | {wall:,.0f} | {cpu:,.0f} | "
            f"{result['bytes'][path] / 1e3:,.0f} |")
  first, longest = lengths[0], [x for x in lengths if x >= 120][:1]
  for path in results[f"{first:g} s"]["rates"]:
    ratio = (results[f"{longest[0]:g} s"]["rates"][path][1]
             / results[f"{first:g} s"]["rates"][path][1]) if longest else 0
    print(f"{path}: {longest[0] if longest else '-'} s / {first:g} s "
          f"windows per CPU-s = {ratio:.2f}")
  realistic = results["release durations"]["rates"]
  for path in realistic:
    if path.startswith(("window store", "store,")):
      print(f"{path} / tfrecord on release durations, per CPU-s: "
            f"{realistic[path][1] / realistic['tfrecord'][1]:.2f}")
  build = {"tfds": float(np.median([b["tfds_mb_per_cpu_s"] for b in builds])),
           "store": float(np.median([b["store_mb_per_cpu_s"]
                                     for b in builds]))}
  print(f"build MB/s per core (int16 bytes; median over corpora): TFDS "
        f"records {build['tfds']:.1f}, window store from them "
        f"{build['store']:.1f}")
  _extrapolation(results["release durations"], build)


if __name__ == "__main__":
  main()
