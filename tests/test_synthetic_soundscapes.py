"""The synthetic corpus's annotated soundscapes (`write_soundscapes`)."""

import json
import os

import numpy as np
import pytest
import soundfile

from inatsounds_jax import annotations
from inatsounds_jax import synthetic
from tests.conftest import SMALL
from tests.test_synthetic import _digest

SECONDS = 20.0
COUNT = 3


@pytest.fixture(scope="module")
def soundscapes(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("soundscapes"))
  summary = synthetic.write_soundscapes(out, SMALL, COUNT, SECONDS, seed=1)
  return out, summary


def _audio(out):
  folder = os.path.join(out, synthetic.SOUNDSCAPE_AUDIO_DIR)
  names = sorted(os.listdir(folder))
  return [(os.path.join(folder, n), n) for n in names]


def _read(out, **kwargs):
  audio = _audio(out)
  durations = [soundfile.info(p).duration for p, _ in audio]
  return annotations.read_annotations(
      os.path.join(out, synthetic.SOUNDSCAPE_TABLE_DIR), audio, durations,
      **kwargs), durations


def test_same_seed_same_bytes_other_seed_other_bytes(soundscapes, tmp_path):
  out, _ = soundscapes
  again = str(tmp_path / "again")
  synthetic.write_soundscapes(again, SMALL, COUNT, SECONDS, seed=1)
  assert _digest(out) == _digest(again)
  other = str(tmp_path / "other")
  synthetic.write_soundscapes(other, SMALL, COUNT, SECONDS, seed=2)
  assert _digest(out) != _digest(other)


def test_recordings_are_long_mono_int16(soundscapes):
  out, summary = soundscapes
  audio = _audio(out)
  assert len(audio) == COUNT == summary["soundscapes"]
  for path, _ in audio:
    info = soundfile.info(path)
    assert (info.samplerate, info.channels, info.subtype) == (
        synthetic.SR, 1, "PCM_16")
    assert info.frames == int(SECONDS * synthetic.SR)


def test_tables_read_back_with_no_problems(soundscapes, small_corpus):
  out, summary = soundscapes
  read, durations = _read(out)
  assert not read.problems, [str(p) for p in read.problems]
  assert len(read.annotated) == COUNT and not read.not_annotated
  assert len(read.events) == summary["events"]
  with open(os.path.join(small_corpus, "train.json")) as f:
    corpus_names = {c["name"] for c in json.load(f)["categories"]}
  assert set(read.species_counts()) <= corpus_names  # The corpus's species.
  duration = dict(zip(sorted(read.annotated), durations))
  for recording in read.annotated:
    events = [read.events[i] for i in read.event_indices(recording)]
    assert len({e.species for e in events}) >= 2  # Several species.
    for e in events:
      assert 0 <= e.start_s < e.end_s <= duration[recording]
      assert 0 <= e.low_hz < e.high_hz <= synthetic.SR / 2
    # Some calls overlap; some stretch (a sixth of it) has none.
    spans = sorted((e.start_s, e.end_s) for e in events)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:]))
    edges = [0.0] + [x for s in spans for x in s] + [duration[recording]]
    covered_end, longest_gap = 0.0, 0.0
    for start, end in spans:
      longest_gap = max(longest_gap, start - covered_end)
      covered_end = max(covered_end, end)
    longest_gap = max(longest_gap, duration[recording] - covered_end)
    assert longest_gap >= SECONDS / 6 - 1e-6, edges


def test_calls_are_where_the_tables_say(soundscapes):
  out, _ = soundscapes
  read, _ = _read(out)
  for path, recording in _audio(out):
    x = soundfile.read(path, dtype="float64")[0]
    inside = np.zeros(len(x), bool)
    ratios = []
    for i in read.event_indices(recording):
      e = read.events[i]
      inside[round(e.start_s * synthetic.SR):round(e.end_s * synthetic.SR)] = (
          True)
    outside_power = np.mean(x[~inside] ** 2)
    assert np.mean(x[inside] ** 2) > 4 * outside_power
    for i in read.event_indices(recording):
      e = read.events[i]
      call = x[round(e.start_s * synthetic.SR):round(e.end_s * synthetic.SR)]
      ratios.append(np.mean(call ** 2) / outside_power)
    assert np.median(ratios) > 3
    assert np.mean(np.asarray(ratios) > 1.5) > 0.9


def test_codes_map_through_the_species_map(tmp_path):
  out = str(tmp_path / "coded")
  synthetic.write_soundscapes(out, SMALL, 2, SECONDS, seed=1, codes=True)
  read, _ = _read(out)
  assert not read.problems
  species = synthetic.make_species(SMALL, np.random.default_rng(SMALL.seed))
  codes = synthetic.species_codes(species)
  assert len(set(codes)) == len(codes)
  assert set(read.species_counts()) <= set(codes)
  labels = [{"species": s["name"], "common_name": s["common_name"]}
            for s in species]
  species_map = annotations.SpeciesMap.read(
      os.path.join(out, synthetic.SOUNDSCAPE_SPECIES_MAP))
  mapping = annotations.map_species(read, labels, species_map)
  assert not mapping.unknown
  assert {m.matched_by for m in mapping.species} == {"species map"}
  assert (mapping.class_of_event >= 0).all()
  # The same calls as with scientific names: only the names differ.
  named = str(tmp_path / "named")
  synthetic.write_soundscapes(named, SMALL, 2, SECONDS, seed=1)
  by_name, _ = _read(named)
  assert [codes[c] for c in mapping.class_of_event] == [
      e.species for e in read.events]
  assert [species[c]["name"] for c in mapping.class_of_event] == [
      e.species for e in by_name.events]


def test_command_line_and_refusals(tmp_path, capsys):
  out = str(tmp_path / "cli")
  synthetic.main(["--out", out, "--num_species", str(SMALL.num_species),
                  "--num_recordings", str(SMALL.num_recordings),
                  "--seed", str(SMALL.seed), "--soundscapes", "1",
                  "--soundscape_seconds", "5"])
  summary = json.loads(capsys.readouterr().out)
  assert summary["soundscapes"] == 1 and summary["seconds"] == 5.0
  assert not os.path.exists(os.path.join(out, "train.json"))  # No corpus.
  assert os.path.isfile(os.path.join(
      out, synthetic.SOUNDSCAPE_TABLE_DIR,
      "soundscape_0000" + synthetic.RAVEN_TABLE_SUFFIX))
  # Rewriting its own files is fine; a stranger's file is refused.
  synthetic.main(["--out", out, "--soundscapes", "1"])
  capsys.readouterr()
  with open(os.path.join(out, "mine.txt"), "w") as f:
    f.write("x")
  with pytest.raises(SystemExit) as exit_info:
    synthetic.main(["--out", out, "--soundscapes", "1"])
  assert exit_info.value.code == 2
  assert "mine.txt" in capsys.readouterr().err
  for argv in (["--soundscapes", "-1"],
               ["--soundscapes", "1", "--soundscape_seconds", "0"]):
    with pytest.raises(SystemExit):
      synthetic.main(["--out", str(tmp_path / "bad")] + argv)
    assert "--soundscape" in capsys.readouterr().err
