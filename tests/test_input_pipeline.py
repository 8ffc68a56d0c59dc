import collections
import math

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from inatsounds_jax import data
from inatsounds_jax import data_sources
from inatsounds_jax import input_pipeline as ip
from inatsounds_jax import label_modes
from inatsounds_jax import windows as windows_lib
from inatsounds_jax.geo import prior as prior_lib

CONFIG = ip.WindowConfig()
W = CONFIG.window_samples  # 65,920 samples = 512 frames.


def paper_window_count(frames):
  if frames <= 512:
    return 1
  return math.ceil((frames - 512) / 256) + 1


@pytest.mark.parametrize("samples", [
    100, 511, 512, 65919, W, W + 1, W + 127, W + 128, W + 256 * 128,
    W + 256 * 128 + 128, 10 * 22050, 60 * 22050])
def test_eval_layout_counts_and_centring(samples):
  starts, left = ip.eval_layout(samples, CONFIG)
  frames = max(0, (samples - 512) // 128 + 1)
  n = paper_window_count(frames)
  assert len(starts) == n
  np.testing.assert_array_equal(starts, np.arange(n) * 256)
  total_pad = (n - 1) * 256 + 512 - frames
  assert int(left) == total_pad // 2
  windows = ip.cut_windows(tf.ones([samples], tf.int16), starts, left, CONFIG)
  assert windows.shape == (n, W)


def test_cut_windows_land_on_the_frame_grid():
  x = tf.range(W + 1000, dtype=tf.int32)
  windows = ip.cut_windows(x, tf.constant([0, 3]), tf.constant(2), CONFIG)
  np.testing.assert_array_equal(windows[0, :256], 0)  # 2 frames of padding.
  np.testing.assert_array_equal(windows[0, 256:300], np.arange(44))
  np.testing.assert_array_equal(windows[1, :10], np.arange(128, 138))


@pytest.mark.parametrize("num_samples, start, left", [
    (W + 5_000, 10, 0), (W + 5_000, 0, 3), (1_000, 0, 200), (W, 1, 0)])
def test_numpy_windows_equal_tensorflows_for_one_window_and_several(
    num_samples, start, left):
  """Numpy cuts a single window by a slice (the store's training windows)
  and several by strides; both are the TensorFlow graph's windows."""
  x = np.random.default_rng(num_samples).integers(
      -3000, 3000, num_samples).astype(np.int16)
  for starts in ([start], [start, start + 2]):
    expected = ip.cut_windows(tf.constant(x), tf.constant(starts),
                              tf.constant(left), CONFIG).numpy()
    got = windows_lib.cut_windows(x, np.array(starts), left, CONFIG)
    np.testing.assert_array_equal(got, expected)


def test_train_layout_short_file_is_centred():
  frames = 100
  samples = (frames - 1) * 128 + 512
  start, left = ip.train_layout(samples, tf.constant([0, 0], tf.int64), CONFIG)
  assert int(start[0]) == 0 and int(left) == (512 - frames) // 2


def train_dataset(builder, global_batch_size, **kwargs):
  """A run's training batches from `builder`'s train split."""
  source = data_sources.tfds_source("train_split", {"split": "train"}, 1.0,
                                    builder)
  return data_sources.train_dataset([source], global_batch_size, CONFIG,
                                    **kwargs)


def _all(ds):
  return list(tfds.as_numpy(ds))


# Prediction's windows: the eval layout at a 1.5-s hop, cut chunk by chunk.
PREDICT = ip.WindowConfig(window_frames=512, eval_stride_frames=258)
HOP = PREDICT.frontend.hop_length
PW = PREDICT.window_samples


@pytest.mark.parametrize("num_samples, expected", [
    (1, 1), (511, 1), (PW, 1),
    (PW + HOP, 2),  # One frame more: a second window.
    (PW + 258 * HOP, 2),
    (PW + 258 * HOP + HOP, 3),
    (22_050 * 60, 40),  # 10,332 frames: ceil((10,332 - 512) / 258) + 1.
])
def test_window_counts_and_times_at_edge_lengths(num_samples, expected):
  layout = windows_lib.Layout.of(num_samples, PREDICT)
  assert len(layout.first_sample) == expected
  start, end = layout.times()
  duration = num_samples / 22_050
  assert start[0] == 0 and np.all(end <= duration + 1e-12)
  assert np.all(end > start)
  assert np.all(np.diff(start[1:]) == pytest.approx(258 * HOP / 22_050))
  if num_samples >= PW:
    assert np.all(end - start <= PW / 22_050 + 1e-12)


@pytest.mark.parametrize("num_samples", [300, 65_408, 65_409, 200_001])
@pytest.mark.parametrize("chunk", [1, 5_000, 10**9])
def test_chunked_windows_equal_cutting_the_whole_file(num_samples, chunk):
  """Prediction's numpy windows, chunk by chunk, are the input pipeline's
  (TF) windows of the whole file: one cutting function on both."""
  rng = np.random.default_rng(num_samples)
  waveform = rng.integers(-3000, 3000, num_samples).astype(np.int16)
  starts, left = ip.eval_layout(num_samples, PREDICT)
  whole = ip.cut_windows(waveform, starts, left, PREDICT).numpy()
  cuts = np.cumsum(rng.integers(1, 7000, num_samples // 1000 + 2))
  blocks = np.split(waveform, cuts[cuts < num_samples])
  chunked = np.concatenate(list(windows_lib.chunked_windows(
      blocks, windows_lib.Layout.of(num_samples, PREDICT), chunk)))
  np.testing.assert_array_equal(chunked, whole)


def test_a_header_length_that_is_wrong_is_caught():
  layout = windows_lib.Layout.of(10_000, PREDICT)
  with pytest.raises(windows_lib.LengthChanged):
    list(windows_lib.chunked_windows([np.zeros(9_000, np.int16)], layout,
                                     10**9))


def test_eval_covers_every_window_exactly_once(small_dataset):
  batches = _all(ip.eval_dataset(small_dataset, "validation", 8, CONFIG,
                                 process_index=0, process_count=1))
  assert all(b["waveform"].shape == (8, W) for b in batches)
  masks = np.concatenate([b["mask"] for b in batches])
  assert masks[:masks.sum()].all() and not masks[masks.sum():].any()
  assert len(masks) - masks.sum() < 8  # Only the last batch is padded.
  ids = np.concatenate([b["recording_id"] for b in batches])[masks]
  seen = collections.Counter(ids.tolist())
  waves = np.concatenate([b["waveform"] for b in batches])[masks]
  expected = {}
  for ex in tfds.as_numpy(small_dataset.as_dataset(split="validation")):
    frames = max(0, (len(ex["audio"]) - 512) // 128 + 1)
    expected[int(ex["recording_id"])] = (paper_window_count(frames),
                                         ex["audio"])
  assert seen == {k: v[0] for k, v in expected.items()}
  # Window contents: the centred, zero-padded file, stride 256 frames.
  rid = max(expected, key=lambda k: expected[k][0])
  audio = expected[rid][1]
  frames = (len(audio) - 512) // 128 + 1
  n = expected[rid][0]
  left = ((n - 1) * 256 + 512 - frames) // 2 * 128
  padded = np.concatenate([np.zeros(left, np.int16), audio,
                           np.zeros(n * 256 * 128 + W, np.int16)])
  mine = waves[ids == rid]
  for k in range(n):
    np.testing.assert_array_equal(mine[k], padded[k * 32768:k * 32768 + W])


def test_eval_process_shards_are_disjoint_and_complete(small_dataset):
  ids = []
  for index in range(3):
    batches = _all(ip.eval_dataset(small_dataset, "test", 4, CONFIG,
                                   process_index=index, process_count=3))
    ids.append({int(r) for b in batches for r, m in
                zip(b["recording_id"], b["mask"]) if m})
  assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
  assert len(set().union(*ids)) == small_dataset.info.splits[
      "test"].num_examples


def test_train_batches_deterministic_and_on_grid(small_dataset):
  def take(seed, n=3):
    ds = train_dataset(small_dataset, 4, seed=seed,
                          shuffle_buffer=16, process_index=0, process_count=1)
    return _all(ds.take(n))
  a, b, c = take(0), take(0), take(1)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["waveform"], y["waveform"])
    np.testing.assert_array_equal(x["label"], y["label"])
  assert not all(np.array_equal(x["waveform"], y["waveform"])
                 for x, y in zip(a, c))
  assert a[0]["waveform"].shape == (4, W) and a[0]["waveform"].dtype == np.int16
  files = {int(ex["recording_id"]): ex["audio"] for ex in
           tfds.as_numpy(small_dataset.as_dataset(split="train"))}
  for batch in a:
    for rid, window in zip(batch["recording_id"], batch["waveform"]):
      audio = files[int(rid)]
      if len(audio) >= W:
        starts = [s for s in range(0, len(audio) - W + 1, 128)
                  if np.array_equal(audio[s:s + W], window)]
        assert starts, "window is not on the hop grid of the file"
      else:  # Zero-padded, centred in whole frames.
        frames = max(0, (len(audio) - 512) // 128 + 1)
        left = (512 - frames) // 2 * 128
        want = np.zeros(W, np.int16)
        want[left:left + len(audio)] = audio[:W - left]
        np.testing.assert_array_equal(window, want)


def test_train_windows_know_the_species_calling_in_them(small_dataset):
  # The `full` label mode's targets: strong-label events overlapping the
  # window, not every species of the recording.
  examples = {int(ex["recording_id"]): ex for ex in
              tfds.as_numpy(small_dataset.as_dataset(split="train"))}
  rate = CONFIG.frontend.sample_rate
  narrower = 0
  for batch in _all(train_dataset(small_dataset, 4, seed=2).take(6)):
    for rid, window, hot, everywhere in zip(
        batch["recording_id"], batch["waveform"], batch["audible_in_window"],
        batch["audible"]):
      ex = examples[int(rid)]
      if len(ex["audio"]) < W:  # Centred in zeros: the whole recording.
        begin, end = 0.0, len(ex["audio"]) / rate
      else:
        [start] = [s for s in range(0, len(ex["audio"]) - W + 1, 128)
                   if np.array_equal(ex["audio"][s:s + W], window)][:1]
        begin, end = start / rate, (start + W) / rate
      calling = {int(c) for c, s, e in zip(
          ex["event_label"], ex["event_start"], ex["event_end"])
                 if s < end and e > begin}
      assert set(np.flatnonzero(hot).tolist()) == calling
      assert (hot <= everywhere).all()
      narrower += int((hot < everywhere).any())
  assert narrower  # Some windows miss a species calling elsewhere.


def test_a_training_batch_gives_the_full_mode_its_window_truth(
    small_dataset):
  # The field the pipeline writes is the one the label mode reads.
  c = ml_collections.ConfigDict({"label_mode": "full", "geo_prior": ""})
  names = small_dataset.info.features["label"].names
  observe = label_modes.from_config(c, small_dataset, names,
                                    prior_lib.Priors(names))
  batch = next(iter(tfds.as_numpy(train_dataset(small_dataset, 8, seed=1))))
  out = observe(batch)
  np.testing.assert_array_equal(out["targets"], batch["audible_in_window"])
  assert out["targets"].shape == (8, len(names))
  assert out["targets"].any() and (out["label_mask"] == 1).all()


def test_train_shards_per_process(small_dataset):
  ids = []
  for index in range(2):
    ds = train_dataset(small_dataset, 4, seed=0,
                          process_index=index, process_count=2)
    batch = next(iter(tfds.as_numpy(ds)))
    assert batch["waveform"].shape == (2, W)
    n = small_dataset.info.splits["train"].num_examples // 2
    ids.append({int(r) for b in tfds.as_numpy(ds.take(n)) for r in
                b["recording_id"]})
  assert not ids[0] & ids[1]
  with pytest.raises(ValueError, match="not divisible"):
    train_dataset(small_dataset, 5, process_count=2,
                     process_index=0)


def test_batches_are_laid_out_over_the_device_mesh(small_dataset):
  import jax  # pylint: disable=import-outside-toplevel
  from jax.sharding import Mesh, NamedSharding, PartitionSpec  # pylint: disable=import-outside-toplevel
  assert jax.device_count() == 8  # conftest asks for 8 fake CPU devices.
  mesh = Mesh(np.array(jax.devices()), ("data",))
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  ds = ip.eval_dataset(small_dataset, "test", 16, CONFIG)
  local = next(iter(tfds.as_numpy(ds)))
  batch = ip.shard_batch(local, sharding)
  wave = batch["waveform"]
  assert wave.shape == (16, W) and wave.sharding == sharding
  assert len(wave.addressable_shards) == 8
  for shard in wave.addressable_shards:
    assert shard.data.shape == (2, W)
    np.testing.assert_array_equal(shard.data, local["waveform"][shard.index])


def test_train_stream_resumes_exactly_at_a_step(small_dataset):
  def batches(start_step, n):
    ds = train_dataset(small_dataset, 4, seed=5,
                          start_step=start_step, num_epochs=3,
                          shuffle_buffer=8, process_index=0, process_count=1)
    return _all(ds.take(n))
  epoch_steps = small_dataset.info.splits["train"].num_examples // 4
  whole = batches(0, 2 * epoch_steps + 3)
  for start in (1, epoch_steps - 1, epoch_steps + 2):  # Across epochs too.
    resumed = batches(start, 3)
    for a, b in zip(whole[start:start + 3], resumed):
      np.testing.assert_array_equal(a["waveform"], b["waveform"])
      np.testing.assert_array_equal(a["recording_id"], b["recording_id"])
  # Each epoch visits every file once.
  first = np.concatenate([b["recording_id"] for b in whole[:epoch_steps]])
  assert len(set(first.tolist())) == len(first)


def _train_elements(builder, n, **kwargs):
  ds = ip.train_windows(builder, "train", CONFIG, shuffle_buffer=16,
                        process_index=0, process_count=1, **kwargs)
  return _all(ds.take(n))


def _dense_windows(builder):
  """Every dense window (`eval_layout`) of every train file, as
  (recording id, waveform bytes), by numpy's windowing."""
  expected = []
  for ex in tfds.as_numpy(builder.as_dataset(split="train")):
    starts, left = windows_lib.eval_layout(len(ex["audio"]), CONFIG)
    cut = windows_lib.cut_windows(ex["audio"], starts, left, CONFIG)
    expected += [(int(ex["recording_id"]), w.tobytes()) for w in cut]
  return expected


def test_a_clip_epoch_visits_every_dense_window_once_and_resumes_exactly(
    small_dataset):
  expected = _dense_windows(small_dataset)
  clip = ip.TrainEpoch(unit="clip")
  first = _train_elements(small_dataset, len(expected) + 5, seed=3,
                          epoch=clip, num_epochs=2)
  got = [(int(x["recording_id"]), x["waveform"].tobytes())
         for x in first[:len(expected)]]
  assert sorted(got) == sorted(expected)
  # Shuffled across recordings, not file by file.
  assert [r for r, _ in got] != sorted(r for r, _ in got)
  resumed = _train_elements(small_dataset, 10, seed=3, epoch=clip,
                            num_epochs=2, start_example=len(expected) - 5)
  for a, b in zip(first[len(expected) - 5:], resumed):
    np.testing.assert_array_equal(a["waveform"], b["waveform"])
    assert a["recording_id"] == b["recording_id"]


def test_a_fraction_trains_on_the_same_random_files_whatever_the_seed(
    small_dataset):
  size = data.label_sources(small_dataset)["example_index_size"]["train"]
  half = ip.TrainEpoch(fraction=0.5, subset_seed=1)
  kept = set(np.flatnonzero(half.kept_examples(size)).tolist())
  in_split = {int(x["example_index"]) for x in
              tfds.as_numpy(small_dataset.as_dataset(split="train"))}
  expected = kept & in_split
  assert 0 < len(expected) < len(in_split)
  for seed in (0, 7):
    epoch = _train_elements(small_dataset, 2 * len(expected), seed=seed,
                            epoch=half, example_index_size=size,
                            num_epochs=2)
    indices = [int(x["example_index"]) for x in epoch]
    # Each epoch holds every kept file once, and nothing else.
    assert sorted(indices[:len(expected)]) == sorted(expected)
    assert sorted(indices[len(expected):]) == sorted(expected)
  other = ip.TrainEpoch(fraction=0.5, subset_seed=2).kept_examples(size)
  assert set(np.flatnonzero(other).tolist()) != kept


def test_epoch_definitions_that_cannot_apply_are_refused(small_dataset):
  with pytest.raises(ValueError, match="epoch unit 'file'"):
    ip.TrainEpoch(unit="file")
  with pytest.raises(ValueError, match="must be in"):
    ip.TrainEpoch(fraction=0.0)
  with pytest.raises(ValueError, match="example_index size"):
    ip.train_windows(small_dataset, "train", CONFIG,
                     epoch=ip.TrainEpoch(fraction=0.5))


def test_a_clip_epoch_with_a_window_filter_visits_every_kept_window_once(
    small_dataset):
  rows, expected = [], []
  for position, ex in enumerate(
      tfds.as_numpy(small_dataset.as_dataset(split="train"))):
    starts, left = windows_lib.eval_layout(len(ex["audio"]), CONFIG)
    cut = windows_lib.cut_windows(ex["audio"], starts, left, CONFIG)
    for j in range(0, len(starts), 2):  # Every other window kept.
      rows.append((int(ex["example_index"]), position, int(starts[j]), left))
      expected.append((int(ex["recording_id"]), cut[j].tobytes()))
  columns = np.array(rows, np.int64).T
  kept = ip.WindowFilter(*columns, window_frames=CONFIG.window_frames)
  assert kept.num_windows() == len(expected) > kept.num_recordings()
  epoch = _train_elements(small_dataset, len(expected), seed=2,
                          window_filter=kept,
                          epoch=ip.TrainEpoch(unit="clip"))
  assert sorted((int(x["recording_id"]), x["waveform"].tobytes())
                for x in epoch) == sorted(expected)
