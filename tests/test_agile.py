"""Agile modelling (`agile_modelling.py`): search by example, labels CSVs,
probes as bundles, margin sampling; an initialised placeholder base (its
embedding, the time-averaged mel spectrum, separates the corpus's species)."""

import csv
import os

import numpy as np
import pytest

from inatsounds_jax import agile_modelling
from inatsounds_jax import inference
from inatsounds_jax import trained as trained_lib

import model_workdir


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  return model_workdir.make_workdir(str(tmp_path_factory.mktemp("base")))


@pytest.fixture(scope="module")
def corpus(small_corpus):
  """{species name: its train recordings} of three species."""
  root = os.path.join(small_corpus, "train")
  out = {}
  for name in np.array(sorted(os.listdir(root)))[[0, 3, 6]]:
    species = " ".join(name.split("_")[-2:])
    out[species] = [p for p, _ in inference.find_audio(
        os.path.join(root, name))]
  return out


@pytest.fixture(scope="module")
def store(base, corpus, tmp_path_factory):
  folder = tmp_path_factory.mktemp("store") / "store"
  recordings = tmp_path_factory.mktemp("recordings")
  for species, paths in corpus.items():
    for path in paths:
      name = f"{species.replace(' ', '_')}_{os.path.basename(path)}"
      os.symlink(path, recordings / name)
  return agile_modelling.embed(str(folder), base, str(recordings),
                               log=lambda line: None)


def _window(store, path):
  """(start, end) of a recording's second stored window (else its first)."""
  digest = next(r.digest for r in store.recordings.values()
                if r.path == path)
  times = store.windows_of(digest)[1]
  return tuple(float(t) for t in times[min(1, len(times) - 1)])


def _species_of(path):
  return " ".join(os.path.basename(path).split("_")[:2])


def _write(path, rows):
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["recording", "start", "end", "score", "label"])
    writer.writerows(rows)
  return str(path)


def _labels_by_species(store, per_species=2):
  """Label rows from the recordings' names (the corpus's truth): each
  species' first windows, and the first window of the other recordings
  as nothing-here rows would be, left blank."""
  rows, seen = [], {}
  for row in sorted(store.recordings.values(), key=lambda r: r.path):
    species = _species_of(row.path)
    seen[species] = seen.get(species, 0) + 1
    if seen[species] <= per_species:
      start, end = _window(store, row.path)
      rows.append([row.path, start, end, "", species])
  return rows


def test_search_finds_the_examples_own_window_first(store):
  path = sorted(r.path for r in store.recordings.values())[0]
  start, end = _window(store, path)
  rows = agile_modelling.search(store, path, k=5, start_s=start, end_s=end)
  assert (rows[0]["recording"], rows[0]["start"], rows[0]["end"]) == (
      path, start, end)
  assert rows[0]["score"] == pytest.approx(1.0, abs=1e-5)
  assert [r["score"] for r in rows] == sorted(
      (r["score"] for r in rows), reverse=True)
  assert all(r["label"] == "" for r in rows)


def test_bad_label_rows_are_reported_by_file_and_row_and_the_rest_used(
    store, tmp_path):
  paths = sorted(r.path for r in store.recordings.values())
  first, second = paths[0], paths[-1]
  start, end = _window(store, first)
  labels_csv = _write(tmp_path / "labels.csv", [
      [first, start, end, "0.9", "Genus one_Common One"],   # row 2
      [second, *_window(store, second), "", "Negative"],    # row 3
      ["/nowhere/missing.wav", 0.0, 3.0, "", "Genus one"],  # row 4
      [first, 3.0, 3.0, "", "Genus one"],                   # row 5
      [first, start, end, "", ""],                          # row 6
      [first, "soon", end, "", "Genus one"],                # row 7
      [first, 9000.0, 9001.0, "", "Genus one"],             # row 8
  ])
  labels = agile_modelling.read_labels([labels_csv], store)
  reasons = {line.split(": ", 1)[0]: line.split(": ", 1)[1]
             for line in labels.problems}
  assert sorted(reasons) == [f"{labels_csv} row {n}" for n in (4, 5, 6, 7, 8)]
  assert "is not in the store" in reasons[f"{labels_csv} row 4"]
  assert "is not after start" in reasons[f"{labels_csv} row 5"]
  assert "no label" in reasons[f"{labels_csv} row 6"]
  assert "must be seconds" in reasons[f"{labels_csv} row 7"]
  assert "no stored window" in reasons[f"{labels_csv} row 8"]
  assert labels.classes == [{"species": "Genus one",
                             "common_name": "Common One"}]
  assert sorted(labels.windows.values(), key=len) == [set(), {0}]


def test_margin_sampling_picks_windows_nearest_the_boundary_unlabelled():
  probabilities = np.array([[0.9, 0.1],    # margin 0.4
                            [0.55, 0.99],  # 0.05
                            [0.5, 0.0],    # 0.0, labelled
                            [0.2, 0.38],   # 0.12
                            [0.01, 0.97]])  # 0.47
  labelled = np.array([False, False, True, False, False])
  chosen, nearest = agile_modelling.uncertain_windows(probabilities,
                                                      labelled, k=3)
  assert chosen.tolist() == [1, 3, 0]
  assert nearest.tolist() == [0, 1, 0]
  chosen, _ = agile_modelling.uncertain_windows(probabilities, labelled,
                                                k=10)
  assert sorted(chosen.tolist()) == [0, 1, 3, 4]


def test_prototype_bundle_scores_are_the_documented_cosine_mapping(
    base, store, tmp_path):
  labels_csv = _write(tmp_path / "labels.csv", _labels_by_species(store))
  settings = agile_modelling.RoundSettings(probe="prototype",
                                           temperature=7.0)
  report = agile_modelling.train_round(store.folder, base, [labels_csv],
                                       str(tmp_path / "round"), settings,
                                       log=lambda line: None)
  assert report["probe"] == "prototype"
  # By hand: unit centred windows, their class means made unit length.
  labels = agile_modelling.read_labels([labels_csv], store)
  mean = store.mean_embedding()
  x, y = agile_modelling.labelled_windows(store, labels)
  centred = x - mean
  lengths = np.linalg.norm(centred, axis=1)
  prototypes = np.stack([
      (centred[y[:, k] > 0] / lengths[y[:, k] > 0, None]).mean(axis=0)
      for k in range(y.shape[1])])
  prototypes /= np.linalg.norm(prototypes, axis=1, keepdims=True)
  path = sorted(r.path for r in store.recordings.values())[-1]
  digest = next(r.digest for r in store.recordings.values()
                if r.path == path)
  windows = store.windows_of(digest)[0]
  table = inference.Predictor(str(tmp_path / "round" / "model")
                              ).predict_file(path)
  # The bundle: every window's centred length taken as the labelled
  # windows' mean; exact where a window has that length.
  expected = 1 / (1 + np.exp(-7.0 * (windows - mean) @ prototypes.T
                             / lengths.mean()))
  np.testing.assert_allclose(table.probabilities, expected, atol=2e-4)
  cosine = ((windows - mean) @ prototypes.T
            / np.linalg.norm(windows - mean, axis=1, keepdims=True))
  assert (table.probabilities.argsort(axis=1)
          == cosine.argsort(axis=1)).all()
  fitted = agile_modelling.Prototypes.fit(x, y, mean)
  np.testing.assert_allclose(fitted.cosine(windows), cosine, atol=1e-5)


def test_a_rounds_bundle_predicts_and_next_csv_leaves_labelled_windows_out(
    base, store, tmp_path):
  labels_csv = _write(tmp_path / "labels.csv", _labels_by_species(store))
  round_1 = tmp_path / "round_1"
  settings = agile_modelling.RoundSettings(next_windows=5, steps=100)
  agile_modelling.train_round(store.folder, base, [labels_csv],
                              str(round_1), settings, log=lambda line: None)
  predictor = inference.Predictor(str(round_1 / "model"))
  assert predictor.activation == "sigmoid"
  assert [r["species"] for r in predictor.labels] == sorted(
      {_species_of(r.path) for r in store.recordings.values()})
  path = sorted(r.path for r in store.recordings.values())[0]
  assert predictor.predict_file(path).probabilities.shape[1] == 3

  def windows(name):
    with open(round_1 / name) as f:
      return [(r["recording"], float(r["start"])) for r in csv.DictReader(f)]

  upcoming = windows("next.csv")
  assert len(upcoming) == 5
  assert not set(upcoming) & set(windows("labels.csv"))
  with pytest.raises(agile_modelling.AgileError, match="holds"):
    agile_modelling.train_round(store.folder, base, [labels_csv],
                                str(round_1), settings)
  # Round 2: the user labels next.csv (here: from the recordings' names).
  with open(round_1 / "next.csv") as f:
    rows = list(csv.DictReader(f))
  for row in rows:
    row["label"] = _species_of(row["recording"])
  with open(round_1 / "next.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, rows[0].keys())
    writer.writeheader()
    writer.writerows(rows)
  report = agile_modelling.train_round(
      store.folder, base, [str(round_1 / "labels.csv"),
                           str(round_1 / "next.csv")],
      str(tmp_path / "round_2"), settings, log=lambda line: None)
  assert sum(c["windows"] for c in report["classes"]) == len(
      windows("labels.csv")) + 5
  second = windows(os.path.join("..", "round_2", "next.csv"))
  assert not set(second) & set(upcoming)
  model = trained_lib.load(str(tmp_path / "round_2" / "model"))
  assert len(model.labels) == 3
