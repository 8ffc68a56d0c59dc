"""Prediction: windows, chunked decoding, output files, resumption, bad input.

Fast tests use an initialised placeholder model (a workdir written in
seconds) on real recordings from PyPI wheels; the slow one trains a tiny
model on the synthetic set and predicts with it.
"""

import csv
import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from inatsounds_jax import audio
from inatsounds_jax import frontend as frontend_lib
from inatsounds_jax import inference
from inatsounds_jax import predict
from inatsounds_jax import registry
from inatsounds_jax import tables
from inatsounds_jax import windows as windows_lib
from inatsounds_jax.geo import prior as prior_lib

import model_workdir

WINDOWS = windows_lib.WindowConfig(window_frames=512,
                                   eval_stride_frames=258)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return model_workdir.make_workdir(str(tmp_path_factory.mktemp("model")))


@pytest.fixture(scope="module")
def predictor(workdir):
  return inference.Predictor(workdir, batch_size=8)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
  """A folder: the wav, the mp3 in a subfolder, an empty and a junk file."""
  folder = tmp_path_factory.mktemp("recordings")
  os.makedirs(folder / "sub")
  shutil.copy(model_workdir.bird_wav(), folder / "birds.wav")
  shutil.copy(model_workdir.yellowthroat_mp3(), folder / "sub" / "cy.mp3")
  (folder / "empty.flac").write_bytes(b"")
  (folder / "sub" / "junk.wav").write_bytes(b"not audio at all")
  return str(folder)


# -- Windows -------------------------------------------------------------------

def test_hop_of_one_and_a_half_seconds_is_258_frames():
  assert inference.stride_frames(1.5, frontend_lib.INATSOUNDS) == 258
  with pytest.raises(inference.InputError, match="shorter than one"):
    inference.stride_frames(0.001, frontend_lib.INATSOUNDS)


def test_a_wrong_header_length_recuts_the_file(workdir, predictor,
                                               monkeypatch, tmp_path):
  path = model_workdir.bird_wav()
  want = predictor.predict_file(path)
  # 1-s chunks: windows of the wrong first layout reach batches; dropped.
  predictor = inference.Predictor(workdir, batch_size=8, chunk_seconds=1.0)
  opened = audio.open_audio_file
  calls = []

  def lying_header(file, **kwargs):
    context = opened(file, **kwargs)
    decoder = context.__enter__()
    if not calls:
      decoder.num_samples += 40_000  # The first pass plans extra windows.
    calls.append(file)

    class Context:
      def __enter__(self):
        return decoder

      def __exit__(self, *exc):
        return context.__exit__(*exc)

    return Context()

  monkeypatch.setattr(audio, "open_audio_file", lying_header)
  got = predictor.predict_file(path)
  assert len(calls) == 2
  np.testing.assert_array_equal(got.start_s, want.start_s)
  np.testing.assert_array_equal(got.logits, want.logits)
  calls.clear()
  kinds = [e.kind for e in predictor.stream([(path, math.nan, math.nan)])]
  assert kinds.count(inference.BEGIN) == 2 and kinds[-1] == inference.END
  # The command drops what it wrote of the first pass.
  calls.clear()
  _run(predictor, path, tmp_path / "out", embeddings="npz",
       selection=inference.Selection(0.0, top_k=1))
  rows = tables.read_table(str(tmp_path / "out" /
                               "birds_10s.BirdNET.results.csv"))
  assert [r["Start (s)"] for r in rows] == [f"{t:.4f}" for t in want.start_s]
  written = tables.read_embeddings(str(tmp_path / "out" /
                                       "birds_10s.embeddings.npz"))
  np.testing.assert_array_equal(written["logits"], want.logits)


# -- The predictor -------------------------------------------------------------

def test_predict_file_on_real_recordings(predictor):
  for path, seconds in ((model_workdir.bird_wav(), 10.133),
                        (model_workdir.yellowthroat_mp3(), 5.904)):
    table = predictor.predict_file(path)
    assert table.duration_s == pytest.approx(seconds, abs=1e-3)
    layout = windows_lib.Layout.of(round(table.duration_s * 22_050),
                                   predictor.windows)
    assert len(table.start_s) == len(layout.first_sample)
    np.testing.assert_allclose(table.probabilities.sum(axis=1), 1, rtol=1e-5)
    assert table.embeddings.shape == (len(table.start_s), 192)
    assert np.all(np.isfinite(table.logits))
  assert predictor.activation == "softmax"


def test_chunked_decoding_gives_the_whole_file_table(workdir, predictor):
  small_chunks = inference.Predictor(workdir, batch_size=8, chunk_seconds=0.5)
  for path in (model_workdir.bird_wav(), model_workdir.yellowthroat_mp3()):
    whole = predictor.predict_file(path)
    chunked = small_chunks.predict_file(path)
    np.testing.assert_array_equal(chunked.start_s, whole.start_s)
    np.testing.assert_array_equal(chunked.logits, whole.logits)
    # And the windows are those of the whole decoded file.
    waveform = audio.read_audio_file(path)
    starts, left = windows_lib.eval_layout(len(waveform), predictor.windows)
    windows = windows_lib.cut_windows(waveform, starts, left,
                                      predictor.windows)
    direct = np.asarray(predictor._apply(windows).logits)  # pylint: disable=protected-access
    np.testing.assert_allclose(whole.logits, direct, atol=1e-5)


def test_batches_span_files_and_results_keep_input_order(predictor,
                                                         recordings):
  files = [(os.path.join(recordings, name), math.nan, math.nan) for name in
           ("birds.wav", "empty.flac", "sub/cy.mp3", "sub/junk.wav",
            "birds.wav")]
  results = list(predictor.predict_files(files))
  assert [r[0] for r in results] == [f[0] for f in files]
  assert isinstance(results[1][1], audio.AudioError)
  assert "empty.flac" in str(results[1][1])
  assert isinstance(results[3][1], audio.AudioError)
  np.testing.assert_array_equal(results[0][1].logits, results[4][1].logits)


# -- Selecting detections ------------------------------------------------------

def _table(probabilities, prior=None):
  n = len(probabilities)
  return inference.WindowTable(
      file="x.wav", duration_s=3.0 * n, start_s=np.arange(n) * 1.5,
      end_s=np.arange(n) * 1.5 + 3.0,
      probabilities=np.asarray(probabilities, np.float32),
      logits=np.zeros((n, 3)), embeddings=np.zeros((n, 2)), geo_prior=prior)


def test_min_confidence_top_k_species_list_and_geo_filter():
  labels = model_workdir.labels(3)
  table = _table([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]],
                 prior=np.array([0.9, 0.05, np.nan]))
  rows = inference.detections(table, labels, inference.Selection(0.25), "x.wav")
  assert [(r.species[-1], r.start_s) for r in rows] == [
      ("0", 0.0), ("1", 0.0), ("2", 1.5)]
  assert rows[0].geo_prior == pytest.approx(0.9)
  top1 = inference.detections(table, labels, inference.Selection(0.0, top_k=1),
                            "x.wav")
  assert [r.species[-1] for r in top1] == ["0", "2"]
  only = inference.Selection(0.0, allowed=np.array([False, True, False]))
  assert {r.species for r in inference.detections(table, labels, only, "x")} \
      == {"Genus species1"}
  filtered = inference.detections(
      table, labels, inference.Selection(0.25, geo_filter=True), "x.wav")
  # Species 1 is below the prior's threshold; 2 is unknown there: kept.
  assert [r.species[-1] for r in filtered] == ["0", "2"]


def test_species_list_names_unknown_species(tmp_path):
  path = tmp_path / "species.txt"
  path.write_text("Genus species1_Bird 1\nBird 2\nNotus realis\n")
  allowed, unknown = inference.read_species_list(str(path),
                                               model_workdir.labels(3))
  assert allowed.tolist() == [False, True, True]
  assert unknown == ["Notus realis"]
  path.write_text("Notus realis\n")
  with pytest.raises(inference.InputError, match="none of its 1 names"):
    inference.read_species_list(str(path), model_workdir.labels(3))


def test_each_species_is_cut_at_its_own_threshold():
  labels = model_workdir.labels(3)
  at = float(np.float32(0.3))  # A probability exactly at its threshold.
  table = _table([[0.7, at, 0.2], [0.29, 0.4, 0.24], [0.1, 0.1, 0.8]])
  # 0: 0.3; 1: not given (NaN), keeps min_confidence 0.35; 2: 0.25.
  selection = inference.Selection(
      0.35, thresholds=np.array([0.3, np.nan, 0.25]))
  rows = inference.detections(table, labels, selection, "x.wav")
  assert [(r.start_s, r.species[-1]) for r in rows] == [
      (0.0, "0"), (1.5, "1"), (3.0, "2")]
  # Species 1 at 0.3 is below min_confidence; species 0 at 0.29 is just
  # below its own 0.3; species 2 at 0.24 just below its 0.25.
  selection = dataclasses.replace(selection,
                                  thresholds=np.array([0.3, at, 0.25]))
  rows = inference.detections(table, labels, selection, "x.wav")
  assert [(r.start_s, r.species[-1]) for r in rows] == [
      (0.0, "0"), (0.0, "1"), (1.5, "1"), (3.0, "2")]
  # top_k ranks before the thresholds: a low threshold lets no
  # lower-ranked species in.
  top1 = dataclasses.replace(selection, top_k=1,
                             thresholds=np.array([0.9, 0.0, 0.0]))
  assert [(r.start_s, r.species[-1]) for r in inference.detections(
      table, labels, top1, "x.wav")] == [(1.5, "1"), (3.0, "2")]


def test_thresholds_file_matches_names_as_species_lists_do(tmp_path):
  path = tmp_path / "thresholds.csv"
  path.write_text("species,threshold,common_name,rule\n"
                  "Genus species0,0.5,Bird 0,precision\n"
                  "Bird 1,,Bird 1,best_f1\n"
                  "Genus species2_Bird 2,0,,\n"
                  "Notus realis,0.4,,\n")
  read = inference.read_thresholds(str(path), model_workdir.labels(4))
  np.testing.assert_array_equal(read.thresholds, [0.5, np.nan, 0.0, np.nan])
  assert read.unknown == ["Notus realis"]
  assert len(read.sha256) == 16


@pytest.mark.parametrize("content, message", [
    ("species,threshold\nGenus species0,0.5\nGenus species1,high\n",
     ":3: threshold 'high' of 'Genus species1' is not a number between"),
    ("species,threshold\nGenus species0,1.5\n",
     ":2: threshold '1.5' of 'Genus species0' is not a number between"),
    ("species,threshold\nGenus species0,nan\n", ":2: threshold 'nan'"),
    ("species,cutoff\nGenus species0,0.5\n",
     ":1: the header must name the columns species, threshold"),
    ("species,threshold\nGenus species0,0.5\nBird 0,0.6\n",
     ":3: 'Bird 0' is 'Genus species0', given a threshold on line 2 too"),
], ids=["not_a_number", "above_1", "nan", "no_threshold_column",
        "named_twice"])
def test_a_bad_thresholds_file_names_file_and_row(tmp_path, content,
                                                  message):
  path = tmp_path / "thresholds.csv"
  path.write_text(content)
  with pytest.raises(inference.InputError) as e:
    inference.read_thresholds(str(path), model_workdir.labels(3))
  assert str(e.value).startswith(f"--thresholds={path}{message}"), e.value
  with pytest.raises(inference.InputError, match="absent.csv: No such file"):
    inference.read_thresholds(str(tmp_path / "absent.csv"),
                              model_workdir.labels(3))


def test_locations_csv_bad_rows_name_file_and_line(tmp_path):
  path = tmp_path / "where.csv"
  path.write_text("file,latitude,longitude\na.wav,10,20\n\nb.wav,north,3\n"
                  "c.wav,95,0\n")
  with pytest.raises(inference.InputError) as e:
    inference.read_locations(str(path))
  assert f"{path}:4: latitude/longitude 'north'" in str(e.value)
  assert f"{path}:5: (95.0, 0.0) is outside" in str(e.value)
  path.write_text("name,lat,lon\n")
  with pytest.raises(inference.InputError, match=r"where.csv:1: the header"):
    inference.read_locations(str(path))


# -- The command's outputs -----------------------------------------------------

def _run(predictor, recordings, output, **options):
  return predict.run(predictor, recordings, str(output),
                     predict.RunOptions(**options))


def test_outputs_parse_back_with_their_column_names(predictor, recordings,
                                                    tmp_path):
  out = tmp_path / "out"
  counts = _run(predictor, recordings, out, embeddings="npz",
                selection=inference.Selection(min_confidence=0.05))
  assert counts == {"done": 2, "skipped": 0, "failed": 2,
                    "detections": counts["detections"],
                    "detections_before": 0}
  raven = tables.read_table(str(out / "birds.BirdNET.selection.table.txt"))
  assert list(raven[0])[:7] == ["Selection", "View", "Channel",
                                "Begin Time (s)", "End Time (s)",
                                "Low Freq (Hz)", "High Freq (Hz)"]
  assert raven[0]["View"] == "Spectrogram 1" and raven[0]["Channel"] == "1"
  assert float(raven[0]["High Freq (Hz)"]) == 11_025.0
  table = predictor.predict_file(os.path.join(recordings, "birds.wav"))
  best = table.probabilities[0].max()
  assert float(raven[0]["Confidence"]) == pytest.approx(best, abs=1e-4)
  rows = tables.read_table(str(out / "sub" / "cy.BirdNET.results.csv"))
  assert list(rows[0]) == list(tables.CSV_COLUMNS)
  combined = tables.read_table(str(out / tables.COMBINED_CSV))
  assert len(combined) == counts["detections"]
  assert {r["File"] for r in combined} == {
      os.path.join(recordings, "birds.wav"),
      os.path.join(recordings, "sub", "cy.mp3")}
  embeddings = tables.read_embeddings(str(out / "birds.embeddings.npz"))
  np.testing.assert_allclose(embeddings["logits"], table.logits, atol=1e-6)
  errors = (out / tables.ERRORS_FILE).read_text().splitlines()
  assert errors[0] == "file\tkind\treason"
  assert any("empty.flac\tempty file" in e for e in errors)
  assert any("junk.wav\tunreadable audio" in e for e in errors)
  settings = json.loads((out / tables.SETTINGS_FILE).read_text())
  assert settings["activation"] == "softmax"
  assert settings["hop_frames"] == 258
  assert settings["min_confidence"] == 0.05
  assert len(settings["label_list_sha256"]) == 16


def test_a_resumed_run_skips_files_whose_outputs_are_complete(
    predictor, recordings, tmp_path):
  out = tmp_path / "out"
  _run(predictor, recordings, out)
  csv_path = out / "birds.BirdNET.results.csv"
  first = csv_path.read_text()
  os.remove(out / "sub" / "cy.BirdNET.selection.table.txt")
  counts = _run(predictor, recordings, out)
  assert (counts["done"], counts["skipped"], counts["failed"]) == (1, 1, 2)
  assert csv_path.read_text() == first
  assert counts["detections_before"] == len(tables.read_table(str(csv_path)))
  with pytest.raises(inference.InputError, match="min_confidence: 0.25 -> 0.5"):
    _run(predictor, recordings, out, selection=inference.Selection(0.5))


def test_prior_column_in_every_row(predictor, recordings, tmp_path):
  species = predictor.species

  def presence(lat, lon):
    return np.tile(np.linspace(0, 1, len(species)), (len(lat), 1))

  with_prior = inference.Predictor(predictor.model_path, batch_size=8)
  with_prior.prior = prior_lib.GeoPrior(presence, species, species)
  out = tmp_path / "out"
  _run(with_prior, recordings, out, latitude=40.0, longitude=-3.0,
       selection=inference.Selection(0.0, top_k=len(species)))
  rows = tables.read_table(str(out / "birds.BirdNET.results.csv"))
  prior = {r["Scientific name"]: float(r["Geo prior"]) for r in rows}
  assert prior["Genus species0"] == 0.0 and prior["Genus species5"] == 1.0
  raven = tables.read_table(str(out / "birds.BirdNET.selection.table.txt"))
  assert "Geo Prior" in raven[0]


@pytest.mark.parametrize("problem, message", [
    ("empty_folder", "no audio files"),
    ("missing", "no such file or folder"),
    ("unwritable", "cannot create"),
    ("bad_list", "listed recordings not found"),
])
def test_bad_inputs_give_one_clear_message(predictor, recordings, tmp_path,
                                           problem, message):
  out = tmp_path / "out"
  source = recordings
  if problem == "empty_folder":
    source = str(tmp_path / "nothing")
    os.makedirs(source)
    (tmp_path / "nothing" / "notes.txt").write_text("no audio")
  elif problem == "missing":
    source = str(tmp_path / "absent")
  elif problem == "unwritable":
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "out"  # Under a file: cannot be created.
  elif problem == "bad_list":
    source = str(tmp_path / "list.txt")
    (tmp_path / "list.txt").write_text(
        f"{os.path.join(recordings, 'birds.wav')}\nmissing.wav\n")
  with pytest.raises(registry.ConfigError, match=message):
    _run(predictor, source, out)


def test_a_list_file_of_recordings(predictor, recordings, tmp_path):
  (tmp_path / "list.txt").write_text(
      f"{os.path.join(recordings, 'birds.wav')}\n\n"
      f"{os.path.join(recordings, 'sub', 'cy.mp3')}\n")
  counts = _run(predictor, str(tmp_path / "list.txt"), tmp_path / "out")
  assert counts["done"] == 2


# -- Streaming: the command never holds a whole recording's table --------------

CHUNK_SECONDS = 4.0  # 88,200 samples: a bit more than one 65,920-sample window.
CHUNK = int(CHUNK_SECONDS * audio.SAMPLE_RATE)


@pytest.fixture(scope="module")
def streaming(workdir):
  """A predictor delivering 4-s chunks (1 or 2 windows: batches span them);
  the batch size is `predictor`'s, so the numbers are the same."""
  return inference.Predictor(workdir, batch_size=8, chunk_seconds=CHUNK_SECONDS)


def _expected_rows(table_format, predictor, path, selection, band):
  """The rows of `path`'s whole-file table (`predict_file`), as written."""
  table = predictor.predict_file(path)
  rows = inference.detections(table, predictor.labels, selection,
                            os.path.abspath(path))
  return table, [table_format.cells(i, d, band, False)
                 for i, d in enumerate(rows, start=1)]


def _written_rows(path):
  with open(path, newline="", encoding="utf-8") as f:
    delimiter = "\t" if path.endswith(".txt") else ","
    return [row for row in csv.reader(f, delimiter=delimiter)][1:]


def test_streamed_outputs_equal_the_table_of_predict_file(
    predictor, streaming, recordings, tmp_path):
  out = tmp_path / "out"
  selection = inference.Selection(min_confidence=0.0, top_k=3)
  counts = _run(streaming, recordings, out, embeddings="npz",
                selection=selection)
  assert (counts["done"], counts["failed"]) == (2, 2)
  fe = predictor.windows.frontend
  band = tables.Band(fe.lower_edge_hz, fe.upper_edge_hz)
  for name in ("birds", os.path.join("sub", "cy")):
    path = os.path.join(recordings, name + (".wav" if name == "birds"
                                            else ".mp3"))
    for fmt in ("raven", "csv"):
      table_format = tables.FORMATS.get(fmt)
      table, want = _expected_rows(table_format, predictor, path, selection,
                                   band)
      got = _written_rows(str(out / (name + table_format.suffix)))
      assert got == want and len(got) == 3 * len(table.start_s)
    arrays = tables.read_embeddings(str(out / (name + ".embeddings.npz")))
    np.testing.assert_array_equal(arrays["start_s"], table.start_s)
    np.testing.assert_array_equal(arrays["end_s"], table.end_s)
    np.testing.assert_array_equal(arrays["logits"], table.logits)
    np.testing.assert_array_equal(arrays["embeddings"], table.embeddings)
  assert not [f for f in os.listdir(out) if "partial" in f]


def _recording_of_length(folder, num_samples, name="birds"):
  """The real bird recording at 22,050 Hz cut to `num_samples`."""
  waveform = audio.read_audio_file(model_workdir.bird_wav())
  assert len(waveform) >= num_samples
  path = os.path.join(folder, f"{name}_{num_samples}.wav")
  soundfile.write(path, waveform[:num_samples], audio.SAMPLE_RATE,
                  subtype="PCM_16")
  return path


@pytest.mark.parametrize("num_samples", [
    WINDOWS.window_samples - 1, CHUNK - 1, CHUNK, CHUNK + 1,
    CHUNK + WINDOWS.window_samples, 2 * CHUNK + 1])
def test_chunk_boundaries_give_the_rows_of_the_whole_file(
    predictor, streaming, tmp_path, num_samples):
  path = _recording_of_length(str(tmp_path), num_samples)
  events = list(streaming.stream([(path, math.nan, math.nan)]))
  kinds = [e.kind for e in events]
  assert kinds[0] == inference.BEGIN and kinds[-1] == inference.END
  pieces = [e.table for e in events if e.kind == inference.WINDOWS]
  assert len(pieces) >= (2 if num_samples > CHUNK else 1)
  assert sum(len(p.start_s) for p in pieces) == len(
      windows_lib.Layout.of(num_samples, streaming.windows).first_sample)
  assert [p.first_window for p in pieces] == list(np.cumsum(
      [0] + [len(p.start_s) for p in pieces[:-1]]))
  selection = inference.Selection(min_confidence=0.0, top_k=2)
  _run(streaming, path, tmp_path / "out", selection=selection)
  table_format = tables.FORMATS.get("csv")
  fe = predictor.windows.frontend
  table, want = _expected_rows(
      table_format, predictor, path, selection,
      tables.Band(fe.lower_edge_hz, fe.upper_edge_hz))
  assert len(want) == 2 * len(table.start_s)
  stem = os.path.splitext(os.path.basename(path))[0]
  assert _written_rows(str(tmp_path / "out" / (
      stem + table_format.suffix))) == want


class _Killed(BaseException):
  """Stands for a kill in-process: nothing after it runs."""


KILL_OPTIONS = {"embeddings": "npz",
                "selection": inference.Selection(min_confidence=0.0, top_k=1)}


def _short_and_long(folder):
  """A short recording (done first) and one of three chunks."""
  os.makedirs(folder)
  return (_recording_of_length(str(folder), 30_000, "a"),
          _recording_of_length(str(folder), 2 * CHUNK + 1, "b"))


def _check_killed_then_resumed(streaming, folder, out, clean, short, long):
  """Nothing of `long` looks complete in `out`; a resumed run skips `short`
  and its outputs equal a clean run's."""
  long_stem = str(out / os.path.splitext(os.path.basename(long))[0])
  outputs = [long_stem + suffix for suffix in (
      ".BirdNET.selection.table.txt", ".BirdNET.results.csv",
      ".embeddings.npz")]
  assert not any(os.path.exists(p) for p in outputs)
  assert os.path.exists(outputs[1] + ".partial")  # It was being written.
  assert not (out / tables.COMBINED_CSV).exists()
  counts = _run(streaming, str(folder), out, **KILL_OPTIONS)
  assert (counts["done"], counts["skipped"]) == (1, 1)
  _run(streaming, str(folder), clean, **KILL_OPTIONS)
  for path in outputs + [str(out / tables.COMBINED_CSV)]:
    with open(path, "rb") as f, open(path.replace(str(out), str(clean)),
                                     "rb") as g:
      assert f.read() == g.read(), path
  assert os.path.basename(short) in (out / tables.COMBINED_CSV).read_text()
  assert not [f for f in os.listdir(out) if "partial" in f]


def test_a_kill_mid_recording_leaves_no_file_that_looks_complete(
    workdir, streaming, tmp_path, monkeypatch):
  short, long = _short_and_long(tmp_path / "in")
  killed = inference.Predictor(workdir, batch_size=8,
                             chunk_seconds=CHUNK_SECONDS)
  stream = killed.stream

  def killed_mid_recording(files):
    for event in stream(files):
      yield event
      if event.kind == inference.WINDOWS and event.path == long:
        raise _Killed  # After the first chunk's rows were written.

  monkeypatch.setattr(killed, "stream", killed_mid_recording)
  out = tmp_path / "out"
  with pytest.raises(_Killed):
    _run(killed, str(tmp_path / "in"), out, **KILL_OPTIONS)
  stem = os.path.splitext(os.path.basename(long))[0]
  # Its rows were going to disk (here the file was closed, unlike a kill).
  assert len(_written_rows(str(out / f"{stem}.BirdNET.results.csv.partial"))
             ) > 0
  _check_killed_then_resumed(streaming, tmp_path / "in", out,
                             tmp_path / "clean", short, long)


@pytest.mark.slow  # An interpreter start with TF and JAX: ~15 s.
def test_a_sigkill_mid_recording_leaves_no_file_that_looks_complete(
    workdir, streaming, tmp_path):
  short, long = _short_and_long(tmp_path / "in")
  out = tmp_path / "out"
  code = f"""
import os, signal
from inatsounds_jax import inference
from inatsounds_jax import predict
killed = inference.Predictor({workdir!r}, batch_size=8,
                           chunk_seconds={CHUNK_SECONDS})
stream = killed.stream

def killed_mid_recording(files):
  for event in stream(files):
    yield event
    if event.kind == inference.WINDOWS and event.path == {long!r}:
      os.kill(os.getpid(), signal.SIGKILL)

killed.stream = killed_mid_recording
predict.run(killed, {str(tmp_path / "in")!r}, {str(out)!r},
            predict.RunOptions(embeddings="npz",
                               selection=inference.Selection(0.0, top_k=1)))
"""
  result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, check=False, timeout=300)
  assert result.returncode == -9, result.stderr[-2000:]
  _check_killed_then_resumed(streaming, tmp_path / "in", out,
                             tmp_path / "clean", short, long)


@pytest.mark.parametrize("name", ["npz", "parquet"])
def test_embedding_files_written_chunk_by_chunk_read_back_whole(tmp_path,
                                                                name):
  rng = np.random.default_rng(0)
  chunks = [{"start_s": rng.random(n), "logits": rng.random(
      (n, 7)).astype(np.float32)} for n in (3, 1, 5)]
  path = str(tmp_path / ("x" + tables.EMBEDDING_FORMATS.get(name).suffix))
  writer = tables.EMBEDDING_FORMATS.get(name).open(path)
  for chunk in chunks:
    writer.add(chunk)
  assert not os.path.exists(path)
  writer.commit()
  arrays = tables.read_embeddings(path)
  for key in ("start_s", "logits"):
    np.testing.assert_array_equal(
        arrays[key], np.concatenate([c[key] for c in chunks]))
  assert arrays["logits"].dtype == np.float32
  discarded = tables.EMBEDDING_FORMATS.get(name).open(path + ".2")
  discarded.add(chunks[0])
  discarded.discard()
  assert sorted(os.listdir(tmp_path)) == [os.path.basename(path)]


@pytest.mark.slow  # Two interpreter starts with TF and JAX: ~15 s.
def test_command_line(workdir, recordings, tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "inatsounds_jax.predict", f"--model={workdir}",
       f"--input={recordings}", f"--output={tmp_path / 'out'}",
       "--format=raven", "--embeddings=parquet", "--min_confidence=0.2"],
      capture_output=True, text=True, check=False, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert re.search(r"2 recordings predicted \(\d+ detections\), 0 already "
                   r"done \(0 detections\), 2 failed", result.stdout)
  assert "empty.flac: empty file" in result.stderr
  assert (tmp_path / "out" / "sub" / "cy.embeddings.parquet").exists()
  assert not (tmp_path / "out" / "birds.BirdNET.results.csv").exists()
  result = subprocess.run(
      [sys.executable, "-m", "inatsounds_jax.predict",
       f"--model={tmp_path}", f"--input={recordings}",
       f"--output={tmp_path / 'out2'}"],
      capture_output=True, text=True, check=False, timeout=300)
  assert result.returncode == 1
  assert "is not a training workdir" in result.stderr


@pytest.mark.slow  # Builds the tiny synthetic set and trains: about a minute.
def test_a_trained_model_predicts_real_recordings_and_its_bundle_agrees(
    tmp_path, recordings, data_dir):
  from inatsounds_jax import config_defaults  # pylint: disable=import-outside-toplevel
  from inatsounds_jax import export  # pylint: disable=import-outside-toplevel
  from inatsounds_jax import train  # pylint: disable=import-outside-toplevel
  config = config_defaults.tiny(config_defaults.classifier())
  config.update(model="placeholder", data_dir=data_dir,
                optimizer="adam", learning_rate=1e-2)
  workdir = str(tmp_path / "workdir")
  train.train_and_evaluate(config, workdir)
  trained = inference.Predictor(workdir)
  assert trained.trained.step > 0
  assert len(trained.labels) == config_defaults.TINY_DATASET["num_species"]
  export.export_bundle(workdir, str(tmp_path / "bundle"))
  counts = _run(inference.Predictor(str(tmp_path / "bundle")), recordings,
                tmp_path / "out", selection=inference.Selection(0.0, top_k=1))
  assert (counts["done"], counts["failed"]) == (2, 2)
  rows = tables.read_table(str(tmp_path / "out" / tables.COMBINED_CSV))
  table = trained.predict_file(os.path.join(recordings, "birds.wav"))
  birds = [r for r in rows if r["File"].endswith("birds.wav")]
  assert len(birds) == len(table.start_s)
  assert [r["Scientific name"] for r in birds] == [
      trained.species[i] for i in table.probabilities.argmax(axis=1)]
