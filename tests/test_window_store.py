"""The window store: the old path's windows at a window's cost, uniform
starts, exact resume, disjoint process shares, damage named by file."""

import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from inatsounds_jax import data
from inatsounds_jax import input_pipeline
from inatsounds_jax import registry
from inatsounds_jax import window_store
from inatsounds_jax import windows as windows_lib

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


def train_start(num_samples, rng, config):
  """(start frame, left padding) of the store's draw from `rng`."""
  return tuple(int(x) for x in windows_lib.train_layout(
      num_samples, rng.integers, config))


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
    starts = [train_start(len(audio), rng, CONFIG)
              for _ in range(3)]
    for start, left in starts:
      before = store.bytes_read
      window = transform.window(i, start, left)
      # At most one partial chunk on each side of the window.
      assert store.bytes_read - before <= window_bytes + 2 * CHUNK * 2
      old = input_pipeline.cut_windows(audio, [start], left, CONFIG)
      np.testing.assert_array_equal(window, old.numpy()[0])
    element = transform.random_map(i, np.random.default_rng(i))
    start, left = train_start(
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
  starts = [train_start(
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


def test_the_training_stream_is_the_loaders_and_resumes_at_any_element(
    store_dir):
  store = window_store.WindowStore(store_dir, "train")
  stream = window_store.TrainStream(store, CONFIG, seed=3, process_index=1,
                                    process_count=2)
  loader = iter(window_store.train_loader(store, CONFIG, seed=3,
                                          process_index=1, process_count=2))
  for k in range(2 * stream.epoch_size + 1):  # Into a third epoch.
    a, b = next(loader), stream(k)
    assert a["example_index"] == b["example_index"]
    np.testing.assert_array_equal(a["waveform"], b["waveform"])
  # A pure function of the position: asked again, out of order.
  again = stream(1)
  np.testing.assert_array_equal(again["waveform"], stream(1)["waveform"])


@pytest.mark.slow  # Worker processes start in seconds.
def test_worker_processes_give_the_same_windows_as_one_thread(store_dir):
  from inatsounds_jax import data_sources  # pylint: disable=import-outside-toplevel
  store = window_store.WindowStore(store_dir, "train")

  def windows(workers):
    return next(data_sources.store_stream(
        store, CONFIG, 3, 5, 0, 1, workers).batch(70).as_numpy_iterator())

  one, two = windows(0), windows(2)
  for key in one:
    np.testing.assert_array_equal(one[key], two[key], err_msg=key)


def _store_config(store_dir, **fields):
  import ml_collections  # pylint: disable=import-outside-toplevel
  return ml_collections.ConfigDict(
      {"train_split": "train", "train_window_store": store_dir, **fields})


def test_training_reads_a_store_with_the_records_fields_and_exact_resume(
    store_dir, small_dataset):
  from inatsounds_jax import data_sources  # pylint: disable=import-outside-toplevel
  [source] = data_sources.from_config(_store_config(store_dir), small_dataset)
  [records] = data_sources.from_config(_store_config(""), small_dataset)
  assert source.num_examples == records.num_examples

  def batches(sources, start_step, n):
    return list(data_sources.train_dataset(
        sources, 4, CONFIG, seed=5, start_step=start_step, process_index=0,
        process_count=1).take(n).as_numpy_iterator())

  [from_store], [from_records] = batches([source], 0, 1), batches(
      [records], 0, 1)
  assert set(from_store) == set(from_records)
  for key in from_records:
    assert from_store[key].dtype == from_records[key].dtype, key
    assert from_store[key].shape == from_records[key].shape, key
  whole = batches([source], 0, 6)
  for a, b in zip(whole[4:], batches([source], 4, 2)):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("fields, message", [
    ({"train_window_filter": "keep.csv"}, "train_window_filter: a window "
     "store reads one random window per recording"),
    ({"train_epoch_unit": "clip"}, "train_epoch_unit: a window store"),
    ({"train_split": "validation"}, "validation.window_store.json: no "
     "complete window store"),
    ({"train_window_store_workers": -1}, "train_window_store_workers=-1: a "
     "number of processes"),
])
def test_what_a_store_cannot_give_is_refused_by_field(
    store_dir, small_dataset, fields, message):
  from inatsounds_jax import data_sources  # pylint: disable=import-outside-toplevel
  with pytest.raises(window_store.StoreError if "window_store.json" in message
                     else registry.ConfigError, match=message):
    data_sources.from_config(_store_config(store_dir, **fields),
                             small_dataset)


def test_a_store_of_other_records_is_refused_naming_its_manifest(
    store_dir, tmp_path):
  other = data.prepare("synthetic", data_dir=str(tmp_path / "tfds"),
                       num_species=4, num_recordings=16)
  with pytest.raises(window_store.StoreError,
                     match=r"train\.window_store\.json: written from"):
    window_store.WindowStore(store_dir, "train").check_matches(other)


@pytest.mark.slow
def test_a_run_trains_from_a_store_and_resumes_to_the_same_parameters(
    data_dir, tmp_path):
  import jax  # pylint: disable=import-outside-toplevel
  from inatsounds_jax import train  # pylint: disable=import-outside-toplevel
  from test_train import final_params  # pylint: disable=g-bad-import-order,import-outside-toplevel
  from test_train import tiny_config  # pylint: disable=g-bad-import-order,import-outside-toplevel
  builder = data.prepare_from_config(tiny_config(data_dir))
  store = str(tmp_path / "store")
  window_store.write(builder, "train", store)
  c = tiny_config(data_dir, train_window_store=store, num_epochs=2.0,
                  checkpoint_every_steps=1, keep_checkpoints=100)
  straight = str(tmp_path / "straight")
  train.train_and_evaluate(c, straight)
  step, params = final_params(straight)
  assert step >= 4
  # Stopped after step 2, resumed: the same windows, the same parameters.
  resumed = str(tmp_path / "resumed")
  shutil.copytree(straight, resumed)
  for s in range(3, step + 1):
    shutil.rmtree(os.path.join(resumed, "checkpoints", str(s)))
  shutil.rmtree(os.path.join(resumed, "best"), ignore_errors=True)
  train.train_and_evaluate(c, resumed)
  again_step, again = final_params(resumed)
  assert again_step == step
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6),
               params, again)


@pytest.mark.slow
def test_the_command_stores_a_configs_train_split_and_refuses_to_overwrite(
    data_dir, tmp_path):
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = str(tmp_path / "store")

  def run():
    return subprocess.run(
        [sys.executable, "-m", "inatsounds_jax.window_store",
         f"--config={repo}/configs/resnet50.py:tiny",
         f"--config.data_dir={data_dir}", f"--out={out}"],
        cwd=repo, capture_output=True, text=True, timeout=300, check=False)

  first = run()
  assert first.returncode == 0, first.stderr[-2000:]
  assert f"--config.train_window_store={out}" in first.stdout
  assert len(window_store.WindowStore(out, "train")) > 0
  second = run()
  assert second.returncode == 1
  assert second.stderr.strip().splitlines()[-1] == (
      f"error: {out}/train.window_store.json: a store of split 'train' is "
      "already there; delete its files to write it again")
