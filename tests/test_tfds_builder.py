import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from inatsounds_jax import audio
from inatsounds_jax import data
from inatsounds_jax import registry
from inatsounds_jax import synthetic
from tests.conftest import build

from tfds_builders.inat_sounds import inat_sounds_dataset_builder as builder_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLITS = {"train": "train", "validation": "val", "test": "test"}


def _examples(builder, split):
  return {int(ex["annotation_id"]): ex
          for ex in tfds.as_numpy(builder.as_dataset(split=split))}


def _report(builder):
  with open(os.path.join(builder.data_dir, builder_lib.REPORT_NAME)) as f:
    return list(csv.DictReader(f, delimiter="\t"))


def _copy_release(corpus, dest, archives):
  """The corpus as only archives, or only extracted folders + JSON."""
  os.makedirs(dest)
  for name in os.listdir(corpus):
    src = os.path.join(corpus, name)
    if name.endswith(".tar.gz") == archives and name != "strong_labels.json":
      (shutil.copytree if os.path.isdir(src) else shutil.copy)(
          src, os.path.join(dest, name))
  return dest


def test_waveform_and_metadata_round_trip(small_corpus, small_dataset):
  assert not _report(small_dataset)
  label_names = small_dataset.info.features["label"].names
  for split, json_name in SPLITS.items():
    with open(os.path.join(small_corpus, f"{json_name}.json")) as f:
      ann = json.load(f)
    recs = {a["id"]: a for a in ann["audio"]}
    cats = {c["id"]: c for c in ann["categories"]}
    examples = _examples(small_dataset, split)
    assert sorted(examples) == sorted(a["id"] for a in ann["annotations"])
    for a in ann["annotations"]:
      ex, rec, cat = examples[a["id"]], recs[a["audio_id"]], cats[
          a["category_id"]]
      wav = audio.read_audio_file(os.path.join(small_corpus, rec["file_name"]))
      assert ex["audio"].dtype == np.int16
      np.testing.assert_array_equal(ex["audio"], wav)  # Bit-exact.
      assert label_names[ex["label"]] == cat["name"]
      assert ex["species"].decode() == cat["name"]
      assert ex["common_name"].decode() == cat["common_name"]
      assert ex["supercategory"].decode() == cat["supercategory"]
      assert ex["taxonomy"]["genus"].decode() == cat["genus"]
      assert ex["taxonomy"]["class"].decode() == cat["class"]
      assert ex["category_id"] == cat["id"]
      assert ex["recording_id"] == rec["id"]
      assert ex["file_name"].decode() == rec["file_name"]
      assert ex["date"].decode() == rec["date"]
      assert ex["duration"] == np.float32(rec["duration"])
      if rec["latitude"] is None:
        assert math.isnan(ex["latitude"]) and math.isnan(ex["longitude"])
      else:
        assert ex["latitude"] == np.float32(rec["latitude"])
        assert ex["longitude"] == np.float32(rec["longitude"])
      if rec["location_uncertainty"] is None:
        assert math.isnan(ex["location_uncertainty"])
      else:
        assert ex["location_uncertainty"] == rec["location_uncertainty"]


def test_archives_and_folders_give_identical_datasets(
    small_corpus, small_dataset, tmp_path):
  archives = _copy_release(small_corpus, tmp_path / "archives", True)
  assert not os.path.exists(os.path.join(archives, "train"))
  from_archives = build(archives, tmp_path / "tfds")
  assert from_archives.info.features["label"].names == (
      small_dataset.info.features["label"].names)
  for split in SPLITS:
    a, b = _examples(from_archives, split), _examples(small_dataset, split)
    assert sorted(a) == sorted(b)
    for key in a:
      assert a[key]["audio"].tobytes() == b[key]["audio"].tobytes()
      assert a[key]["label"] == b[key]["label"]
      assert a[key]["file_name"] == b[key]["file_name"]
      # The copies leave out strong_labels.json: no events, no checklist.
      assert not len(a[key]["event_label"]) and not len(a[key]["checklist"])
  assert data.label_sources(from_archives)["strong_labels"] is False


@pytest.fixture
def damaged_release(small_corpus, tmp_path):
  """Extracted release with one of each kind of bad item; returns
  (manual_dir, {file: expected reason fragment}, number of valid items)."""
  root = _copy_release(small_corpus, tmp_path / "damaged", False)

  def path(rel):
    return os.path.join(root, rel)

  with open(path("train.json")) as f:
    ann = json.load(f)
  recs = ann["audio"]
  expected = {}
  with open(path(recs[0]["file_name"]), "wb") as f:
    f.write(b"not a wav file at all" * 20)
  expected[recs[0]["file_name"]] = "unreadable audio"
  with open(path(recs[1]["file_name"]), "r+b") as f:
    f.truncate(os.path.getsize(path(recs[1]["file_name"])) // 2)
  expected[recs[1]["file_name"]] = "truncated WAV"
  open(path(recs[2]["file_name"]), "wb").close()
  expected[recs[2]["file_name"]] = "empty file"
  os.remove(path(recs[3]["file_name"]))
  expected[recs[3]["file_name"]] = "missing file"
  recs[4]["latitude"] = 95.0
  expected[recs[4]["file_name"]] = "impossible coordinates"
  by_audio = {a["audio_id"]: a for a in ann["annotations"]}
  by_audio[recs[5]["id"]]["category_id"] = 4242
  expected[recs[5]["file_name"]] = "unknown category id 4242"
  recs.append(dict(recs[6]))  # Duplicate id.
  expected[recs[6]["file_name"]] = "duplicate recording id"
  ann["annotations"].append({"id": 10**6, "audio_id": 10**7,
                             "category_id": 0})
  expected["train.json annotation 1000000"] = "unknown recording id"
  num_valid = len(ann["annotations"]) - 8  # 7 bad recordings, 1 bad annotation.
  with open(path("train.json"), "w") as f:
    json.dump(ann, f)
  return root, expected, num_valid


def test_bad_items_are_skipped_and_reported(damaged_release, tmp_path,
                                            capsys):
  root, expected, num_valid = damaged_release
  builder = build(root, tmp_path / "tfds")
  examples = _examples(builder, "train")
  assert len(examples) == num_valid
  report = _report(builder)
  for file, reason in expected.items():
    rows = [r for r in report if r["file"].endswith(file)]
    assert rows, f"{file} missing from report"
    assert any(reason in r["reason"] for r in rows), (file, rows)
    assert all(r["split"] == "train" for r in rows)
  skipped = {r["file"] for r in report}
  assert not skipped & {ex["file_name"].decode() for ex in examples.values()}
  assert not any("BytesIO" in r["reason"] for r in report)
  summary = capsys.readouterr().err
  # 8 items left out, 11 report lines (a duplicated recording is reported
  # for its entries, once as they are the same, and its annotation; an
  # unknown category for the annotation and its recording, ...): the
  # summary counts items. No problem is listed twice.
  assert len(report) == 11
  assert len({tuple(r.values()) for r in report}) == len(report)
  assert f"train: {num_valid} examples, 8 items skipped" in summary
  assert "8 items skipped; 11 problems reported" in summary
  assert "truncated WAV" in summary
  assert builder_lib.REPORT_NAME in summary
  # The other splits were untouched.
  assert len(_examples(builder, "test")) > 0


def test_strict_mode_stops_at_first_problem(damaged_release, tmp_path):
  root, _, _ = damaged_release
  with pytest.raises(builder_lib.BuildError, match="strict mode"):
    build(root, tmp_path / "tfds", strict=True)
  # Nothing half-built is left where a later run would pick it up.
  assert not data.builder("full", str(tmp_path / "tfds"),
                          strict=True).is_prepared()


def test_damaged_archive_keeps_what_was_read(small_corpus, tmp_path):
  root = _copy_release(small_corpus, tmp_path / "arch", True)
  train = os.path.join(root, "train.tar.gz")
  with open(train, "r+b") as f:
    f.truncate(os.path.getsize(train) * 2 // 3)
  builder = build(root, tmp_path / "tfds")
  kept = len(_examples(builder, "train"))
  report = [r for r in _report(builder) if r["split"] == "train"]
  assert kept > 0 and report
  assert all("damaged" in r["reason"] for r in report)
  with open(os.path.join(small_corpus, "train.json")) as f:
    assert kept + len(report) == len(json.load(f)["annotations"])


def _truncated_release(small_corpus, tmp_path):
  """The release with its train.json cut in half (a download cut short)."""
  root = _copy_release(small_corpus, tmp_path / "truncated", False)
  path = os.path.join(root, "train.json")
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  return root


def test_a_truncated_annotation_json_stops_the_build_in_one_line(
    small_corpus, tmp_path):
  root = _truncated_release(small_corpus, tmp_path)
  with pytest.raises(registry.ConfigError) as e:
    build(root, tmp_path / "tfds")
  assert re.fullmatch(
      rf"{re.escape(os.path.join(root, 'train.json'))}: not valid JSON "
      r"\(truncated\?\): .* at line 1 column \d+; download or extract it "
      "again", str(e.value))


@pytest.mark.slow  # A `tfds build` process.
def test_tfds_command_line_says_a_truncated_json_in_one_line(small_corpus,
                                                              tmp_path):
  root = _truncated_release(small_corpus, tmp_path)
  result = subprocess.run(
      ["tfds", "build", os.path.join(REPO, "tfds_builders", "inat_sounds"),
       "--config", "full", "--manual_dir", root,
       "--data_dir", str(tmp_path / "tfds")],
      capture_output=True, text=True, cwd=tmp_path,
      env=dict(os.environ, PATH=os.path.dirname(sys.executable) + ":" +
               os.environ["PATH"]))
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(
      f"error: {os.path.join(root, 'train.json')}: not valid JSON "
      "(truncated?): ")


def test_full_config_without_manual_dir_explains(tmp_path):
  with pytest.raises(Exception, match="manual_dir"):
    data.prepare("full", data_dir=str(tmp_path))


def _tree(folder):
  """{path: bytes} of every file under `folder`."""
  out = {}
  for root, _, files in os.walk(folder):
    for name in files:
      with open(os.path.join(root, name), "rb") as f:
        out[os.path.join(root, name)] = f.read()
  return out


def test_synthetic_config_generates_its_corpus_in_its_own_folder(tmp_path):
  # A manual dir with a user's recording where the corpus has a folder.
  user = tmp_path / "user"
  (user / "train").mkdir(parents=True)
  (user / "train" / "field_recording.wav").write_bytes(b"RIFF precious")
  before = _tree(user)
  b = data.prepare("synthetic", data_dir=str(tmp_path / "tfds"),
                   manual_dir=str(user), num_species=4, num_recordings=16)
  assert _tree(user) == before
  assert b.info.config_name == "synthetic_s4_r16_seed0"
  assert b.info.splits["train"].num_examples > 0
  assert len(b.info.features["label"].names) == 4
  assert os.path.exists(os.path.join(
      tmp_path, "tfds", "downloads", "inat_sounds_synthetic",
      "s4_r16_seed0", "train.json"))
  # Prepared again: the records match their corpus, so they are reused.
  data.prepare("synthetic", data_dir=str(tmp_path / "tfds"),
               num_species=4, num_recordings=16)


@pytest.mark.slow  # Builds a corpus of the hard world.
def test_hard_world_config_builds_the_harder_corpus_under_its_own_name(
    tmp_path):
  b = data.prepare("synthetic", data_dir=str(tmp_path / "tfds"),
                   num_species=6, num_recordings=24, world="hard")
  assert b.info.config_name == "synthetic_s6_r24_seed0_hard"
  corpus = os.path.join(tmp_path, "tfds", "downloads",
                        "inat_sounds_synthetic", "s6_r24_seed0_hard")
  # The hard world's generator options reached the corpus it was built from.
  expected = synthetic.CorpusConfig.hard(num_species=6, num_recordings=24)
  assert synthetic.is_complete(corpus, expected)
  assert not synthetic.is_complete(
      corpus, synthetic.CorpusConfig(num_species=6, num_recordings=24))
  with pytest.raises(ValueError, match="world='easy'"):
    data.prepare("synthetic", data_dir=str(tmp_path / "tfds2"),
                 num_species=6, num_recordings=24, world="easy")


def _drop_last_annotation(manual_dir):
  path = os.path.join(manual_dir, "train.json")
  with open(path) as f:
    ann = json.load(f)
  ann["annotations"].pop()
  with open(path, "w") as f:
    json.dump(ann, f)


def test_stale_records_are_detected(small_corpus, small_dataset, tmp_path):
  data_dir = small_dataset.data_dir_root
  # The same release copied elsewhere: the records are still its records.
  copy = _copy_release(small_corpus, tmp_path / "copy", False)
  assert build(copy, data_dir).info.splits["train"].num_examples == (
      small_dataset.info.splits["train"].num_examples)
  # Fixed annotations, or another release: stop and say what differs.
  _drop_last_annotation(copy)
  with pytest.raises(builder_lib.StaleRecordsError) as e:
    build(copy, data_dir)
  message = str(e.value)
  assert "train annotations: train.json" in message
  assert "validation" not in message  # Only what differs.
  assert "--overwrite" in message and "overwrite=True" in message
  os.remove(os.path.join(copy, "val.json"))
  shutil.rmtree(os.path.join(copy, "val"))
  with pytest.raises(builder_lib.StaleRecordsError,
                     match="validation: in the records, no longer in the "
                     "source"):
    build(copy, data_dir)


def test_overwrite_rebuilds_stale_records(small_corpus, tmp_path):
  root = _copy_release(small_corpus, tmp_path / "release", False)
  first = build(root, tmp_path / "tfds")
  _drop_last_annotation(root)
  rebuilt = data.prepare("full", data_dir=str(tmp_path / "tfds"),
                         manual_dir=root, overwrite=True)
  assert rebuilt.info.splits["train"].num_examples == (
      first.info.splits["train"].num_examples - 1)
  assert len(_examples(rebuilt, "train")) == (
      rebuilt.info.splits["train"].num_examples)
  build(root, tmp_path / "tfds")  # Now current: reused without complaint.


@pytest.fixture
def train_recording_also_in_val(small_corpus, tmp_path):
  """A release whose val.json also lists a train recording (copied into
  val/); returns (manual dir, that recording's id)."""
  root = _copy_release(small_corpus, tmp_path / "dup", False)
  with open(os.path.join(root, "train.json")) as f:
    train = json.load(f)
  with open(os.path.join(root, "val.json")) as f:
    val = json.load(f)
  rec = train["audio"][0]
  ann = next(a for a in train["annotations"] if a["audio_id"] == rec["id"])
  val_name = "val/" + rec["file_name"].split("/", 1)[1]
  os.makedirs(os.path.dirname(os.path.join(root, val_name)), exist_ok=True)
  shutil.copy(os.path.join(root, rec["file_name"]),
              os.path.join(root, val_name))
  val["audio"].append(dict(rec, file_name=val_name))
  val["annotations"].append(dict(ann, id=10**6))
  val["categories"] = train["categories"]
  with open(os.path.join(root, "val.json"), "w") as f:
    json.dump(val, f)
  return root, rec["id"]


def test_cross_split_duplicate_is_kept_only_in_evaluation(
    train_recording_also_in_val, tmp_path):
  root, recording_id = train_recording_also_in_val
  builder = build(root, tmp_path / "tfds")
  train_ids = {int(ex["recording_id"])
               for ex in _examples(builder, "train").values()}
  val_ids = [int(ex["recording_id"])
             for ex in _examples(builder, "validation").values()]
  assert recording_id not in train_ids
  assert val_ids.count(recording_id) == 1
  rows = [r for r in _report(builder) if f"recording {recording_id} " in
          r["reason"]]
  assert len(rows) == 1 and rows[0]["split"] == "train"
  assert "also listed in the validation split" in rows[0]["reason"]
  with pytest.raises(builder_lib.BuildError, match="cross-split|also listed"):
    build(root, tmp_path / "strict", strict=True)


@pytest.mark.slow
def test_tfds_command_line(small_corpus, tmp_path):
  result = subprocess.run(
      ["tfds", "build", os.path.join(REPO, "tfds_builders", "inat_sounds"),
       "--config", "full", "--manual_dir", small_corpus,
       "--data_dir", str(tmp_path), "--noforce_checksums_validation"],
      capture_output=True, text=True, cwd=tmp_path,
      env=dict(os.environ, PATH=os.path.dirname(sys.executable) + ":" +
               os.environ["PATH"]))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "no problems found" in result.stderr
  built = tfds.builder_from_directory(
      str(tmp_path / "inat_sounds" / "full" / "1.1.0"))
  assert built.info.splits["train"].num_examples > 0


def test_label_counts_classes_and_true_ranges_next_to_records(small_dataset):
  classes = data.class_table(small_dataset)
  assert [row["species"] for row in classes] == (
      small_dataset.info.features["label"].names)
  for ex in tfds.as_numpy(small_dataset.as_dataset(split="validation")):
    row = classes[int(ex["label"])]
    assert row["supercategory"] == ex["supercategory"].decode()
    assert row["common_name"] == ex["common_name"].decode()
  counts = data.label_counts(small_dataset)
  for split, info in small_dataset.info.splits.items():
    assert sum(counts[split]) == info.num_examples
  labels = [int(ex["label"]) for ex in
            tfds.as_numpy(small_dataset.as_dataset(split="train"))]
  assert counts["train"] == np.bincount(
      labels, minlength=len(counts["train"])).tolist()
  assert os.path.exists(os.path.join(small_dataset.data_dir,
                                     "species_ranges.json"))


@pytest.mark.slow
def test_beam_build_equals_the_streamed_build_with_its_report(
    damaged_release, tmp_path, capsys):
  # The path of a Dataflow / Spark / Flink user, on Beam's DirectRunner.
  beam_options = pytest.importorskip("apache_beam.options.pipeline_options")
  root, _, _ = damaged_release
  streamed = build(root, tmp_path / "streamed")
  streamed_summary = capsys.readouterr().err
  on_beam = data.builder("full", data_dir=str(tmp_path / "beam"))
  on_beam.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=root, beam_options=beam_options.PipelineOptions(
          ["--runner=DirectRunner", "--direct_num_workers=1"])))
  beam_summary = capsys.readouterr().err
  for split in SPLITS:
    a, b = _examples(streamed, split), _examples(on_beam, split)
    assert sorted(a) == sorted(b)
    for key in a:
      for feature in a[key]:
        np.testing.assert_array_equal(a[key][feature], b[key][feature])
  assert _report(on_beam) == _report(streamed)
  assert len(_report(on_beam)) == 11
  assert data.label_counts(on_beam) == data.label_counts(streamed)

  def summary(text, data_dir):
    return text[text.index(": built"):].replace(str(data_dir), "DATA_DIR")

  assert summary(beam_summary, tmp_path / "beam") == summary(
      streamed_summary, tmp_path / "streamed")
  assert "8 items skipped; 11 problems reported" in beam_summary
  assert not os.path.exists(os.path.join(on_beam.data_dir,
                                         "beam_worker_records"))


def test_strong_labels_and_checklists_become_features(small_corpus,
                                                      small_dataset):
  with open(os.path.join(small_corpus, "strong_labels.json")) as f:
    strong = {r["audio_id"]: r for r in json.load(f)}
  label_of = {row["category_id"]: row["label"]
              for row in data.class_table(small_dataset)}
  sources = data.label_sources(small_dataset)
  assert sources["strong_labels"] and sources["checklists"]
  for split in SPLITS:
    examples = list(tfds.as_numpy(small_dataset.as_dataset(split=split)))
    indices = sorted(int(ex["example_index"]) for ex in examples)
    assert indices == list(range(sources["example_index_size"][split]))
    audible = []
    for ex in examples:
      rec = strong[int(ex["recording_id"])]
      events = sorted((label_of[e["category_id"]], e["start"], e["end"])
                      for e in rec["events"])
      got = sorted(zip(ex["event_label"].tolist(), ex["event_start"].tolist(),
                       ex["event_end"].tolist()))
      assert [e[0] for e in got] == [e[0] for e in events]
      np.testing.assert_allclose([e[1:] for e in got],
                                 [e[1:] for e in events], rtol=1e-6)
      assert sorted(ex["checklist"].tolist()) == sorted(
          label_of[c] for c in rec["checklist"])
      audible.append(len(set(ex["event_label"].tolist())))
    assert sources["mean_audible_species"][split] == pytest.approx(
        np.mean(audible))
