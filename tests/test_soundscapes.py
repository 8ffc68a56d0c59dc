"""Soundscape evaluation through its Python API (`soundscapes.py`).

A constructed case is checked against scikit-learn and hand-made truth; the
model paths run a freshly initialised placeholder (`model_workdir`) on a
soundscape assembled from the two real recordings, annotated here.
"""

import math
import os
import shutil

import jax
import numpy as np
import pytest
from sklearn import metrics as sk

from inatsounds_jax import annotations
from inatsounds_jax import audio
from inatsounds_jax import compare
from inatsounds_jax import inference
from inatsounds_jax import metrics
from inatsounds_jax import predict
from inatsounds_jax import scored_rows
from inatsounds_jax import soundscapes
from inatsounds_jax import tables
from inatsounds_jax.geo import range_model as range_lib
from inatsounds_jax.geo import sinr

import model_workdir

NO_PRIOR, PRIOR = soundscapes.NO_PRIOR, soundscapes.PRIOR

# The annotated set: (recording, start, end, eBird code). `unkbrd` is in no
# species map: an unknown species.
EVENTS = (("soundscape.wav", 0.5, 2.0, "amerob"),
          ("soundscape.wav", 3.0, 4.5, "amerob"),
          ("soundscape.wav", 6.0, 8.5, "norcar"),
          ("soundscape.wav", 13.0, 15.0, "comyel"),
          ("soundscape.wav", 16.0, 17.5, "comyel"),
          ("soundscape.wav", 20.0, 21.0, "unkbrd"),
          ("soundscape.wav", 25.0, 26.0, "amerob"),
          ("cy.mp3", 0.3, 1.8, "comyel"),
          ("cy.mp3", 2.0, 2.5, "norcar"),
          ("cy.mp3", 3.0, 5.0, "comyel"))
# Codes -> the placeholder model's labels (`model_workdir.labels`).
SPECIES_MAP = {"amerob": "Genus species0", "norcar": "Genus species1",
               "comyel": "Genus species2"}
RAVEN_HEADER = ("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\t"
                "Low Freq (Hz)\tHigh Freq (Hz)\tSpecies\n")


def make_soundscape_set(root) -> dict:
  """An annotated set under `root`: its paths by role.

  audio/: soundscape.wav (30 s at 22,050 Hz: the bird recording at 0 s,
  the yellowthroat at 12 s, silence between), cy.mp3 (the yellowthroat as
  shipped) and quiet.wav (3 s of silence that no annotation names);
  raven/: one Raven table per annotated recording; events.csv: the same
  events as one Powdermill-style CSV; map.csv: codes -> scientific names.
  """
  root = str(root)
  folder = os.path.join(root, "audio")
  os.makedirs(folder)
  rate = audio.SAMPLE_RATE
  bird = audio.read_audio_file(model_workdir.bird_wav())
  yellowthroat = audio.read_audio_file(model_workdir.yellowthroat_mp3())
  wave = np.zeros(30 * rate, np.int16)
  wave[:len(bird)] = bird
  wave[12 * rate:12 * rate + len(yellowthroat)] = yellowthroat
  audio.write_wav(os.path.join(folder, "soundscape.wav"), wave)
  shutil.copy(model_workdir.yellowthroat_mp3(),
              os.path.join(folder, "cy.mp3"))
  audio.write_wav(os.path.join(folder, "quiet.wav"),
                  np.zeros(3 * rate, np.int16))
  raven = os.path.join(root, "raven")
  os.makedirs(raven)
  for recording in ("soundscape.wav", "cy.mp3"):
    rows = [e for e in EVENTS if e[0] == recording]
    stem = os.path.splitext(recording)[0]
    with open(os.path.join(raven, f"{stem}.Table.1.selections.txt"), "w",
              encoding="utf-8") as f:
      f.write(RAVEN_HEADER)
      for i, (_, start, end, code) in enumerate(rows, start=1):
        f.write(f"{i}\tSpectrogram 1\t1\t{start}\t{end}\t500\t8000\t{code}\n")
  paths = {"audio": folder, "raven": raven,
           "csv": os.path.join(root, "events.csv"),
           "map": os.path.join(root, "map.csv")}
  with open(paths["csv"], "w", encoding="utf-8") as f:
    f.write("Filename,Start Time (s),End Time (s),Species eBird Code\n")
    for recording, start, end, code in EVENTS:
      f.write(f"{recording},{start},{end},{code}\n")
  with open(paths["map"], "w", encoding="utf-8") as f:
    f.write("code,scientific_name\n")
    for code, name in SPECIES_MAP.items():
      f.write(f"{code},{name}\n")
  return paths


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return model_workdir.make_workdir(str(tmp_path_factory.mktemp("model")))


@pytest.fixture(scope="module")
def predictor(workdir):
  return inference.Predictor(workdir)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return make_soundscape_set(tmp_path_factory.mktemp("set"))


def _inputs(dataset, output, **fields) -> soundscapes.Inputs:
  return soundscapes.Inputs(audio=dataset["audio"],
                            annotations=dataset["raven"], output=str(output),
                            species_map=dataset["map"], **fields)


def _read_truth(dataset):
  """(annotations, audio files) of the set, read as `run` reads them."""
  files = inference.find_audio(dataset["audio"])
  lengths, _ = soundscapes.durations(files)
  return annotations.read_annotations(dataset["raven"], files, lengths), files


# -- A constructed case against scikit-learn -----------------------------------

LABELS = [{"species": name, "common_name": ""}
          for name in ("A a", "B b", "C c", "D d")]
WINDOW_STARTS = {"a.wav": np.arange(5) * 1.5, "b.wav": np.arange(3) * 1.5}
DURATIONS = {"a.wav": 9.0, "b.wav": 6.0}


def _constructed(probabilities):
  """(scores, annotations, mapping) of two recordings with 3-s windows every
  1.5 s; species D is never annotated, Z is no label."""
  events = [annotations.Event(r, s, e, None, None, name, "t.csv", i + 2)
            for i, (r, s, e, name) in enumerate((
                ("a.wav", 0.5, 1.0, "A a"), ("a.wav", 4.0, 5.0, "B b"),
                ("a.wav", 6.5, 7.0, "Z z"), ("b.wav", 3.5, 4.0, "A a"),
                ("b.wav", 0.0, 1.0, "C c")))]
  truth = annotations.Annotations(tuple(events), ("a.wav", "b.wav"), (), (),
                                  dict(DURATIONS))
  mapping = annotations.map_species(truth, LABELS)
  recordings, row = [], 0
  for name, starts in WINDOW_STARTS.items():
    p = probabilities[row:row + len(starts)]
    row += len(starts)
    recordings.append(soundscapes.RecordingScores(
        name, DURATIONS[name], starts, starts + 3.0,
        {NO_PRIOR: soundscapes.ViewScores.of(p, mapping.present_classes)}))
  scores = soundscapes.Scores(LABELS, mapping.present_classes, (NO_PRIOR,),
                              recordings, [], {"mode": "test"})
  return scores, truth, mapping


# Window truth (columns A, B, C) by the overlap rule, worked by hand: a's
# windows [0,3] [1.5,4.5] [3,6] [4.5,7.5] [6,9], b's [0,3] [1.5,4.5] [3,6].
# B's call (4-5 s) overlaps a's second and fourth windows by 0.5 s, half
# the call.
HAND_TRUTH = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 1, 0], [0, 0, 0],
                       [0, 0, 1], [1, 0, 0], [1, 0, 0]], bool)
# Z (no label) is heard in a's last two windows.
HAND_UNKNOWN = np.array([0, 0, 0, 1, 1, 0, 0, 0], bool)


@pytest.mark.parametrize("min_overlap", [0.0, 0.6])
def test_metrics_agree_with_sklearn_and_hand_truth_on_a_constructed_case(
    min_overlap):
  rng = np.random.default_rng(0)
  probabilities = rng.dirichlet(np.ones(4), size=8)
  scores, truth, mapping = _constructed(probabilities)
  settings = soundscapes.Settings(min_overlap=min_overlap, bootstrap=30,
                                  target_precision=0.6)
  result = soundscapes.evaluate(scores, truth, mapping, settings)
  window, files = result.levels
  expected = HAND_TRUTH.copy()
  if min_overlap == 0.6:  # 0.5 s of a 1-s call is not 0.6 of it.
    expected[[1, 3], 1] = False
  np.testing.assert_array_equal(window.truth, expected)
  np.testing.assert_array_equal(window.unknown, HAND_UNKNOWN)
  s = probabilities[:, :3]
  summary = result.metrics["levels"]["window"][NO_PRIOR]
  ap = [sk.average_precision_score(expected[:, j], s[:, j]) for j in range(3)]
  auroc = [sk.roc_auc_score(expected[:, j], s[:, j]) for j in range(3)]
  assert summary["cmap"] == pytest.approx(np.mean(ap), abs=1e-12)
  assert summary["cmauroc"] == pytest.approx(np.mean(auroc), abs=1e-12)
  # Top-1 over all four labels, on rows with one species and no unknown one.
  single = (expected.sum(axis=1) == 1) & ~HAND_UNKNOWN
  hits = np.argmax(probabilities, axis=1) == np.argmax(expected, axis=1)
  assert summary["top1_rows"] == single.sum()
  assert summary["top1"] == pytest.approx(hits[single].mean())
  # Files: the max over each recording's windows; truth is who is heard.
  pooled = np.stack([s[:5].max(axis=0), s[5:].max(axis=0)])
  np.testing.assert_array_equal(files.truth, [[1, 1, 0], [1, 0, 1]])
  np.testing.assert_allclose(files.views[NO_PRIOR].scores, pooled,
                             rtol=1e-6)
  file_ap = [sk.average_precision_score([[1, 1, 0], [1, 0, 1]][0][j:j + 1]
                                        + [[1, 1, 0], [1, 0, 1]][1][j:j + 1],
                                        pooled[:, j]) for j in range(3)]
  assert result.metrics["levels"]["file"][NO_PRIOR]["cmap"] == (
      pytest.approx(np.mean(file_ap), abs=1e-6))
  # Intervals resample the two recordings, as the metrics module does.
  direct = metrics.bootstrap_over_recordings(
      lambda x, t: metrics.class_mean_ap(x, t).value, [0] * 5 + [1] * 3,
      window.views[NO_PRIOR].scores, expected, num_samples=30, seed=0)
  assert summary["cmap_interval"]["low"] == direct.low
  assert summary["cmap_interval"]["high"] == direct.high
  # Thresholds: the metrics module's operating points on the windows.
  at = metrics.threshold_at_precision(window.views[NO_PRIOR].scores,
                                      expected, 0.6)
  best = metrics.threshold_at_best_f1(window.views[NO_PRIOR].scores,
                                      expected)
  for j, row in enumerate(result.thresholds):
    reached = not math.isnan(at.threshold[j])
    assert row["rule"] == ("precision" if reached else "best_f1")
    assert row["threshold"] == (at if reached else best).threshold[j]
    assert row["positive_windows"] == expected[:, j].sum()
  # D is a label no annotation names: not a column at all.
  assert [r["species"] for r in result.per_species
          if r["status"] == "scored"] == ["A a", "B b", "C c"]
  assert result.metrics["counts"]["labels_not_annotated"] == 1
  assert result.metrics["counts"]["events_of_unknown_species"] == 1


def test_two_models_on_the_same_soundscapes_compare_on_paired_resamples(
    tmp_path):
  rng = np.random.default_rng(5)
  good = rng.dirichlet(np.ones(4), size=8)
  # The second model: the same, but its truth columns are worse.
  worse = good.copy()
  worse[:, :3] = np.roll(good[:, :3], 1, axis=0)
  out = {}
  for name, probabilities in (("good", good), ("worse", worse)):
    result = soundscapes.evaluate(*_constructed(probabilities),
                                  soundscapes.Settings(bootstrap=0))
    paths = soundscapes.write_outputs(result, str(tmp_path / name))
    out[name] = result
    rows = scored_rows.read_rows(paths[soundscapes.ROWS_FILE])
    assert set(rows) == {"window/no_prior", "file/no_prior"}
    # The rows give back metrics.json's numbers, and name recordings.
    for key, r in rows.items():
      level, view = key.split("/")
      m = result.metrics["levels"][level][view]
      assert r.metrics()(r.scores, r.truth) == {
          f"{key}/cmap": pytest.approx(m["cmap"]),
          f"{key}/cmauroc": pytest.approx(m["cmauroc"])}
    assert list(rows["window/no_prior"].recording) == ["a.wav"] * 5 + [
        "b.wav"] * 3
  found = compare.compare_files(
      compare.rows_file(str(tmp_path / "good"), "validation"),
      compare.rows_file(str(tmp_path / "worse"), "validation"),
      ["window/no_prior"], num_samples=50)
  cmap = found["window/no_prior"][0]
  assert cmap.metric == "window/no_prior/cmap"
  assert cmap.a == pytest.approx(
      out["good"].metrics["levels"]["window"][NO_PRIOR]["cmap"])
  assert cmap.difference.estimate == pytest.approx(cmap.a - cmap.b)


def test_segments_pool_the_max_of_the_windows_overlapping_them():
  probabilities = np.random.default_rng(1).dirichlet(np.ones(4), size=8)
  scores, truth, mapping = _constructed(probabilities)
  result = soundscapes.evaluate(
      scores, truth, mapping,
      soundscapes.Settings(segment_seconds=4.0, bootstrap=0))
  level = result.levels[1]
  assert level.name == "segment"
  s = probabilities[:, :3]
  # a: [0,4) meets windows 0-2, [4,8) windows 1-4, [8,9) window 4;
  # b: [0,4) windows 0-2 (of b), [4,6) windows 1-2.
  expected = np.stack([s[0:3].max(0), s[1:5].max(0), s[4], s[5:8].max(0),
                       s[6:8].max(0)])
  np.testing.assert_allclose(level.views[NO_PRIOR].scores, expected,
                             rtol=1e-6)
  np.testing.assert_array_equal(level.recording, [0, 0, 0, 1, 1])
  np.testing.assert_array_equal(
      level.truth, [[1, 0, 0], [0, 1, 0], [0, 0, 0], [1, 0, 1], [0, 0, 0]])


# -- Model scores --------------------------------------------------------------

def test_model_scores_keep_only_the_scored_columns_of_every_chunk(
    predictor, dataset, tmp_path):
  chunked = inference.Predictor(predictor.trained, chunk_seconds=4.0)
  broken = tmp_path / "broken.wav"
  broken.write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunkjunkjunk")
  path = os.path.join(dataset["audio"], "soundscape.wav")
  recordings = [soundscapes.Recording(path, "soundscape.wav"),
                soundscapes.Recording(str(broken), "broken.wav"),
                soundscapes.Recording(path, "again.wav")]
  scores = soundscapes.score_with_predictor(chunked, recordings, [2, 0])
  whole = predictor.predict_file(path)
  assert [r.recording for r in scores.recordings] == ["soundscape.wav",
                                                      "again.wav"]
  assert [(p.file, p.kind) for p in scores.problems] == [
      ("broken.wav", "decoding failed")]
  for r in scores.recordings:
    view = r.views[NO_PRIOR]
    np.testing.assert_allclose(r.start_s, whole.start_s)
    np.testing.assert_allclose(view.scores, whole.probabilities[:, [2, 0]],
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(view.top1,
                                  np.argmax(whole.probabilities, axis=1))
    assert r.duration_s == whole.duration_s


def test_prediction_tables_are_judged_with_a_range_model_as_prior(
    predictor, dataset, tmp_path):
  tables_dir = tmp_path / "tables"
  predict.run(predictor, dataset["audio"], str(tables_dir),
              predict.RunOptions(selection=inference.Selection(0.0)))
  names = [row["species"] for row in predictor.labels]
  sinr_model = sinr.SINR(len(names), width=8, depth=1)
  params = sinr_model.init(jax.random.PRNGKey(0), np.zeros((1, 4)))["params"]
  range_model = range_lib.RangeModel(sinr_model, params, names)
  range_model.save(str(tmp_path / "range"))
  presence = range_model.presence(np.array([40.0]), np.array([-75.0]))[0]
  threshold = float(np.median(presence))  # About half the species drop.
  result = soundscapes.run(
      _inputs(dataset, tmp_path / "out", predictions=str(tables_dir),
              geo_prior=str(tmp_path / "range"), latitude=40.0,
              longitude=-75.0),
      soundscapes.Settings(bootstrap=0, geo_threshold=threshold))
  assert result.scores.views == (NO_PRIOR, PRIOR)
  assert result.metrics["source"]["geo_prior"] is True
  assert set(result.metrics["levels"]["window"]) >= {NO_PRIOR, PRIOR}
  # The tables' label list is in order of appearance, not the model's.
  column = {name: i for i, name in enumerate(names)}
  dropped = (presence < threshold)[[column[row["species"]]
                                    for row in result.scores.labels]]
  assert 0 < dropped.sum() < len(names)
  scored_dropped = dropped[result.scores.scored]
  for r in result.scores.recordings:
    base, prior = r.views[NO_PRIOR], r.views[PRIOR]
    np.testing.assert_array_equal(prior.scores[:, scored_dropped], 0.0)
    np.testing.assert_array_equal(prior.scores[:, ~scored_dropped],
                                  base.scores[:, ~scored_dropped])
    best = prior.top1[prior.top1 >= 0]
    assert not dropped[best].any()  # The best label is one the prior keeps.


class _FakePrior:
  """Presence of the six labels: species 0 and 3 are below 0.1 wherever
  there is a location, species 2 is unknown to the range model."""
  presence = np.array([0.05, 0.5, np.nan, 0.09, 1.0, 1.0])

  def probabilities(self, lat, lon):
    known = np.isfinite(np.asarray(lat, float))[:, None]
    return np.where(known, self.presence, np.nan)


def test_the_prior_view_zeroes_species_outside_their_range(predictor,
                                                           dataset, tmp_path):
  located = inference.Predictor(predictor.trained)
  located.prior = _FakePrior()
  rec = os.path.join(dataset["audio"], "soundscape.wav")
  cy = os.path.join(dataset["audio"], "cy.mp3")
  scores = soundscapes.score_with_predictor(
      located, [soundscapes.Recording(rec, "soundscape.wav", 40.0, -75.0),
                soundscapes.Recording(cy, "cy.mp3")], [0, 1, 2])
  assert scores.views == (NO_PRIOR, PRIOR)
  here, nowhere = scores.recordings
  p = predictor.predict_file(rec).probabilities
  expected = p.copy()
  expected[:, [0, 3]] = 0.0  # Below 0.1; species 2's NaN keeps its score.
  np.testing.assert_allclose(here.views[PRIOR].scores, expected[:, :3],
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(here.views[PRIOR].top1,
                                np.argmax(expected, axis=1))
  # Without a location nothing is dropped.
  np.testing.assert_array_equal(nowhere.views[PRIOR].scores,
                                nowhere.views[NO_PRIOR].scores)
  # Both views are judged; thresholds follow the prior's view.
  truth, _ = _read_truth(dataset)
  mapping = annotations.map_species(
      truth, predictor.labels, annotations.SpeciesMap.read(dataset["map"]))
  result = soundscapes.evaluate(scores, truth, mapping,
                                soundscapes.Settings(bootstrap=0))
  assert set(result.metrics["levels"]["window"]) >= {NO_PRIOR, PRIOR}
  assert {t["view"] for t in result.thresholds} == {PRIOR}
  columns = soundscapes.per_species_columns(result)
  assert {"prior_window_ap", "prior_file_ap"} <= set(columns)
  species0 = next(r for r in result.per_species
                  if r["species"] == "Genus species0")
  window = result.levels[0]
  ap = metrics.per_class_ap_and_best_f1(window.views[PRIOR].scores,
                                        window.truth)[0]
  assert species0["prior_window_ap"] == ap[0]


# -- Prediction tables ---------------------------------------------------------

def _rounded(scores: soundscapes.Scores) -> soundscapes.Scores:
  """The scores as tables write them (4 decimals)."""
  def r(x):
    return np.vectorize(lambda v: float(f"{v:.4f}"))(x).astype(np.float64)
  return dataclasses_replace(scores, recordings=[
      soundscapes.RecordingScores(
          rec.recording, rec.duration_s, rec.start_s, rec.end_s,
          {v: soundscapes.ViewScores(r(s.scores), s.top1, r(s.top1_score))
           for v, s in rec.views.items()}) for rec in scores.recordings])


def dataclasses_replace(x, **fields):
  import dataclasses  # pylint: disable=import-outside-toplevel
  return dataclasses.replace(x, **fields)


def _by_species(result) -> dict:
  return {r["species"]: r for r in result.per_species}


def _nan_as_none(x):
  """`x` with NaN as None, so that equal results compare equal."""
  if isinstance(x, dict):
    return {k: _nan_as_none(v) for k, v in x.items()}
  if isinstance(x, float) and math.isnan(x):
    return None
  return x


def test_tables_holding_every_score_judge_as_the_model_does(predictor,
                                                            dataset,
                                                            tmp_path):
  tables_dir = tmp_path / "tables"
  predict.run(predictor, dataset["audio"], str(tables_dir),
              predict.RunOptions(selection=inference.Selection(0.0)))
  settings = soundscapes.Settings(bootstrap=0)
  model = soundscapes.run(_inputs(dataset, tmp_path / "model"), settings,
                          predictor=predictor)
  from_tables = soundscapes.run(
      _inputs(dataset, tmp_path / "tables_out",
              predictions=str(tables_dir)), settings)
  assert from_tables.metrics["source"]["scores_complete"] is True
  assert from_tables.metrics["source"]["windows_without_rows"] == 0
  truth, _ = _read_truth(dataset)
  expected = soundscapes.evaluate(_rounded(model.scores), truth,
                                  model.mapping, settings)
  for name, row in _by_species(expected).items():
    assert _nan_as_none(_by_species(from_tables)[name]) == _nan_as_none(row)
  for level in ("window", "file"):
    assert (_nan_as_none(from_tables.metrics["levels"][level])
            == _nan_as_none(expected.metrics["levels"][level]))
  for ours, theirs in zip(model.scores.recordings,
                          from_tables.scores.recordings):
    assert ours.recording == theirs.recording
    np.testing.assert_allclose(theirs.start_s, ours.start_s, atol=1e-4)
    np.testing.assert_allclose(theirs.end_s, ours.end_s, atol=1e-4)


def test_windows_without_rows_score_zero_on_the_tables_grid(predictor,
                                                            dataset,
                                                            tmp_path):
  # One row per window at most, and none where the best species is below
  # the median: about half the windows have no row.
  path = os.path.join(dataset["audio"], "soundscape.wav")
  whole = predictor.predict_file(path)
  best = whole.probabilities.max(axis=1)
  threshold = float(np.median(best))
  tables_dir = tmp_path / "tables"
  predict.run(predictor, path, str(tables_dir), predict.RunOptions(
      formats=("raven",),
      selection=inference.Selection(threshold, top_k=1)))
  files = [(path, "soundscape.wav")]
  found = tables.read_predictions(str(tables_dir), files,
                                  [whole.duration_s])
  labels = [row["species"] for row in found.labels]
  scores = soundscapes.score_predictions(found, ["soundscape.wav"],
                                         np.arange(len(labels)))
  (rec,) = scores.recordings
  assert 0 < rec.shown.sum() < len(whole.start_s)
  # The tables' grid is the model's: every window, the missing ones too.
  np.testing.assert_allclose(rec.start_s, whole.start_s, atol=2e-4)
  np.testing.assert_allclose(rec.end_s, whole.end_s, atol=2e-4)
  columns = [int(label.rsplit("species", 1)[1]) for label in labels]
  p = whole.probabilities[:, columns]
  kept = (p == best[:, None]) & (best[:, None] >= threshold)
  expected = np.where(kept, np.round(p, 4), 0.0)
  np.testing.assert_allclose(rec.views[NO_PRIOR].scores, expected,
                             atol=6e-5)
  assert any("truncated scores" in note for note in scores.notes)


def test_grid_windows_fill_gaps_between_before_and_after_the_rows():
  # BirdNET-Analyzer: 3-s windows from 0 s, no overlap; rows at 3 and 12 s.
  start, end = soundscapes.grid_windows(np.array([3.0, 12.0]),
                                        np.array([6.0, 15.0]), 20.0, 3.0, 3.0)
  np.testing.assert_allclose(start, [0, 6, 9, 15, 18])
  np.testing.assert_allclose(end, [3, 9, 12, 18, 20])
  # Ours: a first window clipped at 0 s stands for one starting before it.
  start, end = soundscapes.grid_windows(np.array([0.0, 4.0]),
                                        np.array([2.5, 7.0]), 10.0, 3.0, 1.5)
  np.testing.assert_allclose(start, [1.0, 2.5, 5.5, 7.0])
  np.testing.assert_allclose(end, [4.0, 5.5, 8.5, 10.0])
  # A recording without rows: the grid from 0 s to its end.
  start, end = soundscapes.grid_windows(np.zeros(0), np.zeros(0), 7.0, 3.0,
                                        3.0)
  np.testing.assert_allclose(start, [0, 3, 6])
  np.testing.assert_allclose(end, [3, 6, 7])


BIRDNET_RAVEN = ("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\t"
                 "Low Freq (Hz)\tHigh Freq (Hz)\tCommon Name\tSpecies Code\t"
                 "Confidence\tBegin Path\tFile Offset (s)\n")


def _birdnet_raven(path, rows, begin_path):
  with open(path, "w", encoding="utf-8") as f:
    f.write(BIRDNET_RAVEN)
    for i, (start, end, common, code, confidence) in enumerate(rows, 1):
      f.write(f"{i}\tSpectrogram 1\t1\t{start}\t{end}\t0\t15000\t{common}\t"
              f"{code}\t{confidence}\t{begin_path}\t{start}\n")


def test_birdnet_analyzer_tables_by_their_codes(dataset, tmp_path):
  folder = tmp_path / "birdnet"
  folder.mkdir()
  rows = [(0.0, 3.0, "American Robin", "amerob", 0.9),
          (3.0, 6.0, "American Robin", "amerob", 0.4),
          (6.0, 9.0, "Northern Cardinal", "norcar", 0.3),
          (12.0, 15.0, "Common Yellowthroat", "comyel", 0.8),
          (12.0, 15.0, "American Robin", "amerob", 0.2),
          (24.0, 27.0, "American Robin", "amerob", 0.7),
          (27.0, 30.0, "Blue Jay", "blujay", 0.6)]
  _birdnet_raven(folder / "soundscape.BirdNET.selection.table.txt", rows,
                 "/elsewhere/soundscape.wav")
  # BirdNET's table for a recording without detections.
  _birdnet_raven(folder / "cy.BirdNET.selection.table.txt",
                 [(0.0, 3.0, "nocall", "nocall", 1.0)], "/elsewhere/cy.mp3")
  result = soundscapes.run(_inputs(dataset, tmp_path / "out",
                                   predictions=str(folder)),
                           soundscapes.Settings(bootstrap=0))
  source = result.metrics["source"]
  assert (source["window_seconds"], source["hop_seconds"]) == (3.0, 3.0)
  assert source["scores_complete"] is None
  # The map turned codes into the annotations' scientific names; the jay
  # was detected but never annotated.
  assert result.metrics["labels_not_annotated"] == ["blujay"]
  cy, soundscape = result.scores.recordings  # In the audio's order.
  np.testing.assert_allclose(soundscape.start_s, np.arange(10) * 3.0)
  np.testing.assert_allclose(cy.end_s, [3.0, cy.duration_s])
  assert not cy.views[NO_PRIOR].scores.any()
  # amerob's windows scores against the overlap truth, by scikit-learn.
  robin = np.zeros(12)
  robin[[0, 1, 4, 8]] = [0.9, 0.4, 0.2, 0.7]
  heard = np.zeros(12, bool)
  heard[[0, 1, 8]] = True  # 0.5-2, 3-4.5, 25-26 s.
  assert _by_species(result)["Genus species0"]["window_ap"] == (
      pytest.approx(sk.average_precision_score(heard, robin)))
  assert any("'nocall' rows" in note for note in result.metrics["notes"])


def test_bad_tables_and_missing_recordings_are_reported_the_rest_judged(
    dataset, tmp_path):
  folder = tmp_path / "tables"
  folder.mkdir()
  rows = [(0.0, 3.0, "American Robin", "amerob", 0.9),
          (3.0, 6.0, "American Robin", "amerob", "high"),
          (12.0, 15.0, "Common Yellowthroat", "comyel", 0.8)]
  _birdnet_raven(folder / "soundscape.BirdNET.selection.table.txt", rows, "")
  (folder / "cy.BirdNET.selection.table.txt").write_bytes(b"\0\0garbage")
  (folder / "quiet.BirdNET.results.csv").write_text("a,b\n1,2\n")
  events = tmp_path / "events.csv"
  shutil.copy(dataset["csv"], events)
  with open(events, "a", encoding="utf-8") as f:
    f.write("missing.wav,1.0,2.0,amerob\n")
  result = soundscapes.run(soundscapes.Inputs(
      audio=dataset["audio"], annotations=str(events),
      output=str(tmp_path / "out"), species_map=dataset["map"],
      predictions=str(folder)), soundscapes.Settings(bootstrap=0))
  kinds = {(p.file, p.kind) for p in result.problems}
  assert {("cy.BirdNET.selection.table.txt", "damaged table"),
          ("quiet.BirdNET.results.csv", "unknown columns"),
          ("soundscape.BirdNET.selection.table.txt", "bad confidence"),
          ("cy.mp3", "no prediction table"),
          (str(events), "unknown recording")} <= kinds
  assert [r.recording for r in result.scores.recordings] == [
      "soundscape.wav"]
  assert result.metrics["counts"]["evaluated"] == 1
  assert result.metrics["not_evaluated"][0]["recording"] == "cy.mp3"
  written = open(tmp_path / "out" / soundscapes.PROBLEMS_FILE,
                 encoding="utf-8").read()
  assert "missing.wav" in written and "NUL bytes" in written
  # The unknown species is listed, not scored, not dropped.
  unknown = [r for r in result.per_species if r["species"] == "unkbrd"]
  assert unknown and unknown[0]["status"].startswith("not scored")


def test_nothing_to_evaluate_still_writes_the_mapping_and_problems(
    predictor, dataset, tmp_path):
  out = tmp_path / "out"
  with pytest.raises(soundscapes.NothingToEvaluate,
                     match="need --species_map"):
    soundscapes.run(dataclasses_replace(_inputs(dataset, out),
                                        species_map=""),
                    predictor=predictor)
  mapping = open(out / soundscapes.MAPPING_FILE, encoding="utf-8").read()
  assert "amerob\t3\t\t\tunknown" in mapping
  assert (out / soundscapes.PROBLEMS_FILE).exists()
  assert not (out / soundscapes.METRICS_FILE).exists()


def test_a_recording_that_fails_to_decode_is_listed_and_the_rest_judged(
    predictor, dataset, tmp_path):
  folder = shutil.copytree(dataset["audio"], tmp_path / "audio")
  (folder / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunkjunk")
  raven = shutil.copytree(dataset["raven"], tmp_path / "raven")
  shutil.copy(raven / "cy.Table.1.selections.txt",
              raven / "broken.Table.1.selections.txt")
  result = soundscapes.run(dataclasses_replace(
      _inputs(dataset, tmp_path / "out"), audio=str(folder),
      annotations=str(raven)), soundscapes.Settings(bootstrap=0),
      predictor=predictor)
  assert [r.recording for r in result.scores.recordings] == [
      "cy.mp3", "soundscape.wav"]
  (left_out,) = result.metrics["not_evaluated"]
  assert left_out["recording"] == "broken.wav"
  assert "cannot be decoded" in left_out["reason"]
  assert result.metrics["counts"]["annotated"] == 3


def test_locations_reach_the_prior_view(predictor, dataset, tmp_path):
  located = inference.Predictor(predictor.trained)
  located.prior = _FakePrior()
  locations = tmp_path / "locations.csv"
  locations.write_text("file,latitude,longitude\nsoundscape.wav,40,-75\n")
  result = soundscapes.run(
      _inputs(dataset, tmp_path / "out", locations=str(locations)),
      soundscapes.Settings(bootstrap=0), predictor=located)
  cy, here = result.scores.recordings
  assert (here.views[PRIOR].scores[:, 0] == 0).all()  # Species 0: 0.05.
  assert (cy.views[PRIOR].scores[:, 0] > 0).all()  # No location: kept.
  assert (tmp_path / "out" / "precision_recall_prior.png").exists()


# The same detections in BirdNET-Analyzer's other layouts (--rtype csv, r,
# kaleidoscope): (file name, header, row format).
BIRDNET_LAYOUTS = {
    "csv": ("soundscape.BirdNET.results.csv",
            "Start (s),End (s),Scientific name,Common name,Confidence,File",
            "{start},{end},{sci},{common},{confidence},/x/soundscape.wav"),
    "r": ("soundscape.BirdNET.results.r.csv",
          "filepath,start,end,scientific_name,common_name,confidence,lat,"
          "lon,week,overlap,sensitivity,min_conf,species_list,model",
          "/x/soundscape.wav,{start},{end},{sci},{common},{confidence},-1,"
          "-1,-1,0.0,1.0,0.1,,V2.4"),
    # No per-recording table: rows name their recording.
    "combined csv": ("BirdNET_CombinedTable.csv",
                     "Start (s),End (s),Scientific name,Common name,"
                     "Confidence,File",
                     "{start},{end},{sci},{common},{confidence},"
                     "/x/soundscape.wav"),
    "kaleidoscope": ("soundscape.BirdNET.results.kaleidoscope.csv",
                     "INDIR,FOLDER,IN FILE,OFFSET,DURATION,scientific_name,"
                     "common_name,confidence,lat,lon,week,overlap,"
                     "sensitivity",
                     "/x,.,soundscape.wav,{start},3.0,{sci},{common},"
                     "{confidence},-1,-1,-1,0.0,1.0"),
}


@pytest.mark.parametrize("layout", sorted(BIRDNET_LAYOUTS))
def test_birdnet_analyzer_layouts_score_alike(dataset, tmp_path, layout):
  name, header, row = BIRDNET_LAYOUTS[layout]
  detections = [(0.0, 3.0, "Genus species0", "Bird 0", 0.9),
                (3.0, 6.0, "Genus species0", "Bird 0", 0.4),
                (12.0, 15.0, "Genus species2", "Bird 2", 0.8)]
  folder = tmp_path / "tables"
  folder.mkdir()
  (folder / name).write_text("\n".join(
      [header] + [row.format(start=s, end=e, sci=sci, common=common,
                             confidence=c)
                  for s, e, sci, common, c in detections]) + "\n")
  files = inference.find_audio(dataset["audio"])
  found = tables.read_predictions(str(folder), files,
                                  soundscapes.durations(files)[0])
  assert [r["species"] for r in found.labels] == ["Genus species0",
                                                   "Genus species2"]
  scores = soundscapes.score_predictions(found, ["soundscape.wav"], [0, 1])
  (rec,) = scores.recordings
  np.testing.assert_allclose(rec.start_s, np.arange(10) * 3.0)
  expected = np.zeros((10, 2))
  expected[[0, 1, 4], [0, 0, 1]] = [0.9, 0.4, 0.8]
  np.testing.assert_array_equal(rec.views[NO_PRIOR].scores, expected)


def test_an_audio_folder_without_recordings_is_named_by_its_flag(dataset,
                                                                  tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(inference.InputError,
                     match=r"^--audio=.*empty: no audio files"):
    soundscapes.run(dataclasses_replace(
        _inputs(dataset, tmp_path / "out"), audio=str(tmp_path / "empty"),
        predictions=dataset["raven"]))
