import json
import math
import re
import tarfile

import pytest

from inatsounds_jax import registry
from inatsounds_jax import release


def _annotations(audio_key="audio_id", dir_key="audio_dir_name"):
  return {
      "info": {},
      "licenses": [],
      "categories": [
          {"id": 0, "name": "Turdus a", "common_name": "A", "supercategory":
           "Aves", "kingdom": "Animalia", dir_key: "00000_a"},
          {"id": 1, "name": "Turdus b", "common_name": "B", "supercategory":
           "Aves", "kingdom": "Animalia", dir_key: "00001_b"},
      ],
      "audio": [
          {"id": 10, "file_name": "train/00000_a/x.wav", "duration": 2.5,
           "latitude": 10.5, "longitude": -20.25, "date": "2020-01-01",
           "location_uncertainty": 30, "license": 2, "rights_holder": "me"},
          {"id": 11, "file_name": "train/00001_b/y.wav", "duration": 1.0,
           "latitude": None, "longitude": None, "date": "2021-01-01"},
      ],
      "annotations": [
          {"id": 100, audio_key: 10, "category_id": 0},
          {"id": 101, audio_key: 11, "category_id": 1},
      ],
  }


@pytest.mark.parametrize("audio_key, dir_key", [
    ("audio_id", "audio_dir_name"), ("image_id", "image_dir_name")])
def test_both_key_spellings(audio_key, dir_key):
  parsed = release.parse_annotations(_annotations(audio_key, dir_key),
                                     "train", "train.json")
  assert not parsed.problems
  assert [i.audio_id for i in parsed.items] == [10, 11]
  assert parsed.categories[1].dir_name == "00001_b"
  first, second = parsed.items
  assert (first.latitude, first.longitude, first.location_uncertainty) == (
      10.5, -20.25, 30)
  assert math.isnan(second.latitude) and math.isnan(second.longitude)
  assert math.isnan(second.location_uncertainty)


def _problems_after(edit):
  data = _annotations()
  edit(data)
  parsed = release.parse_annotations(data, "train", "train.json")
  return parsed, [(p.file, p.reason) for p in parsed.problems]


def test_unknown_category():
  parsed, problems = _problems_after(
      lambda d: d["annotations"][0].update(category_id=7))
  assert [i.audio_id for i in parsed.items] == [11]
  assert any("unknown category id 7" in r and f == "train/00000_a/x.wav"
             for f, r in problems)


def test_unknown_recording_id():
  parsed, problems = _problems_after(lambda d: d["annotations"].append(
      {"id": 102, "audio_id": 999, "category_id": 0}))
  assert len(parsed.items) == 2
  assert any("unknown recording id 999" in r for _, r in problems)


def test_duplicate_recording_ids_are_all_left_out():
  parsed, problems = _problems_after(lambda d: d["audio"].append(
      dict(d["audio"][0], file_name="train/00000_a/z.wav")))
  assert [i.audio_id for i in parsed.items] == [11]
  assert sum("duplicate recording id 10" in r for _, r in problems) == 2


def test_duplicate_annotation_ids():
  parsed, problems = _problems_after(
      lambda d: d["annotations"][1].update(id=100))
  assert not parsed.items
  assert sum("duplicate annotation id 100" in r for _, r in problems) == 2


def test_an_entry_listed_twice_is_one_problem():
  def twice(d):
    d["audio"].append(dict(d["audio"][0]))
    d["annotations"].append(dict(d["annotations"][1]))

  parsed, problems = _problems_after(twice)
  assert not parsed.items
  assert len(problems) == len(set(problems))
  assert problems.count(("train/00000_a/x.wav", "duplicate recording id 10 "
                         "(2 entries, all left out)")) == 1
  assert problems.count(("train/00001_b/y.wav", "duplicate annotation id "
                         "101 (2 entries, all left out)")) == 1


@pytest.mark.parametrize("lat, lon", [(123.0, 0.0), (0.0, -181.0),
                                      ("north", 3.0), (5.0, None)])
def test_impossible_coordinates(lat, lon):
  parsed, problems = _problems_after(
      lambda d: d["audio"][0].update(latitude=lat, longitude=lon))
  assert [i.audio_id for i in parsed.items] == [11]
  assert any("coordinates" in r and f == "train/00000_a/x.wav"
             for f, r in problems)


def test_recording_without_annotation_is_reported():
  parsed, problems = _problems_after(lambda d: d["annotations"].pop())
  assert len(parsed.items) == 1
  assert ("train/00001_b/y.wav", "recording 11 has no valid annotation"
          ) in problems


def test_unusable_file_raises_naming_it(tmp_path):
  path = tmp_path / "train.json"
  path.write_text("{not json}")
  with pytest.raises(release.ReleaseError) as e:
    release.load_json(str(path))
  assert str(e.value) == (
      f"{path}: not valid JSON: Expecting property name enclosed in double "
      "quotes at line 1 column 2; fix it or download it again")
  with pytest.raises(release.ReleaseError, match="no list under key"):
    release.parse_annotations({"audio": []}, "train", "train.json")


def test_a_truncated_json_is_one_line_naming_the_file(tmp_path):
  text = json.dumps(_annotations(), indent=1)
  path = tmp_path / "train.json"
  path.write_text(text[:len(text) // 2])
  with pytest.raises(registry.ConfigError) as e:
    release.load_json(str(path))
  assert isinstance(e.value, release.ReleaseError)
  assert re.fullmatch(
      rf"{re.escape(str(path))}: not valid JSON \(truncated\?\): .* at "
      r"line \d+ column \d+; download or extract it again", str(e.value))
  archive = tmp_path / "train.json.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(path, arcname="train.json")
  with pytest.raises(release.ReleaseError,
                     match=re.escape(f"{archive} (train.json): not valid "
                                     "JSON (truncated?)")):
    release.load_json(str(archive))
  path.write_text(text)  # Whole, in an archive cut short.
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(path, arcname="train.json")
  archive.write_bytes(archive.read_bytes()[:archive.stat().st_size // 2])
  with pytest.raises(release.ReleaseError,
                     match=re.escape(f"{archive}: damaged archive (")):
    release.load_json(str(archive))


def test_relative_key_ignores_split_folder():
  assert release.relative_key("./train/a/b.wav") == "a/b.wav"
  assert release.relative_key("public_test/a/b.wav") == "a/b.wav"
  assert release.relative_key("a/b.wav") == "a/b.wav"


def test_find_split_sources(tmp_path):
  (tmp_path / "train.json").write_text(json.dumps(_annotations()))
  (tmp_path / "train.tar.gz").write_bytes(b"")
  (tmp_path / "public_test.json.tar.gz").write_bytes(b"")
  (tmp_path / "test").mkdir()
  sources = release.find_split_sources(str(tmp_path))
  assert set(sources) == {"train", "test"}
  assert sources["train"].archive_path.endswith("train.tar.gz")
  assert sources["test"].audio_dir.endswith("test")
  (tmp_path / "val.tar.gz").write_bytes(b"")
  with pytest.raises(release.ReleaseError, match="no annotation file"):
    release.find_split_sources(str(tmp_path))
  with pytest.raises(release.ReleaseError, match="no iNatSounds files"):
    release.find_split_sources(str(tmp_path / "test"))


def test_split_files_and_holds_release(tmp_path):
  assert release.split_files("validation") == release.SplitFiles(
      "val", "val.json", "val.json.tar.gz", "val.tar.gz")
  assert release.split_files("test").archive == "public_test.tar.gz"
  assert not release.holds_release(str(tmp_path))
  (tmp_path / "train").mkdir()
  assert not release.holds_release(str(tmp_path))
  (tmp_path / "public_test.json.tar.gz").write_bytes(b"")
  assert release.holds_release(str(tmp_path))


def _split(split, items):
  return release.SplitAnnotations(split, f"{split}.json", {}, items, [],
                                  len(items))


def _item(audio_id, file_name):
  return release.Item(annotation_id=audio_id, audio_id=audio_id,
                      category_id=0, file_name=file_name, duration=1.0,
                      latitude=0.0, longitude=0.0, location_uncertainty=1.0,
                      date="", license=0, rights_holder="")


def test_cross_split_duplicates_stay_in_one_evaluation_split():
  annotations = {
      "train": _split("train", [_item(1, "train/a/1.wav"),
                                _item(2, "train/a/2.wav"),
                                _item(3, "train/a/3.wav")]),
      "validation": _split("validation", [_item(1, "val/a/1.wav"),
                                          _item(4, "val/a/4.wav")]),
      # Recording 4 under another id, same file; recording 2 by id.
      "test": _split("test", [_item(40, "test/a/4.wav"),
                              _item(2, "test/a/two.wav")]),
  }
  out = release.drop_cross_split_duplicates(annotations)
  assert list(out) == ["train", "validation", "test"]
  assert [i.audio_id for i in out["train"].items] == [3]
  assert [i.audio_id for i in out["validation"].items] == [1]
  assert [i.audio_id for i in out["test"].items] == [40, 2]
  assert not out["test"].problems
  assert {(p.file, p.kind) for p in out["train"].problems} == {
      ("train/a/1.wav", "cross-split duplicate"),
      ("train/a/2.wav", "cross-split duplicate")}
  (problem,) = out["validation"].problems
  assert problem.file == "val/a/4.wav"
  assert "also listed in the test split (test.json)" in problem.reason
  assert out["train"].num_annotations == 3  # Still counted as annotations.


def test_source_fingerprint_tells_what_changed(tmp_path):
  (tmp_path / "train.json").write_text(json.dumps(_annotations()))
  (tmp_path / "train" / "00000_a").mkdir(parents=True)
  (tmp_path / "train" / "00000_a" / "x.wav").write_bytes(b"12345")
  (tmp_path / "val.json").write_text(json.dumps(_annotations()))
  (tmp_path / "val.tar.gz").write_bytes(b"archive")
  before = release.source_fingerprint(str(tmp_path))
  assert set(before) == {"train", "validation"}
  assert before == release.source_fingerprint(str(tmp_path))
  assert not release.fingerprint_differences(before, before)

  (tmp_path / "train" / "00000_a" / "x.wav").write_bytes(b"123456")
  (tmp_path / "val.tar.gz").write_bytes(b"archive, longer")
  after = release.source_fingerprint(str(tmp_path))
  assert release.fingerprint_differences(before, after) == [
      "train recordings: train, 1 files, 5 bytes, sha256 "
      f"{before['train']['recordings']['sha256'][:12]} when built; train, "
      f"1 files, 6 bytes, sha256 {after['train']['recordings']['sha256'][:12]}"
      " now",
      "validation recordings: val.tar.gz, 7 bytes when built; val.tar.gz, "
      "15 bytes now"]
  edited = _annotations()
  edited["annotations"].pop()
  (tmp_path / "train.json").write_text(json.dumps(edited))
  (tmp_path / "val.json").unlink()
  (tmp_path / "val.tar.gz").unlink()
  lines = release.fingerprint_differences(
      after, release.source_fingerprint(str(tmp_path)))
  assert lines[0].startswith("train annotations: train.json, ")
  assert lines[1] == "validation: in the records, no longer in the source"
