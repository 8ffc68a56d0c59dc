import collections
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from inatsounds_jax import audio
from inatsounds_jax import release
from inatsounds_jax import synthetic
from inatsounds_jax import sphere
from tests.conftest import SMALL


def _load(corpus, name):
  with open(os.path.join(corpus, name)) as f:
    return json.load(f)


def _digest(folder):
  h = hashlib.sha256()
  for root, _, files in sorted(os.walk(folder)):
    for name in sorted(files):
      path = os.path.join(root, name)
      h.update(os.path.relpath(path, folder).encode())
      with open(path, "rb") as f:
        h.update(f.read())
  return h.hexdigest()


def test_same_seed_gives_identical_bytes(small_corpus, tmp_path):
  again = tmp_path / "again"
  synthetic.generate(str(again), SMALL, num_workers=2)
  assert _digest(small_corpus) == _digest(str(again))
  other = tmp_path / "other"
  synthetic.generate(str(other), synthetic.CorpusConfig(
      **{**SMALL.__dict__, "seed": SMALL.seed + 1}), num_workers=1)
  assert _load(small_corpus, "train.json") != _load(str(other), "train.json")


def test_release_layout_and_schema(small_corpus):
  for split, folder in (("train", "train"), ("val", "val"),
                        ("test", "public_test")):
    ann = _load(small_corpus, f"{split}.json")
    assert set(ann) == {"info", "audio", "categories", "annotations",
                        "licenses"}
    parsed = release.parse_annotations(ann, split, split)
    assert not parsed.problems
    assert len(parsed.items) == len(ann["audio"])
    for rec in ann["audio"]:
      assert set(rec) == {"id", "duration", "file_name", "license",
                          "rights_holder", "date", "latitude", "longitude",
                          "location_uncertainty"}
      assert rec["file_name"].startswith(f"{split}/")
      assert rec["date"].startswith(
          {"train": "20", "val": "2022", "test": "2023"}[split])
      path = os.path.join(small_corpus, rec["file_name"])
      info = __import__("soundfile").info(path)
      assert (info.samplerate, info.channels, info.subtype) == (
          22050, 1, "PCM_16")
      assert abs(info.frames / 22050 - rec["duration"]) < 1e-3
    cat = ann["categories"][0]
    for key in release.TAXONOMY_KEYS + ("name", "common_name",
                                        "supercategory", "audio_dir_name"):
      assert cat[key], key
    assert "audio_id" in ann["annotations"][0]
    with tarfile.open(os.path.join(small_corpus, f"{folder}.tar.gz")) as t:
      names = sorted(m.name for m in t.getmembers() if m.isfile())
    assert names == sorted(r["file_name"] for r in ann["audio"])
    assert release.load_json(
        os.path.join(small_corpus, f"{folder}.json.tar.gz")) == ann


def test_corpus_statistics_are_realistic(tmp_path):
  # The default species mix on a corpus big enough to see the tail.
  config = synthetic.CorpusConfig(num_species=50, num_recordings=2000)
  rng = np.random.default_rng(config.seed)
  species = synthetic.make_species(config, rng)
  specs = synthetic.make_recording_specs(config, species, rng)
  supercats = collections.Counter(s["supercategory"] for s in species)
  assert set(supercats) == {"Aves", "Insecta", "Amphibia", "Mammalia",
                            "Reptilia"}
  assert supercats["Aves"] > 0.6 * 50
  families = {s["call_family"] for s in species}
  assert families == {"whistle", "trill", "buzz", "pulsed_harmonic",
                      "low_harmonic", "click_train"}
  train = collections.Counter(s["category_id"] for s in specs
                              if s["split"] == "train")
  assert max(train.values()) >= 8 * min(train.values())  # Long tail.
  test_species = {s["category_id"] for s in specs if s["split"] == "test"}
  val_species = {s["category_id"] for s in specs if s["split"] == "val"}
  assert test_species == val_species and test_species < set(train)
  durations = np.array([s["duration"] for s in specs])
  assert durations.min() >= 1.0 and durations.max() > 60
  missing = np.mean([s["latitude"] is None for s in specs])
  assert 0.03 < missing < 0.15
  assert np.mean([bool(s["background"]) for s in specs]) > 0.15
  # Look-alikes: same genus and call family, ranges far apart.
  pairs = [(s, species[s["lookalike_of"]]) for s in species
           if s.get("lookalike_of") is not None]
  assert len(pairs) >= 5
  for a, b in pairs:
    assert a["genus"] == b["genus"] and a["call_family"] == b["call_family"]
    assert a["realm"] != b["realm"]
  # Locations come from the species' ranges.
  for s in specs[:300]:
    if s["latitude"] is not None:
      assert sphere.in_range(species[s["category_id"]]["ranges"],
                                 s["latitude"], s["longitude"])


@pytest.mark.slow  # Specs of 4,000 recordings, twice.
def test_release_durations_have_the_release_mean_and_a_tail_of_minutes():
  default = synthetic.CorpusConfig(num_species=50, num_recordings=4000)
  config = dataclasses.replace(default, duration_distribution="release",
                               max_duration_s=600.0)

  def specs(corpus):
    rng = np.random.default_rng(corpus.seed)
    return synthetic.make_recording_specs(
        corpus, synthetic.make_species(corpus, rng), rng)

  release_specs, default_specs = specs(config), specs(default)
  durations = np.array([s["duration"] for s in release_specs])
  # 1,200 h over 137,012 recordings: 31.5 s on average.
  assert 29.0 < durations.mean() < 34.0
  assert 0.08 < np.mean(durations > 60) < 0.2
  assert durations.max() > 240 and durations.min() >= 1.0
  # Only the durations change: everything else is the default corpus's.
  for a, b in zip(release_specs, default_specs):
    assert dict(a, duration=0) == dict(b, duration=0)
  with pytest.raises(ValueError, match="duration_distribution='uniform'"):
    synthetic.CorpusConfig(duration_distribution="uniform")


def test_strong_labels_cover_target_and_background(small_corpus):
  strong = _load(small_corpus, "strong_labels.json")
  ann = {a["id"]: a for split in ("train", "val", "test")
         for a in _load(small_corpus, f"{split}.json")["annotations"]}
  assert len(strong) == len(ann)
  for rec in strong:
    target = [e for e in rec["events"] if e["role"] == "target"]
    assert target
    assert {e["category_id"] for e in target} == {
        ann[rec["audio_id"]]["category_id"]}
    for e in rec["events"]:
      assert 0 <= e["start"] < e["end"]
  # Target calls are audible: louder inside the spans than outside.
  rec = max(strong, key=lambda r: len(r["events"]))
  wave = audio.read_audio_file(os.path.join(small_corpus, rec["file_name"]))
  assert np.abs(wave).max() > 1000


def test_checklists_list_the_target_miss_some_callers_add_site_species():
  corpus = synthetic.CorpusConfig(num_species=12, num_recordings=400, seed=1,
                                  background_species_prob=0.9)
  rng = np.random.default_rng(corpus.seed)
  species = synthetic.make_species(corpus, rng)
  specs = synthetic.make_recording_specs(corpus, species, rng)
  listed_callers = callers = site_species = 0
  for spec in specs:
    events = [{"category_id": spec["category_id"]}] + [
        {"category_id": c} for c in spec["background"]]
    checklist = synthetic.make_checklist(spec, events, species, corpus)
    assert checklist == synthetic.make_checklist(spec, events, species,
                                                 corpus)  # Deterministic.
    assert spec["category_id"] in checklist
    callers += len(spec["background"])
    listed_callers += len(set(spec["background"]) & set(checklist))
    extra = set(checklist) - {e["category_id"] for e in events}
    site_species += len(extra)
    for cid in extra:  # Only species living at the site.
      assert spec["latitude"] is not None
      assert sphere.in_range(species[cid]["ranges"], spec["latitude"],
                                 spec["longitude"])
  # About 15 % of background callers are left off; some site species added.
  assert 0.75 < listed_callers / callers < 0.95
  assert site_species > 0


def test_call_families_have_their_frequency_bands():
  rng = np.random.default_rng(0)
  def peak_hz(family, params):
    call = synthetic.synthesize_call(family, params, rng)
    spec = np.abs(np.fft.rfft(call))
    return np.argmax(spec) * 22050 / len(call)
  whistle = synthetic._call_params("whistle", rng)  # pylint: disable=protected-access
  assert 1000 < peak_hz("whistle", whistle) < 10000
  low = dict(f0=150.0, harmonics=4.0, fm_depth=0.0, fm_rate=1.0,
             call_dur=1.0, interval=1.0)
  assert 100 < peak_hz("low_harmonic", low) < 200
  buzz = dict(fc=6000.0, bandwidth=800.0, pulse_rate=50.0, duty=0.5,
              call_dur=1.0, interval=1.0)
  assert 5000 < peak_hz("buzz", buzz) < 7000


def test_command_line(tmp_path):
  out = tmp_path / "cli"
  result = subprocess.run(
      [sys.executable, "-m", "inatsounds_jax.synthetic", "--out", str(out),
       "--num_species", "5", "--num_recordings", "20", "--no-archives",
       "--key_style", "image", "--num_workers", "1"],
      capture_output=True, text=True, check=True)
  summary = json.loads(result.stdout)
  assert summary["num_species"] == 5
  assert sum(summary["recordings"].values()) >= 15
  assert not (out / "train.tar.gz").exists()
  ann = _load(str(out), "train.json")
  assert "image_id" in ann["annotations"][0]
  assert "image_dir_name" in ann["categories"][0]


@pytest.mark.parametrize("flags, message", [
    (["--num_recordings", "3"],
     "error: --num_recordings=3 is too few for --num_species=50: give at "
     "least 150 (3 per species, so that every split has data), or fewer "
     "species"),
    (["--num_species", "1"], "error: --num_species=1 is too few: give at "
     "least 2"),
], ids=["recordings", "species"])
def test_command_line_says_the_least_a_flag_takes_in_one_line(tmp_path,
                                                              flags, message):
  result = subprocess.run(
      [sys.executable, "-m", "inatsounds_jax.synthetic", "--out",
       str(tmp_path / "corpus"), *flags], capture_output=True, text=True)
  assert result.returncode == 2
  assert result.stderr == message + "\n"
  assert not (tmp_path / "corpus").exists()


TINY = synthetic.CorpusConfig(num_species=2, num_recordings=6, seed=1,
                              median_duration_s=1.0, max_duration_s=2.0)


def _tree(folder):
  """{relative path: bytes} of every file under `folder`."""
  out = {}
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, folder)] = f.read()
  return out


def _users_folder(path):
  """A folder holding a user's recording where the corpus would write."""
  os.makedirs(path / "train")
  (path / "train" / "my_recording.wav").write_bytes(b"RIFF user data")
  (path / "notes.txt").write_text("mine")
  return _tree(str(path))


def test_generator_refuses_a_folder_with_other_files(tmp_path):
  before = _users_folder(tmp_path / "user")
  with pytest.raises(synthetic.CorpusDirError,
                     match=r"notes.txt, train/my_recording.wav"):
    synthetic.generate(str(tmp_path / "user"), TINY, num_workers=1)
  assert _tree(str(tmp_path / "user")) == before  # Nothing written either.


def test_command_line_refuses_a_folder_with_other_files(tmp_path):
  before = _users_folder(tmp_path / "user")
  result = subprocess.run(
      [sys.executable, "-m", "inatsounds_jax.synthetic", "--out",
       str(tmp_path / "user"), "--num_species", "2", "--num_recordings", "6",
       "--num_workers", "1"], capture_output=True, text=True)
  assert result.returncode == 2
  assert "train/my_recording.wav" in result.stderr
  assert "Traceback" not in result.stderr
  assert _tree(str(tmp_path / "user")) == before


def test_regeneration_reuses_or_replaces_only_its_own_files(tmp_path):
  out = str(tmp_path / "corpus")
  first = synthetic.generate(out, TINY, num_workers=1)
  assert not first.get("reused")
  files = _tree(out)
  manifest = _load(out, synthetic.MANIFEST)
  assert manifest["complete"]
  assert sorted(manifest["files"]) == sorted(
      p for p in files if p != synthetic.MANIFEST)

  assert synthetic.generate(out, TINY, num_workers=1)["reused"]
  assert _tree(out) == files

  other = dataclasses.replace(TINY, seed=2)
  synthetic.generate(out, other, num_workers=1)
  fresh = str(tmp_path / "fresh")
  synthetic.generate(fresh, other, num_workers=1)
  assert _tree(out) == _tree(fresh)  # The first corpus is gone, all of it.

  (tmp_path / "corpus" / "train" / "mine.wav").write_bytes(b"mine")
  with pytest.raises(synthetic.CorpusDirError, match="train/mine.wav"):
    synthetic.generate(out, TINY, num_workers=1)
  assert (tmp_path / "corpus" / "train" / "mine.wav").read_bytes() == b"mine"


def test_interrupted_generation_is_finished_by_the_next(tmp_path, monkeypatch):
  out = str(tmp_path / "corpus")

  def crash(*args):
    raise KeyboardInterrupt

  monkeypatch.setattr(synthetic, "_deterministic_tar_gz", crash)
  with pytest.raises(KeyboardInterrupt):
    synthetic.generate(out, TINY, num_workers=1)
  assert not synthetic.is_complete(out, TINY)
  monkeypatch.undo()
  synthetic.generate(out, TINY, num_workers=1)  # Its own files: not refused.
  assert synthetic.is_complete(out, TINY)
  fresh = str(tmp_path / "fresh")
  synthetic.generate(fresh, TINY, num_workers=1)
  assert _tree(out) == _tree(fresh)
