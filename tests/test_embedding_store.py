"""The embedding store: recordings embedded once (by content), resumable,
refused for another model, searched exactly by example."""

import os
import shutil

import numpy as np
import pytest

from inatsounds_jax import embedding_store
from inatsounds_jax import inference
from inatsounds_jax import predict
from inatsounds_jax import trained as trained_lib

import model_workdir


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  return trained_lib.load(model_workdir.make_workdir(
      str(tmp_path_factory.mktemp("model"))))


@pytest.fixture(scope="module")
def recordings(small_corpus, tmp_path_factory):
  """{species folder: its train recordings}: a bird, an insect, a mammal."""
  out = {}
  root = os.path.join(small_corpus, "train")
  for name in np.array(sorted(os.listdir(root)))[[0, 3, 6]]:
    out[name] = [path for path, _ in inference.find_audio(
        os.path.join(root, name))]
  return out


def test_search_by_example_finds_the_examples_species_above_chance(
    model, recordings, tmp_path):
  store = embedding_store.EmbeddingStore.create_or_open(
      str(tmp_path / "store"), model)
  everything = [p for paths in recordings.values() for p in paths]
  assert store.add(everything) == []
  species_of = {p: s for s, paths in recordings.items() for p in paths}
  same, chance = [], []
  for example in everything:
    hits = store.search_by_example(example, k=3)
    assert len(hits) == 3 and hits[0].score >= hits[-1].score
    assert example not in {hit.path for hit in hits}
    same.append(species_of[hits[0].path] == species_of[example])
    chance.append((len(recordings[species_of[example]]) - 1)
                  / (len(everything) - 1))
  assert np.mean(same) > np.mean(chance) + 0.15, (same, chance)


def test_windows_are_the_predictions_and_a_second_add_embeds_nothing(
    model, recordings, tmp_path):
  folder = str(tmp_path / "store")
  paths = next(iter(recordings.values()))
  store = embedding_store.EmbeddingStore.create_or_open(folder, model)
  store.add(paths[:2], flush_every=1)
  assert store.num_shards == 2
  again = embedding_store.EmbeddingStore.create_or_open(folder, model)
  again.add(paths[:3])
  assert again.num_shards == 3  # Only the third recording was embedded.
  read = embedding_store.EmbeddingStore.open(folder)
  digest = embedding_store.content_digest(paths[0])
  embeddings, times = read.windows_of(digest)
  table = inference.Predictor(model).predict_file(paths[0])
  np.testing.assert_allclose(embeddings, table.embeddings, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(times[:, 0], table.start_s)


def test_one_recording_under_two_paths_is_embedded_once(model, recordings,
                                                        tmp_path):
  path = next(iter(recordings.values()))[0]
  copy = tmp_path / "copy.wav"
  shutil.copy(path, copy)
  store = embedding_store.EmbeddingStore.create_or_open(
      str(tmp_path / "store"), model)
  store.add([path, str(copy)])
  assert len(store.recordings) == 1


def test_an_unreadable_recording_is_reported_and_the_rest_stored(
    model, recordings, tmp_path):
  broken = tmp_path / "broken.wav"
  broken.write_bytes(b"RIFF not audio")
  path = next(iter(recordings.values()))[0]
  store = embedding_store.EmbeddingStore.create_or_open(
      str(tmp_path / "store"), model)
  problems = store.add([str(broken), path])
  assert [p for p, _ in problems] == [str(broken)]
  assert [r.path for r in store.recordings.values()] == [path]


def test_a_store_of_another_model_or_hop_is_refused(model, tmp_path):
  folder = str(tmp_path / "store")
  embedding_store.EmbeddingStore.create_or_open(folder, model)
  with pytest.raises(embedding_store.StoreError,
                     match="holds embeddings of another model or hop"):
    embedding_store.EmbeddingStore.create_or_open(folder, model,
                                                  hop_seconds=0.5)
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "notes.txt").write_text("mine")
  with pytest.raises(embedding_store.StoreError,
                     match="is not an embedding store"):
    embedding_store.EmbeddingStore.create_or_open(str(tmp_path / "other"),
                                                  model)


def test_a_prediction_folders_embeddings_fill_the_store_as_add_would(
    model, recordings, tmp_path):
  workdir = model_workdir.make_workdir(str(tmp_path / "model"))
  folder = tmp_path / "recordings"
  folder.mkdir()
  paths = next(iter(recordings.values()))[:2]
  for path in paths:
    shutil.copy(path, folder)
  predicted = tmp_path / "predicted"
  predict.run(inference.Predictor(workdir), str(folder), str(predicted),
              predict.RunOptions(selection=inference.Selection(0.5),
                                 embeddings="npz"))
  taken = embedding_store.EmbeddingStore.create_or_open(
      str(tmp_path / "taken"), model)
  added, problems = taken.add_from_predictions(str(predicted))
  assert (added, problems) == (2, [])
  computed = embedding_store.EmbeddingStore.create_or_open(
      str(tmp_path / "computed"), model)
  computed.add([str(folder / os.path.basename(p)) for p in paths])
  for digest in computed.recordings:
    for mine, theirs in zip(taken.windows_of(digest),
                            computed.windows_of(digest)):
      np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6)
  # Taken again: nothing new.
  assert taken.add_from_predictions(str(predicted)) == (0, [])
  # Another model's predictions are refused.
  other = trained_lib.load(model_workdir.make_workdir(
      str(tmp_path / "other"), seed=3))
  store = embedding_store.EmbeddingStore.create_or_open(
      str(tmp_path / "other_store"), other)
  with pytest.raises(embedding_store.StoreError, match="this store is of"):
    store.add_from_predictions(str(predicted))
