import csv
import os

import numpy as np
import pytest

from inatsounds_jax import annotations
from inatsounds_jax import registry
from inatsounds_jax import tables

RAVEN_HEADER = ("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\t"
                "Low Freq (Hz)\tHigh Freq (Hz)\t{species}\n")


def _write(path, text, mode="w"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
    f.write(text)
  return str(path)


def _raven(rows, species="Species"):
  """A Raven table: each row (begin, end, species) shown in two views, as
  Raven writes a selection seen in the waveform and the spectrogram."""
  lines = [RAVEN_HEADER.format(species=species)]
  for i, (begin, end, name) in enumerate(rows, start=1):
    for view in ("Waveform 1", "Spectrogram 1"):
      lines.append(f"{i}\t{view}\t1\t{begin}\t{end}\t500.0\t8000.0\t{name}\n")
  return "".join(lines)


def _audio(folder, relatives):
  return [(os.path.join(folder, r), r) for r in relatives]


def _read_file(tmp_path, name, text, relatives, duration_s=60.0,
               **options):
  """(path, annotations) of one annotation file written under `tmp_path`,
  read against recordings of `duration_s` seconds there."""
  path = _write(tmp_path / name, text)
  out = annotations.read_annotations(path, _audio(tmp_path, relatives),
                                     [duration_s] * len(relatives), **options)
  return path, out


def _events(result):
  return sorted((e.recording, e.start_s, e.end_s, e.species)
                for e in result.events)


def _kinds(result):
  return sorted(p.kind for p in result.problems)


# ---------------------------------------------------------------------------
# Layouts.
# ---------------------------------------------------------------------------

def test_raven_tables_beside_the_audio_one_event_per_selection(tmp_path):
  audio = _audio(tmp_path, ["site1/a.wav", "site2/a.wav", "b.flac"])
  _write(tmp_path / "site1/a.Table.1.selections.txt",
         _raven([(1.0, 2.5, "amerob"), (3, 4, "norcar")]))
  _write(tmp_path / "site2/a.Table.1.selections.txt",
         _raven([(0.5, 1.5, "blujay")]))
  _write(tmp_path / "b.selections.txt", _raven([(10, 11, "amerob")]))
  out = annotations.read_annotations(str(tmp_path), audio, [60, 60, 60])
  assert out.problems == ()
  assert _events(out) == [("b.flac", 10.0, 11.0, "amerob"),
                          ("site1/a.wav", 1.0, 2.5, "amerob"),
                          ("site1/a.wav", 3.0, 4.0, "norcar"),
                          ("site2/a.wav", 0.5, 1.5, "blujay")]
  assert out.annotated == ("site1/a.wav", "site2/a.wav", "b.flac")
  first = out.events[out.event_indices("site1/a.wav")[0]]
  assert (first.low_hz, first.high_hz) == (500.0, 8000.0)
  assert first.source == os.path.join("site1", "a.Table.1.selections.txt")
  assert first.row == 2  # The Waveform row; its Spectrogram twin is skipped.


@pytest.mark.parametrize("species_column", [
    "Species", "Species Code", "Annotation", "label", "Label", "Class",
    "Common Name", "species", "SPECIES EBIRD CODE"])
@pytest.mark.parametrize("table_name", [
    "x.Table.1.selections.txt", "x.selections.txt", "x.txt"])
def test_raven_tables_in_their_own_folder_any_species_spelling(
    tmp_path, species_column, table_name):
  audio = _audio(tmp_path / "audio", ["deep/x.WAV", "y.wav"])
  tables_dir = tmp_path / "tables"
  _write(tables_dir / table_name, _raven([(1, 2, "Wood Thrush")],
                                         species=species_column))
  out = annotations.read_annotations(str(tables_dir), audio, [30, 30])
  assert out.problems == ()
  assert _events(out) == [("deep/x.WAV", 1.0, 2.0, "Wood Thrush")]
  assert out.annotated == ("deep/x.WAV",)
  assert out.not_annotated == ("y.wav",)


def test_the_species_column_can_be_forced(tmp_path):
  audio = _audio(tmp_path, ["a.wav"])
  text = ("Begin Time (s)\tEnd Time (s)\tSpecies\tSound Type\n"
          "1\t2\tunsure\tTurdus migratorius\n")
  _write(tmp_path / "t/a.txt", text)
  out = annotations.read_annotations(str(tmp_path / "t"), audio, [10],
                                     species_column="sound type")
  assert [e.species for e in out.events] == ["Turdus migratorius"]
  missing = annotations.read_annotations(str(tmp_path / "t"), audio, [10],
                                         species_column="Taxon")
  assert missing.events == () and _kinds(missing) == ["unknown columns"]
  assert "Taxon" in missing.problems[0].reason
  assert missing.not_annotated == ("a.wav",)


def test_a_raven_table_covering_many_recordings_uses_file_offsets(tmp_path):
  # Raven's Begin Time counts from the start of the file sequence; File
  # Offset is the time within Begin File.
  text = ("Selection\tBegin Time (s)\tEnd Time (s)\tBegin File\t"
          "File Offset (s)\tSpecies\n"
          "1\t5.0\t6.5\tr1.wav\t5.0\tamerob\n"
          "2\t65.0\t66.0\tR2.WAV\t5.0\tnorcar\n")
  _, out = _read_file(tmp_path, "ann/sequence.selections.txt", text,
                      ["r1.wav", "r2.wav", "r3.wav"])
  assert out.problems == ()
  assert _events(out) == [("r1.wav", 5.0, 6.5, "amerob"),
                          ("r2.wav", 5.0, 6.0, "norcar")]
  assert out.annotated == ("r1.wav", "r2.wav")
  assert out.not_annotated == ("r3.wav",)


def test_begin_path_from_another_machine_matches_by_path_then_name(tmp_path):
  text = ("Begin Time (s)\tEnd Time (s)\tBegin Path\tSpecies\n"
          "1\t2\tC:\\Users\\me\\survey\\north\\rec.wav\tamerob\n"
          "1\t2\tD:\\old\\lone.wav\tnorcar\n"
          "1\t2\tE:\\rec.wav\tblujay\n")
  _, out = _read_file(tmp_path, "ann/all.txt", text,
                      ["north/rec.wav", "south/rec.wav", "lone.wav"])
  assert _events(out) == [("lone.wav", 1.0, 2.0, "norcar"),
                          ("north/rec.wav", 1.0, 2.0, "amerob")]
  # A bare name that two folders hold is ambiguous, not guessed.
  [problem] = out.problems
  assert problem.kind == "ambiguous recording" and problem.row == 4
  assert "north/rec.wav" in problem.reason and "south/rec.wav" in (
      problem.reason)


def test_powdermill_style_csv(tmp_path):
  text = ("Filename,Start Time (s),End Time (s),Low Freq (Hz),"
          "High Freq (Hz),Species eBird Code\n"
          "Recording_1_Segment_01.mp3,0.0,0.6,3000.0,5000.0,eawpew\n"
          "Recording_1_Segment_02.mp3,12.25,14.5,,,buggna\n")
  _, out = _read_file(tmp_path, "annotations.csv", text,
                      ["Recording_1/Recording_1_Segment_01.mp3",
                       "Recording_1/Recording_1_Segment_02.mp3"], 300.0)
  assert out.problems == ()
  assert _events(out) == [
      ("Recording_1/Recording_1_Segment_01.mp3", 0.0, 0.6, "eawpew"),
      ("Recording_1/Recording_1_Segment_02.mp3", 12.25, 14.5, "buggna")]
  second = [e for e in out.events if e.species == "buggna"][0]
  assert second.low_hz is None and second.high_hz is None
  assert second.row == 3


@pytest.mark.parametrize("header", [
    "recording,start_s,end_s,label", "file,begin,end,species",
    "File Name,Start (s),End (s),Code", "path,Onset,Offset,Class"])
def test_csv_column_spellings(tmp_path, header):
  _, out = _read_file(tmp_path, "ann.csv", f"{header}\none,1.5,2,woothr\n",
                      ["s/one.wav"])
  assert out.problems == ()
  assert _events(out) == [("s/one.wav", 1.5, 2.0, "woothr")]


def test_tab_tables_may_write_decimal_commas(tmp_path):
  _, out = _read_file(
      tmp_path, "t/a.txt",
      "Begin Time (s)\tEnd Time (s)\tSpecies\n1,25\t2,5\tamerob\n",
      ["a.wav"])
  assert _events(out) == [("a.wav", 1.25, 2.5, "amerob")]


def test_a_raven_table_this_library_writes_reads_back(tmp_path):
  audio = _audio(tmp_path, ["a.wav"])
  raven = tables.FORMATS.get("raven")
  path = str(tmp_path / "out" / ("a" + raven.suffix))
  writer = raven.open(path, tables.Band(0.0, 11025.0), with_prior=False)
  writer.add([tables.Detection(3.0, 6.0, "Turdus migratorius",
                               "American Robin", 0.9, "a.wav")])
  writer.commit()
  out = annotations.read_annotations(path, audio, [30])
  assert out.problems == ()
  assert _events(out) == [("a.wav", 3.0, 6.0, "Turdus migratorius")]


# ---------------------------------------------------------------------------
# Which recordings are annotated.
# ---------------------------------------------------------------------------

def test_header_only_table_is_annotated_with_no_events(tmp_path):
  audio = _audio(tmp_path, ["quiet.wav", "busy.wav", "unseen.wav"])
  _write(tmp_path / "quiet.Table.1.selections.txt",
         RAVEN_HEADER.format(species="Species"))
  _write(tmp_path / "busy.Table.1.selections.txt", _raven([(1, 2, "x")]))
  out = annotations.read_annotations(str(tmp_path), audio, [10, 10, 10])
  assert out.annotated == ("quiet.wav", "busy.wav")
  assert out.not_annotated == ("unseen.wav",)
  assert len(out.event_indices("quiet.wav")) == 0
  assert out.problems == ()
  assert out.summary().startswith(
      "1 events in 2 annotated recordings (1 with no events), 1 recordings "
      "not annotated; no problems")


def test_csv_row_with_no_event_annotates_its_recording(tmp_path):
  text = "file,start,end,species\na.wav,1,2,amerob\nb.wav,,,\n"
  relatives = ["a.wav", "b.wav", "c.wav"]
  _, out = _read_file(tmp_path, "ann.csv", text, relatives)
  assert out.annotated == ("a.wav", "b.wav")
  assert out.not_annotated == ("c.wav",)
  _, every = _read_file(tmp_path, "ann.csv", text, relatives,
                        every_recording_annotated=True)
  assert every.annotated == ("a.wav", "b.wav", "c.wav")


# ---------------------------------------------------------------------------
# Bad input: each a problem, the rest read.
# ---------------------------------------------------------------------------

def test_every_bad_table_is_a_problem_and_the_rest_is_read(tmp_path):
  names = ["good.wav", "zero.wav", "nul.wav", "link.wav", "cols.wav",
           "dup1/same.wav", "dup2/same.wav"]
  audio = _audio(tmp_path / "audio", names)
  ann = tmp_path / "ann"
  _write(ann / "good.txt", _raven([(1, 2, "amerob")]))
  _write(ann / "zero.txt", "")
  _write(ann / "nul.txt", b"Begin Time (s)\x00\x00\x01", mode="wb")
  os.symlink(tmp_path / "nowhere.txt", ann / "link.txt")
  _write(ann / "cols.txt", "When\tWhat\n1\tbird\n")
  _write(ann / "ghost.selections.txt", _raven([(1, 2, "amerob")]))
  _write(ann / "same.txt", _raven([(1, 2, "amerob")]))
  out = annotations.read_annotations(str(ann), audio, [60] * len(names))
  assert _events(out) == [("good.wav", 1.0, 2.0, "amerob")]
  assert out.annotated == ("good.wav",)
  by_file = {p.file: p for p in out.problems}
  assert by_file["zero.txt"].kind == "empty file"
  assert by_file["nul.txt"].kind == "damaged table"
  assert by_file["link.txt"].kind == "unreadable file"
  assert by_file["cols.txt"].kind == "unknown columns"
  assert "found ['When', 'What']" in by_file["cols.txt"].reason
  assert "a start time (one of Begin Time (s)" in by_file["cols.txt"].reason
  assert by_file["ghost.selections.txt"].kind == "no recording"
  assert "'ghost'" in by_file["ghost.selections.txt"].reason
  assert by_file["same.txt"].kind == "no recording"
  assert "matches 2 recordings" in by_file["same.txt"].reason
  assert all(p.row is None for p in out.problems)
  assert len(out.problems) == 6


def test_every_bad_row_is_a_problem_and_the_rest_is_read(tmp_path):
  rows = ["file,start,end,low,high,species",
          "a.wav,1,2,100,200,amerob",        # 2: good
          "a.wav,abc,2,,,amerob",            # 3: non-numeric start
          "a.wav,3,3,,,amerob",              # 4: end == start
          "a.wav,5,4,,,amerob",              # 5: end before start
          "a.wav,-1,2,,,amerob",             # 6: before the recording
          "a.wav,9,12,,,norcar",             # 7: past the end: clipped
          "a.wav,10,11,,,norcar",            # 8: starts at the end
          "a.wav,1,2,low,,blujay",           # 9: bad frequency, kept
          "a.wav,1,2,,,",                    # 10: no species
          "a.wav,1,2",                       # 11: truncated line
          "nowhere.wav,1,2,,,amerob",        # 12: unknown recording
          "nowhere.wav,3,4,,,amerob",        # 13: same, counted once
          "a.wav,4,10.00001,,,amerob",       # 14: within the tolerance
          "b.wav,1,inf,,,amerob",            # 15: non-finite end
          "lost.wav,x,y,,,amerob",           # 16: lost's only row
          "b.wav,1,2,,,amerob"]              # 17: good
  _, out = _read_file(tmp_path, "ann.csv", "\n".join(rows) + "\n",
                      ["a.wav", "b.wav", "lost.wav"], 10.0)
  got = {(p.row, p.kind) for p in out.problems}
  assert got == {(3, "non-numeric time"), (4, "end before start"),
                 (5, "end before start"), (6, "before the start"),
                 (7, "past the end"), (8, "past the end"),
                 (9, "bad frequency"), (10, "no species"), (11, "bad row"),
                 (12, "unknown recording"), (15, "non-numeric time"),
                 (16, "non-numeric time"), (None, "all rows rejected")}
  reasons = {p.row: p.reason for p in out.problems}
  assert "duration 10 s" in reasons[7] and "clipped" in reasons[7]
  assert "at or past the end" in reasons[8]
  assert "'nowhere.wav' (2 rows)" in reasons[12]
  assert "'abc' is not a number" in reasons[3]
  # The rows that survive, clipped at the end where a call ran over.
  assert _events(out) == [("a.wav", 1.0, 2.0, "amerob"),
                          ("a.wav", 1.0, 2.0, "blujay"),
                          ("a.wav", 4.0, 10.0, "amerob"),
                          ("a.wav", 9.0, 10.0, "norcar"),
                          ("b.wav", 1.0, 2.0, "amerob")]
  # lost.wav had rows, all rejected: not scored as silence.
  assert out.annotated == ("a.wav", "b.wav")
  assert out.not_annotated == ("lost.wav",)


def test_an_event_running_past_the_end_is_clipped_and_reported(tmp_path):
  _, out = _read_file(tmp_path, "ann.csv",
                      "file,start,end,species\na.wav,8,12.5,amerob\n",
                      ["a.wav"], 10.0)
  assert _events(out) == [("a.wav", 8.0, 10.0, "amerob")]
  [problem] = out.problems
  assert problem.kind == "past the end" and problem.row == 2
  assert "ends at 12.5 s" in problem.reason and "duration 10 s" in (
      problem.reason)


def test_problems_report_and_summary(tmp_path):
  path, out = _read_file(tmp_path, "ann.csv", "file,start,end,species\n"
                         "a.wav,1,2,amerob\na.wav,x,2,amerob\n"
                         "b.wav,1,2,amerob\n", ["a.wav"])
  report = tmp_path / "report" / "annotation_problems.tsv"
  assert annotations.write_problems(str(report), out.problems) == 2
  with open(report, encoding="utf-8") as f:
    rows = list(csv.reader(f, delimiter="\t"))
  assert rows[0] == ["file", "row", "reason"]
  assert rows[1] == [path, "3", "start time 'x' is not a number"]
  assert rows[2][:2] == [path, "4"]
  assert out.summary() == (
      "1 events in 1 annotated recordings (0 with no events), 0 recordings "
      "not annotated; 2 problems (1 non-numeric time, 1 unknown recording)")


def test_missing_source_or_a_folder_without_tables_is_a_config_error(
    tmp_path):
  with pytest.raises(registry.ConfigError, match="no such file"):
    annotations.read_annotations(str(tmp_path / "nope"), [], [])
  _write(tmp_path / "audio/a.wav", "RIFF")
  with pytest.raises(registry.ConfigError, match="no tables"):
    annotations.read_annotations(str(tmp_path / "audio"),
                                 _audio(tmp_path / "audio", ["a.wav"]), [1])


# ---------------------------------------------------------------------------
# Species mapping.
# ---------------------------------------------------------------------------

LABELS = [{"species": "Turdus migratorius", "common_name": "American Robin"},
          {"species": "Cardinalis cardinalis",
           "common_name": "Northern Cardinal"},
          {"species": "Cyanocitta cristata", "common_name": "Blue Jay"},
          {"species": "Hylocichla mustelina", "common_name": "Wood Thrush"}]


def _set_with_species(tmp_path, species):
  lines = ["file,start,end,species"] + [f"a.wav,{i},{i + 1},{s}"
                                        for i, s in enumerate(species)]
  return _read_file(tmp_path, "ann.csv", "\n".join(lines) + "\n",
                    ["a.wav"], len(species) + 1.0)[1]


@pytest.mark.parametrize("header", ["code,scientific_name",
                                    "ebird_code,species",
                                    "Species Code,Scientific Name"])
def test_species_map_reads_common_layouts(tmp_path, header):
  path = _write(tmp_path / "map.csv",
                f"{header}\nAMEROB,Turdus migratorius\nnorcar,"
                "Cardinalis cardinalis\n")
  species_map = annotations.SpeciesMap.read(path)
  assert species_map.get("amerob") == "Turdus migratorius"
  assert species_map.get("NORCAR ") == "Cardinalis cardinalis"
  assert species_map.get("norca") is None


def test_species_map_refuses_bad_header_and_conflicts(tmp_path):
  with pytest.raises(registry.ConfigError, match="found columns"):
    annotations.SpeciesMap.read(_write(tmp_path / "a.csv", "x,y\n1,2\n"))
  conflict = _write(tmp_path / "b.csv", "code,scientific_name\n"
                    "amerob,Turdus migratorius\nAMEROB,Turdus merula\n")
  with pytest.raises(registry.ConfigError, match=r"b.csv:3: 'AMEROB'"):
    annotations.SpeciesMap.read(conflict)


def test_map_species_reports_every_species_and_what_it_became(tmp_path):
  written = (["amerob"] * 3 + ["northern cardinal"] * 2
             + ["Cyanocitta cristata_Blue Jay", "TURDUS MIGRATORIUS",
                "noise", "noise", "zzzzzz"])
  out = _set_with_species(tmp_path, written)
  species_map = annotations.SpeciesMap.read(_write(
      tmp_path / "map.csv", "code,scientific_name\namerob,Turdus migratorius"
      "\nzzzzzz,Imaginarius birdus\n"))
  mapping = annotations.map_species(out, LABELS, species_map)
  by_name = {s.written: s for s in mapping.species}
  assert by_name["amerob"].events == 3
  assert (by_name["amerob"].class_index,
          by_name["amerob"].matched_by) == (0, "species map")
  assert (by_name["northern cardinal"].class_index,
          by_name["northern cardinal"].matched_by) == (1, "common name")
  assert (by_name["Cyanocitta cristata_Blue Jay"].class_index,
          by_name["Cyanocitta cristata_Blue Jay"].matched_by) == (
              2, "BirdNET name")
  assert by_name["TURDUS MIGRATORIUS"].matched_by == "scientific name"
  assert [(s.written, s.events) for s in mapping.unknown] == [
      ("noise", 2), ("zzzzzz", 1)]
  assert "Imaginarius birdus" in by_name["zzzzzz"].matched_by
  assert mapping.class_of_event.tolist() == [0, 0, 0, 1, 1, 2, 0, -1, -1,
                                             -1]
  assert mapping.present_classes.tolist() == [0, 1, 2]  # Not Wood Thrush.
  assert mapping.species[0].written == "amerob"  # Most events first.
  assert "2 unknown to the model (3 events, not scored): noise (2), " \
         "zzzzzz (1)" in mapping.summary()
  report = tmp_path / "mapping.tsv"
  annotations.write_mapping_report(str(report), mapping)
  with open(report, encoding="utf-8") as f:
    rows = list(csv.reader(f, delimiter="\t"))
  assert rows[0] == ["species", "events", "class_index", "label",
                     "matched_by"]
  assert rows[1] == ["amerob", "3", "0", "Turdus migratorius", "species map"]
  assert ["noise", "2", "", ""] in [row[:4] for row in rows]


def test_codes_stay_unknown_without_a_species_map(tmp_path):
  out = _set_with_species(tmp_path, ["amerob", "Wood Thrush"])
  mapping = annotations.map_species(out, LABELS)
  assert [s.written for s in mapping.unknown] == ["amerob"]
  assert "no species map" in mapping.unknown[0].matched_by
  assert mapping.present_classes.tolist() == [3]


# ---------------------------------------------------------------------------
# Truth: the overlap rule.
# ---------------------------------------------------------------------------

def _events_of(*rows):
  start, end, label = zip(*rows) if rows else ((), (), ())
  return annotations.EventArrays(np.asarray(start, float),
                                 np.asarray(end, float),
                                 np.asarray(label, np.int64))


def test_touching_a_window_edge_is_no_overlap():
  starts = np.array([0.0, 3.0, 6.0])
  ends = starts + 3.0
  events = _events_of((3.0, 3.0 + 1e-12 + 1.0, 0),  # From window 1's start.
                      (5.0, 6.0, 1),                # Ends at window 2's start.
                      (8.9, 9.0, 2))                # Ends at window 2's end.
  truth = annotations.overlap_truth(events, starts, ends, 3)
  assert truth.tolist() == [[False, False, False],
                            [True, True, False],
                            [False, False, True]]


def test_window_edges_on_a_float_hop_grid():
  # Windows at a 0.1-s hop computed by multiplication; events from decimal
  # text. Rounding must not turn an edge contact into an overlap.
  starts = np.arange(10) * 0.1
  ends = starts + 0.3
  events = _events_of((0.3, 0.6, 0))
  truth = annotations.overlap_truth(events, starts, ends, 1)[:, 0]
  # Windows [0.1, 0.4) .. [0.5, 0.8) overlap (0.3, 0.6); [0.0, 0.3) and
  # [0.6, 0.9) only touch it.
  assert np.nonzero(truth)[0].tolist() == [1, 2, 3, 4, 5]


def test_min_overlap_is_a_fraction_of_the_shorter_of_window_and_event():
  starts, ends = np.array([0.0]), np.array([3.0])

  def positive(start, end, min_overlap):
    return bool(annotations.overlap_truth(_events_of((start, end, 0)),
                                          starts, ends, 1, min_overlap)[0, 0])

  assert positive(1.5, 9.0, 0.5)          # 1.5 s of a 3-s window.
  assert not positive(1.51, 9.0, 0.5)     # 1.49 s.
  assert positive(1.0, 1.2, 0.5)          # A short call wholly inside.
  assert positive(2.9, 3.1, 0.5)          # Half of a 0.2-s call inside.
  assert not positive(2.92, 3.12, 0.5)    # Less than half of it.
  assert positive(2.999, 3.5, 0.0)        # Any overlap at 0.
  assert positive(-1.0, 4.0, 1.0)         # Covers the whole window.
  assert not positive(0.5, 4.0, 1.0)


def test_overlap_agrees_with_a_pair_by_pair_reference():
  rng = np.random.default_rng(0)
  starts = np.arange(60) * 0.5
  ends = np.minimum(starts + 3.0, 31.0)  # Clipped at the recording's end.
  onset = np.round(rng.uniform(0, 31, 80), 1)
  events = _events_of(*zip(onset, onset + np.round(rng.uniform(0.1, 4, 80),
                                                   1),
                           rng.integers(-1, 6, 80)))
  for min_overlap in (0.0, 0.25, 0.5, 1.0):
    got = annotations.overlap_truth(events, starts, ends, 6, min_overlap)
    want = np.zeros_like(got)
    for s, e, c in zip(events.start_s, events.end_s, events.class_index):
      if c < 0:
        continue
      for w in range(len(starts)):
        overlap = min(ends[w], e) - max(starts[w], s)
        shorter = min(ends[w] - starts[w], e - s)
        if overlap > 1e-9 and overlap >= min_overlap * shorter - 1e-9:
          want[w, c] = True
    np.testing.assert_array_equal(got, want)
    assert got.any() and not got.all()


def test_unknown_species_and_no_events_make_nothing_positive():
  starts, ends = np.array([0.0, 1.0]), np.array([1.0, 2.0])
  truth = annotations.overlap_truth(_events_of((0.0, 2.0, -1)), starts, ends,
                                    2)
  assert not truth.any() and truth.shape == (2, 2)
  assert not annotations.overlap_truth(_events_of(), starts, ends, 2).any()


def test_windows_out_of_time_order_are_refused():
  with pytest.raises(ValueError, match="time order"):
    annotations.overlap_truth(_events_of(), np.array([1.0, 0.0]),
                              np.array([2.0, 1.0]), 1)


def test_segment_truth_cuts_fixed_segments_and_whole_recordings():
  events = _events_of((4.0, 6.0, 0), (11.0, 11.5, 1))
  start, end, truth = annotations.segment_truth(events, 12.0, 5.0, 2)
  assert start.tolist() == [0.0, 5.0, 10.0]
  assert end.tolist() == [5.0, 10.0, 12.0]
  assert truth.tolist() == [[True, False], [True, False], [False, True]]
  start, end, whole = annotations.segment_truth(events, 12.0, None, 2)
  assert (start.tolist(), end.tolist()) == ([0.0], [12.0])
  assert whole.tolist() == [[True, True]]
  # A duration on the grid makes no empty last segment.
  assert annotations.segment_bounds(15.0, 5.0)[0].tolist() == [0, 5, 10]


def test_event_arrays_pair_a_recordings_events_with_their_classes(tmp_path):
  out = _set_with_species(tmp_path, ["Wood Thrush", "Blue Jay", "noise"])
  mapping = annotations.map_species(out, LABELS)
  events = annotations.event_arrays(out, mapping, "a.wav")
  assert events.start_s.tolist() == [0.0, 1.0, 2.0]
  assert events.class_index.tolist() == [3, 2, -1]
  empty = annotations.event_arrays(out, mapping, "other.wav")
  assert len(empty.start_s) == 0
