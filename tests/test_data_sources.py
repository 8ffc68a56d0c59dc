"""Training sources: folders of unlabelled audio, mixtures, bad configs."""

import os
import shutil

import ml_collections
import numpy as np
import pytest
import soundfile

from inatsounds_jax import audio
from inatsounds_jax import data_sources
from inatsounds_jax import input_pipeline as ip
from inatsounds_jax import registry
from inatsounds_jax import windows as windows_lib
import model_workdir  # pylint: disable=g-bad-import-order

WINDOWS = ip.WindowConfig(window_frames=16)  # 16 x 128 + ... samples.


def constant_folder(path, values, seconds=0.2):
  """A folder of 22,050 Hz mono WAVs, file i holding the constant values[i]
  (passes through decoding bit for bit, so a window names its file)."""
  os.makedirs(path, exist_ok=True)
  n = int(seconds * audio.SAMPLE_RATE)
  for i, v in enumerate(values):
    audio.write_wav(os.path.join(path, f"f{i:02d}.wav"),
                    np.full(n, v, np.int16))
  return str(path)


def sources_of(**configured):
  return data_sources.from_config({"pretrain_sources": configured}, None)


def stream(sources, n, batch=4, start_step=0, seed=0, process_index=0,
           process_count=1):
  ds = data_sources.train_dataset(
      sources, batch * process_count, WINDOWS, seed=seed,
      start_step=start_step, process_index=process_index,
      process_count=process_count)
  return list(ds.take(n).as_numpy_iterator())


def file_of(waveform):
  """The constant of a constant-file window (its non-padding samples)."""
  values = set(waveform[waveform != 0].tolist())
  assert len(values) == 1, values
  return values.pop()


def test_folder_windows_equal_prediction_decoding_of_any_format(tmp_path):
  # Real recordings (32 kHz WAV, 44.1 kHz MP3) and a stereo 16 kHz FLAC in
  # a subfolder: each one alone in a folder, every window is the train
  # crop of `audio.read_audio_file`'s decoding.
  flac = tmp_path / "synthetic" / "deep" / "stereo.flac"
  flac.parent.mkdir(parents=True)
  rng = np.random.default_rng(0)
  soundfile.write(flac, rng.uniform(-0.3, 0.3, (24_000, 2)), 16_000)
  for path in (model_workdir.bird_wav(), model_workdir.yellowthroat_mp3(),
               str(flac)):
    folder = tmp_path / os.path.basename(path)
    if path != str(flac):
      folder.mkdir()
      shutil.copy(path, folder)
    else:
      folder = tmp_path / "synthetic"
    [source] = sources_of(one={"type": "audio_folder", "path": str(folder)})
    assert source.num_examples == 1
    decoded = audio.read_audio_file(path)
    batches = stream([source], 2, batch=3, seed=4)
    for i, window in enumerate(np.concatenate(
        [b["waveform"] for b in batches])):
      expected = ip.random_window(decoded, i, 4, WINDOWS)[0].numpy()
      np.testing.assert_array_equal(window, expected)
    assert (batches[0]["label"] == -1).all()


def test_folder_epochs_visit_every_file_once_and_resume_exactly(tmp_path):
  folder = constant_folder(tmp_path / "f", range(1, 7))
  (tmp_path / "f" / "notes.txt").write_text("not audio")
  [source] = sources_of(f={"type": "audio_folder", "path": folder})
  whole = stream([source], 6, batch=2, seed=1)
  files = [file_of(w) for b in whole for w in b["waveform"]]
  for epoch in range(2):
    assert sorted(files[6 * epoch:6 * epoch + 6]) == list(range(1, 7))
  assert files[:6] != files[6:]  # Each epoch has its own order.
  for start in (1, 4):
    resumed = stream([source], 2, batch=2, seed=1, start_step=start)
    for a, b in zip(whole[start:], resumed):
      np.testing.assert_array_equal(a["waveform"], b["waveform"])


def test_an_undecodable_file_is_replaced_and_resume_stays_exact(tmp_path):
  folder = constant_folder(tmp_path / "f", range(1, 5))
  (tmp_path / "f" / "broken.wav").write_bytes(b"RIFF....WAVEjunk")
  [source] = sources_of(f={"type": "audio_folder", "path": folder})
  assert source.num_examples == 5
  whole = stream([source], 5, batch=2, seed=2)
  files = [file_of(w) for b in whole for w in b["waveform"]]
  assert set(files) == {1, 2, 3, 4}
  resumed = stream([source], 2, batch=2, seed=2, start_step=3)
  for a, b in zip(whole[3:], resumed):
    np.testing.assert_array_equal(a["waveform"], b["waveform"])


def test_processes_read_disjoint_shares_of_a_folder(tmp_path):
  folder = constant_folder(tmp_path / "f", range(1, 9))
  [source] = sources_of(f={"type": "audio_folder", "path": folder})
  seen = []
  for p in range(2):
    batches = stream([source], 2, batch=2, process_index=p, process_count=2)
    seen.append({file_of(w) for b in batches for w in b["waveform"]})
  assert seen[0].isdisjoint(seen[1])
  assert seen[0] | seen[1] == set(range(1, 9))


def test_a_one_to_three_mixture_draws_in_that_ratio(tmp_path):
  counts = data_sources.draw_counts([1.0, 3.0], seed=0, num_draws=40_000)
  assert abs(counts[1] / counts.sum() - 0.75) < 0.01
  a = constant_folder(tmp_path / "a", [100, 101])
  b = constant_folder(tmp_path / "b", [200, 201, 202])
  mixture = sources_of(a={"type": "audio_folder", "path": a, "weight": 1.0},
                       b={"type": "audio_folder", "path": b, "weight": 3.0})
  batches = stream(mixture, 100, batch=8, seed=3)
  ids = np.concatenate([x["source"] for x in batches])
  files = [file_of(w) for x in batches for w in x["waveform"]]
  # Every window comes from the source its id names, in the drawn order.
  assert [f // 100 - 1 for f in files] == ids.tolist()
  drawn = list(data_sources.draws([1.0, 3.0], 3).take(800)
               .as_numpy_iterator())
  assert ids.tolist() == drawn
  assert abs(ids.mean() - 0.75) < 0.05
  resumed = stream(mixture, 3, batch=8, seed=3, start_step=37)
  for x, y in zip(batches[37:], resumed):
    np.testing.assert_array_equal(x["waveform"], y["waveform"])


def test_the_train_split_mixes_with_a_folder_and_alone_is_unchanged(
    small_dataset, tmp_path):
  folder = constant_folder(tmp_path / "f", [7])
  config = {"train_split": "train", "pretrain_sources": {
      "inat": {"type": "tfds", "split": "train", "weight": 1.0},
      "folder": {"type": "audio_folder", "path": folder, "weight": 1.0}}}
  mixture = data_sources.from_config(config, small_dataset)
  assert [s.num_examples for s in mixture] == [
      small_dataset.info.splits["train"].num_examples, 1]
  [batch] = stream(mixture, 1, batch=16)
  from_split = batch["source"] == 0
  assert 0 < from_split.sum() < 16
  assert (batch["label"][from_split] >= 0).all()
  assert (batch["label"][~from_split] == -1).all()
  # Without pretrain_sources: the train split's stream, every field.
  alone = data_sources.from_config(
      ml_collections.ConfigDict({"train_split": "train"}), small_dataset)
  [got] = stream(alone, 1, batch=4, seed=5)
  [want] = list(ip.train_windows(small_dataset, "train", WINDOWS, seed=5,
                                 process_index=0, process_count=1)
                .batch(4).take(1).as_numpy_iterator())
  assert set(got) == set(want)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k])


@pytest.mark.parametrize("configured, message", [
    ({"x": {"type": "audioset", "path": "/tmp"}},
     "unknown training source type 'audioset'"),
    ({"x": {"path": "/tmp"}}, "pretrain_sources.x: needs field 'type'"),
    ({"x": {"type": "audio_folder"}}, "needs field 'path'"),
    ({"x": {"type": "audio_folder", "path": "/no/such/dir"}},
     "pretrain_sources.x.path='/no/such/dir': no such folder"),
    ({"x": {"type": "audio_folder", "path": "EMPTY", "weight": 1.0}},
     "no audio files"),
    ({"x": {"type": "audio_folder", "path": "TEXT_ONLY"}}, "no audio files"),
    ({"x": {"type": "audio_folder", "path": "AUDIO", "weight": 0.0}},
     "pretrain_sources.x.weight=0.0 must be > 0"),
    ({"x": {"type": "audio_folder", "path": "AUDIO", "weight": -2}},
     "weight=-2 must be > 0"),
])
def test_bad_sources_are_refused_by_field(configured, message, tmp_path):
  (tmp_path / "EMPTY").mkdir()
  (tmp_path / "TEXT_ONLY").mkdir()
  (tmp_path / "TEXT_ONLY" / "readme.txt").write_text("x")
  constant_folder(tmp_path / "AUDIO", [1])
  for options in configured.values():
    if options.get("path", "/").isupper():
      options["path"] = str(tmp_path / options["path"])
  with pytest.raises(registry.ConfigError, match=message):
    sources_of(**configured)


def test_a_folder_smaller_than_the_process_count_is_refused(tmp_path):
  [source] = sources_of(f={"type": "audio_folder",
                           "path": constant_folder(tmp_path / "f", [1])})
  with pytest.raises(registry.ConfigError, match="1 recordings cannot be "
                     "shared among 2 processes"):
    stream([source], 1, process_index=1, process_count=2)


def test_the_train_split_epoch_counts_clips_and_the_fraction_kept(
    small_dataset):
  def train_source(**fields):
    [source] = data_sources.from_config(ml_collections.ConfigDict(
        {"train_split": "train", **fields}), small_dataset)
    return source

  recordings = small_dataset.info.splits["train"].num_examples
  assert train_source().num_examples == recordings
  windows = data_sources.model_windows(ml_collections.ConfigDict())
  clips = sum(
      len(windows_lib.eval_layout(len(x["audio"]), windows)[0])
      for x in small_dataset.as_dataset(split="train").as_numpy_iterator())
  assert clips > recordings
  assert train_source(train_epoch_unit="clip").num_examples == clips
  half = train_source(train_fraction=0.5, train_fraction_seed=3)
  assert 0 < half.num_examples < recordings
  with pytest.raises(registry.ConfigError,
                     match="train_epoch_unit/train_fraction: fraction 1.5"):
    train_source(train_fraction=1.5)


def test_a_window_filter_with_a_fraction_is_refused_when_the_config_is_read(
    small_dataset, tmp_path):
  keep = tmp_path / "keep.csv"
  keep.write_text("example_index,split_position,start_frame,left_pad_frames,"
                  "window_frames\n0,0,0,0,512\n")
  config = ml_collections.ConfigDict(
      {"train_split": "train", "train_window_filter": str(keep),
       "train_fraction": 0.5})
  with pytest.raises(registry.ConfigError, match=(
      "train_window_filter: .*keep.csv: a window filter and a fraction "
      r"\(0.5\) of the files cannot be combined")):
    data_sources.from_config(config, small_dataset)
