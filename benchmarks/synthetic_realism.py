"""Listening-level statistics of the synthetic corpus against real recordings.

    nice -n 10 python benchmarks/synthetic_realism.py [--recordings 60]

Sources: (a) the real field recordings shipped inside installed PyPI
packages (`REAL_RECORDINGS`: OpenSoundscape's `birds_10s.wav`, HawkEars's
`CommonYellowthroat.mp3`; found with `importlib.util.find_spec`, neither
package imported), (b) the default synthetic corpus
(`synthetic.CorpusConfig()`, at the least recordings its species allow),
(c) the harder world (`synthetic.CorpusConfig.hard()`, likewise);
`--recordings` of each corpus (the first by audio id), each cut to its whole
seconds (at most `MAX_SECONDS`), so that the frontend compiles once per
length.

Statistics, on the library's spectrogram (`frontend.mel_image`, the
`inatsounds_float` preset, back in dB) over the mel bands centred in
`BAND_HZ` (the band every source has: the MP3's encoder removed what lies
above about 6 kHz):
- spectral flatness per frame (geometric over arithmetic mean of the
  bands' power; 1 for white noise, near 0 for a pure tone or for bands an
  encoder zeroed), median and interquartile range over all frames;
- event density: onsets per minute of an energy onset detector
  (`onset_frames`): in each of `ONSET_GROUPS` groups of bands, the
  smoothed energy rising `ONSET_DB` above the recording's 20th percentile
  (re-armed below `REARM_DB`), onsets of different groups within
  `MERGE_S` merged.
For the corpora, from their strong labels, checklists and true ranges
(`corpus_label_statistics`): the mean number of species audible per
recording and per model window (`windows.Layout`, 2.97 s), and the
fraction of a recording's non-target entries still unknown after the
geographic prior (species whose true range covers the place are unknown;
all are, without a location) and after the checklist prior (the listed
species are unknown), as in the Merlin L48 study's data modes.

Two short real recordings are a thin reference: the table says where the
synthetic sound is in the right range, not that it matches a release.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import tempfile
import time

import numpy as np

from inatsounds_jax import audio
from inatsounds_jax import frontend
from inatsounds_jax import release
from inatsounds_jax import sphere
from inatsounds_jax import synthetic
from inatsounds_jax import windows

# (package, path inside it) of the real recordings.
REAL_RECORDINGS = (("opensoundscape", "sample_data/birds_10s.wav"),
                   ("hawkears", "install/canada/recordings/"
                    "CommonYellowthroat.mp3"))
FRONTEND = frontend.get_config("inatsounds_float")
BAND_HZ = (150.0, 6000.0)
MAX_SECONDS = 60
ONSET_GROUPS = 4
ONSET_DB = 8.0
REARM_DB = 4.0
SMOOTH_FRAMES = 5  # About 30 ms.
MERGE_S = 0.05


def real_recording_paths() -> list[str]:
  """The real recordings that are installed (none is an error: say which
  packages to install)."""
  paths = []
  for package, relative in REAL_RECORDINGS:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
      continue
    path = os.path.join(spec.submodule_search_locations[0], relative)
    if os.path.isfile(path):
      paths.append(path)
  if not paths:
    raise SystemExit("no real recording found: install opensoundscape or "
                     "hawkears (REAL_RECORDINGS)")
  return paths


def _band_rows() -> np.ndarray:
  """Which mel rows (low band first) are centred inside `BAND_HZ`."""
  centres = (np.argmax(frontend.mel_weight_matrix(FRONTEND), axis=0)
             * FRONTEND.sample_rate / FRONTEND.fft_length)
  return (centres >= BAND_HZ[0]) & (centres <= BAND_HZ[1])


def band_db(path: str) -> np.ndarray:
  """`[bands, frames]` dB of a recording's whole seconds (`MAX_SECONDS`
  at most) in `BAND_HZ`."""
  waveform = audio.read_audio_file(path)
  seconds = min(MAX_SECONDS, len(waveform) // FRONTEND.sample_rate)
  if seconds < 1:
    raise ValueError(f"{path}: shorter than 1 s")
  waveform = waveform[:seconds * FRONTEND.sample_rate]
  image = np.asarray(frontend.mel_image(
      waveform.astype(np.float32) / audio.INT16_SCALE, FRONTEND))
  return FRONTEND.pixels_to_db(image[::-1][_band_rows()])


def spectral_flatness(db: np.ndarray) -> np.ndarray:
  """Per frame: geometric over arithmetic mean of the bands' power."""
  log_power = db * (np.log(10.0) / 10.0)
  return np.exp(log_power.mean(0)) / np.exp(log_power).mean(0)


def onset_frames(db: np.ndarray) -> list[int]:
  """Frames where an event starts (see the module docstring)."""
  found = []
  kernel = np.ones(SMOOTH_FRAMES) / SMOOTH_FRAMES
  for rows in np.array_split(np.arange(db.shape[0]), ONSET_GROUPS):
    energy = 10 * np.log10(np.mean(10 ** (db[rows] / 10), axis=0))
    energy = np.convolve(energy, kernel, mode="same")
    floor = np.percentile(energy, 20)
    armed = True
    for frame, level in enumerate(energy):
      if armed and level > floor + ONSET_DB:
        found.append(frame)
        armed = False
      elif level < floor + REARM_DB:
        armed = True
  merge = MERGE_S * FRONTEND.sample_rate / FRONTEND.hop_length
  merged = []
  for frame in sorted(found):
    if not merged or frame - merged[-1] > merge:
      merged.append(frame)
  return merged


def sound_statistics(paths: list[str]) -> dict:
  flatness, onsets, frames = [], 0, 0
  for path in paths:
    db = band_db(path)
    flatness.append(spectral_flatness(db))
    onsets += len(onset_frames(db))
    frames += db.shape[1]
  flatness = np.concatenate(flatness)
  q1, median, q3 = np.percentile(flatness, [25, 50, 75])
  minutes = frames * FRONTEND.hop_length / FRONTEND.sample_rate / 60
  return {"recordings": len(paths), "minutes": minutes,
          "flatness_median": median, "flatness_iqr": q3 - q1,
          "onsets_per_minute": onsets / minutes}


def corpus_label_statistics(corpus: str) -> dict:
  """Audible species and unknown entries (see the module docstring)."""
  with open(os.path.join(corpus, release.STRONG_LABELS_FILE)) as f:
    strong = json.load(f)
  with open(os.path.join(corpus, release.RANGES_FILE)) as f:
    ranges = [s["ranges"] for s in json.load(f)]
  place = {}
  for split in ("train", "val", "test"):
    with open(os.path.join(corpus, f"{split}.json")) as f:
      for rec in json.load(f)["audio"]:
        place[rec["id"]] = (rec["latitude"], rec["longitude"], rec["duration"])
  others = len(ranges) - 1
  per_recording, per_window, unknown_geo, unknown_checklist = [], [], [], []
  for rec in strong:
    lat, lon, duration = place[rec["audio_id"]]
    events = rec["events"]
    per_recording.append(len({e["category_id"] for e in events}))
    starts, ends = windows.Layout.of(
        int(round(duration * FRONTEND.sample_rate)),
        windows.WindowConfig()).times()
    per_window += [len({e["category_id"] for e in events
                        if e["start"] < end and e["end"] > start})
                   for start, end in zip(starts, ends)]
    if lat is None:
      unknown_geo.append(1.0)
    else:
      here = sum(bool(sphere.in_range(r, lat, lon)) for r in ranges)
      unknown_geo.append((here - 1) / others)
    unknown_checklist.append((len(rec["checklist"]) - 1) / others)
  return {"audible_per_recording": np.mean(per_recording),
          "audible_per_window": np.mean(per_window),
          "unknown_after_geo": np.mean(unknown_geo),
          "unknown_after_checklist": np.mean(unknown_checklist)}


def corpus_recordings(corpus: str, count: int) -> list[str]:
  with open(os.path.join(corpus, release.STRONG_LABELS_FILE)) as f:
    strong = sorted(json.load(f), key=lambda r: r["audio_id"])
  return [os.path.join(corpus, r["file_name"]) for r in strong[:count]]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--recordings", type=int, default=60,
                      help="recordings of each corpus measured")
  parser.add_argument("--out", default=None,
                      help="where the corpora are generated (reused if "
                      "complete); a temporary folder by default")
  parser.add_argument("--num_workers", type=int, default=2)
  args = parser.parse_args()
  start = time.time()
  rows = [(f"real: {os.path.basename(path)}", sound_statistics([path]), None)
          for path in real_recording_paths()]
  with tempfile.TemporaryDirectory() as scratch:
    out = args.out or scratch
    for name, config in (("default", synthetic.CorpusConfig()),
                         ("hard", synthetic.CorpusConfig.hard())):
      config = dataclasses.replace(
          config, num_recordings=3 * config.num_species, archives=False)
      corpus = os.path.join(out, name)
      synthetic.generate(corpus, config, num_workers=args.num_workers)
      rows.append((f"synthetic {name} ({config.num_species} species)",
                   sound_statistics(corpus_recordings(corpus,
                                                      args.recordings)),
                   corpus_label_statistics(corpus)))
  print("| source | recordings | minutes | flatness median | flatness IQR "
        "| onsets / min | species / recording | species / window "
        "| unknown after geo | unknown after checklist |")
  print("|---" * 10 + "|")
  for name, sound, labels in rows:
    label_cells = ([f"{labels[k]:.2f}" for k in (
        "audible_per_recording", "audible_per_window", "unknown_after_geo",
        "unknown_after_checklist")] if labels else ["-"] * 4)
    print(f"| {name} | {sound['recordings']} | {sound['minutes']:.1f} | "
          f"{sound['flatness_median']:.3f} | {sound['flatness_iqr']:.3f} | "
          f"{sound['onsets_per_minute']:.0f} | " + " | ".join(label_cells)
          + " |")
  print(f"\n{time.time() - start:.0f} s")


if __name__ == "__main__":
  main()
