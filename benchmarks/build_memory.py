"""Peak memory of converting and building long recordings.

    python benchmarks/build_memory.py [--minutes 10 60] [--code DIR]

For each length, writes a 48 kHz stereo 16-bit WAV (a tone plus noise), then
measures in fresh subprocesses, with `resource.getrusage(...).ru_maxrss`:
- convert: `audio.read_audio_file` (decode, mix down, resample to mono int16
  at 22,050 Hz);
- build: `data.prepare("full", ...)` on a one-recording release (extracted
  folder) holding that file: the whole TFDS build.
"growth" is the peak minus the peak after imports (TensorFlow included). A
1 s recording gives the build's baseline; "above 1 s" is a build's peak minus
that baseline's, and "x example" divides it by the stored int16 example (2
bytes a sample at 22,050 Hz).

`--code DIR` runs the subprocesses on the `inatsounds_jax` of another checkout
(e.g. `git worktree add /tmp/old <commit>`), to compare with older code.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import soundfile

RATE = 48_000
STORED_RATE = 22_050

# Each prints "peak after imports, peak after the work" in bytes (ru_maxrss
# is in KiB on Linux) and the work's seconds.
_CONVERT = """
import resource, sys, time
from inatsounds_jax import audio
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
audio.read_audio_file(sys.argv[1])
print(before * 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
      time.perf_counter() - start)
"""
_BUILD = """
import resource, sys, time
import tensorflow
from inatsounds_jax import data
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
data.prepare("full", data_dir=sys.argv[2], manual_dir=sys.argv[1])
print(before * 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
      time.perf_counter() - start)
"""


def write_stereo_wav(path: str, seconds: int) -> None:
  """A tone plus noise, written one second at a time."""
  rng = np.random.default_rng(0)
  with soundfile.SoundFile(path, "w", RATE, 2, "PCM_16") as f:
    for start in range(0, seconds * RATE, RATE):
      t = (start + np.arange(RATE)) / RATE
      tone = 0.3 * np.sin(2 * np.pi * 1000 * t)
      f.write(np.stack([tone + 0.05 * rng.standard_normal(RATE), 0.5 * tone],
                       axis=1))


def one_recording_release(root: str, wav: str, seconds: int) -> str:
  """A release folder whose train split is `wav` (linked, not copied)."""
  folder = os.path.join(root, "train", "00000_Turdus_merula")
  os.makedirs(folder)
  os.symlink(wav, os.path.join(folder, "long.wav"))
  annotations = {
      "info": {}, "licenses": [],
      "categories": [{"id": 0, "name": "Turdus merula",
                      "common_name": "Eurasian Blackbird",
                      "supercategory": "Aves",
                      "audio_dir_name": "00000_Turdus_merula"}],
      "audio": [{"id": 1, "file_name": "train/00000_Turdus_merula/long.wav",
                 "duration": seconds, "latitude": 48.1, "longitude": 11.6,
                 "date": "2020-05-01 06:00:00"}],
      "annotations": [{"id": 1, "audio_id": 1, "category_id": 0}],
  }
  with open(os.path.join(root, "train.json"), "w") as f:
    json.dump(annotations, f)
  return root


def measure(script: str, args: list[str], code: str | None
            ) -> tuple[int, int, float]:
  """(peak after imports, peak at the end, seconds) of `script`, run in a
  subprocess."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
  if code:
    env["PYTHONPATH"] = os.path.abspath(code)
  result = subprocess.run([sys.executable, "-c", script, *args], env=env,
                          capture_output=True, text=True, check=False,
                          cwd=code or os.getcwd())
  if result.returncode != 0:
    raise RuntimeError(f"{script.strip().splitlines()[2]} failed:\n"
                       f"{result.stderr[-3000:]}")
  before, after, seconds = result.stdout.split()[-3:]
  return int(before), int(after), float(seconds)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--minutes", type=int, nargs="+", default=[10, 60])
  parser.add_argument("--code", default=None,
                      help="checkout whose inatsounds_jax to measure")
  parser.add_argument("--workdir", default=None,
                      help="scratch folder (default: a temporary one)")
  args = parser.parse_args()
  workdir = args.workdir or tempfile.mkdtemp(prefix="build_memory_")

  def mb(n: int) -> str:
    return f"{n / 2**20:,.0f}"

  memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  print(f"{platform.node()}: {os.cpu_count()} cores, {memory / 2**30:.0f} GB;"
        f" code: {args.code or 'this checkout'}\n")
  print("| recording | file MB | stored example MB | convert peak MB "
        "(growth) | convert s | build peak MB (growth) | build above 1 s MB "
        "| x example | build s |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
  baseline = None
  try:
    for seconds in [1] + [m * 60 for m in args.minutes]:
      case = os.path.join(workdir, f"{seconds}s")
      os.makedirs(case)
      wav = os.path.join(case, "long.wav")
      write_stereo_wav(wav, seconds)
      example = seconds * STORED_RATE * 2
      c0, c1, c_seconds = measure(_CONVERT, [wav], args.code)
      release_dir = one_recording_release(os.path.join(case, "release"), wav,
                                          seconds)
      b0, b1, b_seconds = measure(
          _BUILD, [release_dir, os.path.join(case, "tfds")], args.code)
      baseline = baseline or b1
      label = f"{seconds // 60} min" if seconds >= 60 else f"{seconds} s"
      print(f"| {label}, 48 kHz stereo | {mb(os.path.getsize(wav))} | "
            f"{mb(example)} | {mb(c1)} ({mb(c1 - c0)}) | {c_seconds:.1f} | "
            f"{mb(b1)} ({mb(b1 - b0)}) | {mb(b1 - baseline)} | "
            f"{(b1 - baseline) / example:.1f} | {b_seconds:.1f} |",
            flush=True)
      shutil.rmtree(case)
  finally:
    if not args.workdir:
      shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
  main()
