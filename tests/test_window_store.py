"""The window store: the old path's windows at a window's cost, uniform
starts, exact resume, disjoint process shares, damage named by file."""

import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from inatsounds_jax import input_pipeline
from inatsounds_jax import window_store

CONFIG = input_pipeline.WindowConfig()
# Small chunks, so that windows span several of them.
CHUNK = 5_000


@pytest.fixture(scope="module")
def store_dir(small_dataset, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("window_store"))
  window_store.write(small_dataset, "train", out, chunk_samples=CHUNK,
                     num_shards=2)
  return out


@pytest.fixture(scope="module")
def examples(small_dataset):
  return list(tfds.as_numpy(small_dataset.as_dataset(
      split="train", shuffle_files=False)))


def _multi_hot(labels, n):
  hot = np.zeros(n, np.uint8)
  hot[labels] = 1
  return hot


def test_windows_equal_the_old_paths_at_the_same_start_reading_a_window(
    store_dir, examples, small_dataset):
  store = window_store.WindowStore(store_dir, "train")
  transform = window_store.TrainWindow(store, CONFIG)
  num_classes = small_dataset.info.features["label"].num_classes
  assert len(store) == len(examples)
  rng = np.random.default_rng(0)
  window_bytes = CONFIG.window_samples * 2
  for i, example in enumerate(examples):
    audio = example["audio"]
    np.testing.assert_array_equal(store.recording(i), audio)
    starts = [window_store.train_start(len(audio), rng, CONFIG)
              for _ in range(3)]
    for start, left in starts:
      before = store.bytes_read
      window = transform.window(i, start, left)
      # At most one partial chunk on each side of the window.
      assert store.bytes_read - before <= window_bytes + 2 * CHUNK * 2
      old = input_pipeline.cut_windows(audio, [start], left, CONFIG)
      np.testing.assert_array_equal(window, old.numpy()[0])
    element = transform.random_map(i, np.random.default_rng(i))
    start, left = window_store.train_start(
        len(audio), np.random.default_rng(i), CONFIG)
    np.testing.assert_array_equal(
        element["waveform"],
        input_pipeline.cut_windows(audio, [start], left, CONFIG).numpy()[0])
    np.testing.assert_array_equal(
        element["audible_in_window"],
        input_pipeline._audible_in_windows(  # pylint: disable=protected-access
            example, np.array([start - left]), CONFIG, num_classes)[0])
    np.testing.assert_array_equal(
        element["audible"], _multi_hot(example["event_label"], num_classes))
    np.testing.assert_array_equal(
        element["checklist"], _multi_hot(example["checklist"], num_classes))
    for key in ("label", "example_index", "recording_id", "latitude",
                "longitude"):
      np.testing.assert_array_equal(element[key], example[key])
  # Recordings shorter than a window: centred in zeros, the old window.
  short = [i for i, e in enumerate(examples)
           if CONFIG.frontend.num_frames(len(e["audio"]))
           < CONFIG.window_frames]
  assert short
  for i in short:
    old = input_pipeline.random_window(examples[i]["audio"], 5, 0, CONFIG)[0]
    np.testing.assert_array_equal(
        transform.random_map(i, np.random.default_rng(1))["waveform"],
        old.numpy())


def test_train_starts_cover_the_frame_grid_uniformly():
  slack = 9
  num_samples = CONFIG.frontend.num_samples(CONFIG.window_frames + slack)
  draws = 20_000
  # Grain's per-element generators (seed + element index).
  starts = [window_store.train_start(
      num_samples, np.random.Generator(np.random.Philox(key=7 + i)),
      CONFIG)[0] for i in range(draws)]
  counts = np.bincount(starts, minlength=slack + 2)
  assert counts[-1] == 0  # Never past the last full window.
  expected = draws / (slack + 1)
  sigma = np.sqrt(expected * (1 - 1 / (slack + 1)))
  assert np.all(np.abs(counts[:-1] - expected) < 5 * sigma), counts


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_resuming_from_the_iterator_state_gives_the_same_stream(store_dir):
  store = window_store.WindowStore(store_dir, "train")
  loader = window_store.train_loader(store, CONFIG, seed=3, batch_size=5,
                                     process_index=0, process_count=1)
  iterator = iter(loader)
  _take(iterator, 4)
  state = iterator.get_state()
  # Past the end of the first epoch (the split has fewer recordings).
  expected = _take(iterator, 6)
  resumed = iter(window_store.train_loader(
      window_store.WindowStore(store_dir, "train"), CONFIG, seed=3,
      batch_size=5, process_index=0, process_count=1))
  resumed.set_state(state)
  for a, b in zip(expected, _take(resumed, 6)):
    np.testing.assert_array_equal(a["example_index"], b["example_index"])
    np.testing.assert_array_equal(a["waveform"], b["waveform"])
  other_seed = iter(window_store.train_loader(
      store, CONFIG, seed=4, batch_size=5, process_index=0, process_count=1))
  assert not np.array_equal(
      np.concatenate([b["example_index"] for b in _take(other_seed, 4)]),
      np.concatenate([b["example_index"]
                      for b in _take(iter(loader), 4)]))


def test_process_shares_are_disjoint_equal_and_cover_the_split(store_dir):
  store = window_store.WindowStore(store_dir, "train")
  shares = [[int(x["example_index"]) for x in window_store.train_loader(
      store, CONFIG, seed=1, num_epochs=1, process_index=p, process_count=2)]
            for p in range(2)]
  assert len(shares[0]) == len(shares[1]) == len(store) // 2
  assert not set(shares[0]) & set(shares[1])
  assert len(set(shares[0]) | set(shares[1])) == 2 * (len(store) // 2)
  assert set(shares[0]) | set(shares[1]) <= set(store.index["example_index"])


def _damaged_copy(store_dir, tmp_path):
  copy = str(tmp_path / "store")
  shutil.copytree(store_dir, copy)
  return copy


def test_a_damaged_chunk_is_reported_with_its_file(store_dir, tmp_path):
  copy = _damaged_copy(store_dir, tmp_path)
  shard = os.path.join(copy, window_store.shard_name("train", 0, 2))
  with open(shard, "r+b") as f:
    f.seek(os.path.getsize(shard) // 3)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0xFF]))
  store = window_store.WindowStore(copy, "train")
  with pytest.raises(window_store.StoreError, match=f"{shard}: damaged"):
    for i in range(len(store)):
      store.recording(i)


def test_a_truncated_or_missing_store_is_reported_with_its_file(
    store_dir, small_dataset, tmp_path):
  copy = _damaged_copy(store_dir, tmp_path)
  shard = os.path.join(copy, window_store.shard_name("train", 1, 2))
  with open(shard, "r+b") as f:
    f.truncate(os.path.getsize(shard) // 2)
  store = window_store.WindowStore(copy, "train")
  last = len(store) - 1  # In the second shard.
  with pytest.raises(window_store.StoreError, match=f"{shard}: .* records"):
    store.recording(last)
  with pytest.raises(window_store.StoreError, match="validation.window_store"):
    window_store.WindowStore(copy, "validation")
  with pytest.raises(window_store.StoreError, match="already there"):
    window_store.write(small_dataset, "train", copy)
