"""The soundscapes builder: annotated recordings -> strongly labelled
chunks."""

import csv
import os
import shutil

import ml_collections
import numpy as np
import pytest
import soundfile
import tensorflow_datasets as tfds

from inatsounds_jax import annotations
from inatsounds_jax import data
from inatsounds_jax import data_sources
from inatsounds_jax import input_pipeline
from inatsounds_jax import label_modes
from inatsounds_jax import registry
from inatsounds_jax import synthetic
from inatsounds_jax.evaluators import common
from inatsounds_jax.evaluators import strong_label
from inatsounds_jax.geo import prior as prior_lib
from tests.conftest import SMALL
from tests.test_evaluators import context
from tests.test_strong_label_evaluator import ties_only_map
from tfds_builders.soundscapes import soundscapes_dataset_builder as builder_lib

SECONDS = 25.0
CHUNK = 10.0
COUNT = 3
SR = synthetic.SR


def _species():
  return synthetic.make_species(SMALL, np.random.default_rng(SMALL.seed))


def _labels(leave_out=()):
  return tuple((s["name"], s["common_name"]) for s in _species()
               if s["name"] not in leave_out)


@pytest.fixture(scope="module")
def soundscapes(tmp_path_factory):
  """Synthetic soundscapes whose tables name species by code."""
  out = str(tmp_path_factory.mktemp("soundscapes"))
  synthetic.write_soundscapes(out, SMALL, COUNT, SECONDS, seed=1, codes=True)
  return out


def _fields(folder):
  return {"audio": os.path.join(folder, synthetic.SOUNDSCAPE_AUDIO_DIR),
          "annotations": os.path.join(folder,
                                      synthetic.SOUNDSCAPE_TABLE_DIR),
          "species_map": os.path.join(folder,
                                      synthetic.SOUNDSCAPE_SPECIES_MAP),
          "chunk_seconds": CHUNK}


@pytest.fixture(scope="module")
def built(soundscapes, tmp_path_factory):
  return data.prepare("soundscapes",
                      data_dir=str(tmp_path_factory.mktemp("tfds")),
                      labels=_labels(), **_fields(soundscapes))


def _report(builder):
  with open(os.path.join(builder.data_path, builder_lib.REPORT_NAME)) as f:
    return list(csv.DictReader(f, delimiter="\t"))


def _table_events(folder, stem, names):
  """(label, start, end) of every row of a recording's Raven table, read
  with csv alone, codes through the species map CSV."""
  with open(os.path.join(folder, synthetic.SOUNDSCAPE_SPECIES_MAP)) as f:
    scientific = {r["code"]: r["scientific_name"] for r in csv.DictReader(f)}
  path = os.path.join(folder, synthetic.SOUNDSCAPE_TABLE_DIR,
                      stem + synthetic.RAVEN_TABLE_SUFFIX)
  with open(path) as f:
    return [(names.index(scientific[r["Species"]]), float(r["Begin Time (s)"]),
             float(r["End Time (s)"]))
            for r in csv.DictReader(f, delimiter="\t")]


def _chunks(builder):
  """Chunks per recording, in time order."""
  found = {}
  for ex in tfds.as_numpy(builder.as_dataset(split="test")):
    found.setdefault(ex["file_name"].decode(), []).append(ex)
  return {name: sorted(chunks, key=lambda ex: ex["start_sample"])
          for name, chunks in found.items()}


def _check_events(pieces, rows, num_classes):
  """Each chunk holds exactly the rows' calls overlapping it, times from
  its start within a sample, and the label calling longest (-1: none)."""
  for ex in pieces:
    begin = ex["start_sample"] / SR
    end = begin + len(ex["audio"]) / SR
    expected = sorted((label, start - begin, stop - begin)
                      for label, start, stop in rows
                      if start < end and stop > begin)
    got = sorted(zip(ex["event_label"], ex["event_start"], ex["event_end"]))
    assert [g[0] for g in got] == [e[0] for e in expected]
    np.testing.assert_allclose(np.reshape([g[1:] for g in got], (-1, 2)),
                               np.reshape([e[1:] for e in expected],
                                          (-1, 2)), atol=1 / SR)
    calling = np.zeros(num_classes)
    for label, start, stop in expected:
      calling[label] += min(stop, end - begin) - max(start, 0.0)
    assert ex["label"] == (np.argmax(calling) if expected else -1)


def test_chunks_carry_the_audio_and_the_tables_events_exactly(
    soundscapes, built):
  names = list(built.info.features["label"].names)
  assert names == [s["name"] for s in _species()]
  assert _report(built) == []
  chunks = _chunks(built)
  assert sorted(chunks) == [f"soundscape_{i:04d}.wav" for i in range(COUNT)]
  ids, indices = set(), []
  for name, pieces in chunks.items():
    audio = soundfile.read(os.path.join(
        soundscapes, synthetic.SOUNDSCAPE_AUDIO_DIR, name), dtype="int16")[0]
    np.testing.assert_array_equal(
        np.concatenate([ex["audio"] for ex in pieces]), audio)
    assert [len(ex["audio"]) / SR for ex in pieces] == [CHUNK, CHUNK, 5.0]
    _check_events(pieces, _table_events(soundscapes, name[:-4], names),
                  len(names))
    ids.update((name, int(ex["recording_id"])) for ex in pieces)
    indices.extend(int(ex["example_index"]) for ex in pieces)
  assert len({i for _, i in ids}) == COUNT == len(ids)  # One id a recording.
  assert sorted(indices) == list(range(len(indices)))
  sources = data.label_sources(built)
  assert sources["strong_labels"] and not sources["checklists"]
  assert sources["example_index_size"] == {"test": len(indices)}


def test_a_chunk_holds_calls_overlapping_it_and_no_label_without_one():
  events = annotations.EventArrays(np.array([0.5, 1.9, 2.0, 2.5]),
                                   np.array([1.0, 2.2, 2.1, 4.0]),
                                   np.array([3, 1, 2, 1]))
  chunk = np.zeros(SR, np.int16)
  second = builder_lib.chunk_example(chunk, 2 * SR, events)  # 2 s to 3 s.
  assert second["event_label"].tolist() == [1, 2, 1]
  np.testing.assert_allclose(second["event_start"], [-0.1, 0.0, 0.5])
  np.testing.assert_allclose(second["event_end"], [0.2, 0.1, 2.0])
  assert second["label"] == 1 and second["duration"] == 1.0
  # The call ending where the chunk starts is not in it.
  first = builder_lib.chunk_example(chunk, 0, events)
  assert first["event_label"].tolist() == [3] and first["label"] == 3
  silent = builder_lib.chunk_example(chunk, 5 * SR, events)
  assert len(silent["event_label"]) == 0 and silent["label"] == -1


def _damage(folder):
  """A copy of the set with every kind of bad input; returns its fields and
  the (file, row, reason fragment) each should give."""
  tables = os.path.join(folder, synthetic.SOUNDSCAPE_TABLE_DIR)
  suffix = synthetic.RAVEN_TABLE_SUFFIX
  with open(os.path.join(tables, "soundscape_0000" + suffix), "wb") as f:
    f.write(b"Selection\tBegin\0\0\0garbage")
  header = "\t".join(synthetic.SOUNDSCAPE_COLUMNS)
  with open(os.path.join(tables, "missing" + suffix), "w") as f:
    f.write(header + "\n1\tSpectrogram 1\t1\t1.0\t2.0\t100\t200\tgolner\n")
  with open(os.path.join(tables, "odd.txt"), "w") as f:
    f.write("when\twhat\n1.0\tgolner\n")
  one = os.path.join(tables, "soundscape_0001" + suffix)
  with open(one) as f:
    lines = f.read().splitlines()
  code = lines[1].split("\t")[-1]
  lines += [f"900\tSpectrogram 1\t1\t5.0\t4.0\t100\t200\t{code}",
            f"901\tSpectrogram 1\t1\t30.0\t31.0\t100\t200\t{code}"]
  with open(one, "w") as f:
    f.write("\n".join(lines) + "\n")
  shown = lambda name: name + suffix  # noqa: E731
  expected = [
      (shown("soundscape_0000"), "", "NUL bytes"),
      ("soundscape_0000.wav", "", "no table names it"),
      (shown("missing"), "", "is not among the"),
      ("odd.txt", "", "unknown column layout"),
      (shown("soundscape_0001"), str(len(lines) - 1), "not after its start"),
      (shown("soundscape_0001"), str(len(lines)), "past the end"),
  ]
  return _fields(folder), expected, code


def test_bad_tables_and_unknown_species_are_reported_and_the_rest_built(
    soundscapes, tmp_path):
  folder = str(tmp_path / "set")
  shutil.copytree(soundscapes, folder)
  fields, expected, code = _damage(folder)
  with open(fields["species_map"]) as f:
    dropped = next(r["scientific_name"] for r in csv.DictReader(f)
                   if r["code"] == code)
  built = data.prepare("soundscapes", data_dir=str(tmp_path / "tfds"),
                       labels=_labels(leave_out=(dropped,)), **fields)
  report = _report(built)
  for file, row, reason in expected:
    assert any(r["file"] == file and r["row"] == row and reason in r["reason"]
               for r in report), (file, row, reason, report)
  unknown = [r for r in report if dropped in r["reason"]]
  assert len(unknown) == 1 and "not in the label space" in unknown[0]["reason"]
  assert unknown[0]["file"].endswith(synthetic.RAVEN_TABLE_SUFFIX)
  assert int(unknown[0]["row"]) > 1
  assert len(report) == len(expected) + 1
  chunks = _chunks(built)
  assert sorted(chunks) == ["soundscape_0001.wav", "soundscape_0002.wav"]
  names = list(built.info.features["label"].names)
  assert dropped not in names and len(names) == len(_species()) - 1
  for name, pieces in chunks.items():
    # The rows kept: of labelled species, end after start, start before
    # the recording's end.
    rows = [r for r in _table_events(folder, name[:-4], names + [dropped])
            if r[0] < len(names) and r[1] < r[2] and r[1] < SECONDS]
    _check_events(pieces, rows, len(names))


def test_synthetic_config_writes_the_corpus_species_soundscapes(tmp_path):
  built = data.prepare("soundscapes", data_dir=str(tmp_path),
                       num_species=SMALL.num_species,
                       num_recordings=SMALL.num_recordings, seed=SMALL.seed,
                       num_soundscapes=2, soundscape_seconds=6.0,
                       chunk_seconds=3.0)
  assert built.info.features["label"].names == [s["name"]
                                                for s in _species()]
  assert built.info.splits["test"].num_examples == 4
  assert _report(built) == []
  assert any(len(ex["event_label"]) for ex in
             tfds.as_numpy(built.as_dataset(split="test")))


def test_refuses_unknown_fields_and_sets_without_annotations(soundscapes):
  with pytest.raises(ValueError, match="unknown soundscapes fields"):
    data.builder("soundscapes", chunk_length=5)
  with pytest.raises(ValueError, match="needs annotations"):
    data.builder("soundscapes", audio=_fields(soundscapes)["audio"])
  with pytest.raises(ValueError, match="chunk_seconds=0"):
    data.builder("soundscapes", chunk_seconds=0)


def test_changed_tables_get_records_of_their_own(soundscapes, tmp_path):
  folder = str(tmp_path / "set")
  shutil.copytree(soundscapes, folder)
  before = builder_lib.config_for(**_fields(folder)).name
  assert builder_lib.config_for(**_fields(folder)).name == before
  one = os.path.join(folder, synthetic.SOUNDSCAPE_TABLE_DIR,
                     "soundscape_0001" + synthetic.RAVEN_TABLE_SUFFIX)
  with open(one, "a") as f:
    f.write("\n")
  assert builder_lib.config_for(**_fields(folder)).name != before


def test_strong_label_evaluator_runs_on_the_soundscapes_of_a_run(
    soundscapes, small_dataset):
  """A run on the corpus evaluates on its soundscapes by a config entry."""
  names = small_dataset.info.features["label"].names
  [scheduled] = common.from_config(ml_collections.ConfigDict({
      "soundscapes": {"type": "strong_label", "split": "test",
                      "every_epochs": 0,
                      "soundscapes": _fields(soundscapes)}}),
      context(small_dataset))
  evaluator = scheduled.evaluator
  output = evaluator.run(lambda w, *location: np.zeros((len(w), len(names))))
  records = evaluator.context.builder
  assert records.info.features["label"].names == names
  assert str(records.data_path).startswith(
      os.fspath(small_dataset.data_dir_root))
  assert output.summary["num_files"] == COUNT
  windows = input_pipeline_truth(records)
  assert output.summary["num_windows"] == len(windows)
  assert output.metrics["no_prior/window_map"] == pytest.approx(
      ties_only_map(windows))
  with pytest.raises(registry.ConfigError, match="soundscapes: unknown"):
    strong_label.Evaluator(context(small_dataset), split="test",
                           soundscapes={"chunk": 3})


def test_training_reads_the_chunks_in_the_full_label_mode(soundscapes,
                                                          built):
  """`config.dataset = "soundscapes"`: the loop's input and targets."""
  config = ml_collections.ConfigDict({
      "dataset": "soundscapes",
      "data_dir": os.fspath(built.data_dir_root),
      "dataset_options": dict(_fields(soundscapes), labels=_labels()),
      "train_split": "test", "label_mode": "full"})
  builder = data.prepare_from_config(config)
  assert builder.data_path == built.data_path  # The same records.
  names = builder.info.features["label"].names
  batch = next(iter(tfds.as_numpy(data_sources.train_dataset(
      data_sources.from_config(config, builder), 8,
      input_pipeline.WindowConfig(), shuffle_buffer=8))))
  observer = label_modes.from_config(config, builder, names,
                                     prior_lib.Priors(names, None))
  observed = observer(batch)
  np.testing.assert_array_equal(observed["targets"],
                                batch["audible_in_window"])
  assert observed["label_mask"].all() and batch["audible_in_window"].any()


def input_pipeline_truth(records):
  """Window truth from the chunks' events by the overlap rule, eval layout."""
  windows = input_pipeline.WindowConfig()
  hop = windows.frontend.hop_length / windows.frontend.sample_rate
  length = windows.window_samples / windows.frontend.sample_rate
  num_classes = records.info.features["label"].num_classes
  rows = []
  for ex in tfds.as_numpy(records.as_dataset(split="test")):
    starts, left = input_pipeline.eval_layout(len(ex["audio"]), windows)
    for start in (starts.numpy() - int(left)) * hop:
      row = np.zeros(num_classes, np.uint8)
      hit = (ex["event_start"] < start + length) & (ex["event_end"] > start)
      row[ex["event_label"][hit]] = 1
      rows.append(row)
  return np.array(rows)
