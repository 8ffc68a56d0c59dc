"""Data curation: window scores, the keep-list, and training on it."""

import csv
import os
import pathlib
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from inatsounds_jax import curate
from inatsounds_jax import data_sources
from inatsounds_jax import input_pipeline as ip
from inatsounds_jax import registry
from inatsounds_jax import trained as trained_lib
import model_workdir  # pylint: disable=g-bad-import-order

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("classifier"))
  model_workdir.make_workdir(workdir, num_classes=8, window_frames=64,
                             eval_stride_frames=48)
  return trained_lib.load_workdir(workdir)


@pytest.fixture(scope="module")
def scores(classifier, small_dataset):
  return curate.score_windows(classifier, "confidence", small_dataset,
                              "train", batch_size=16)


def read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def recordings(builder, split="train"):
  return {int(e["example_index"]): e for e in tfds.as_numpy(
      builder.as_dataset(split=split, shuffle_files=False))}


def test_confidence_is_the_probability_of_the_labelled_species(
    classifier, scores, small_dataset):
  examples = recordings(small_dataset)
  windows = classifier.windows(48)
  c = scores.columns
  assert set(c["example_index"].tolist()) == set(examples)
  # Split positions count the recordings in the split's order.
  assert c["split_position"].max() == len(examples) - 1
  for row in np.linspace(0, len(scores) - 1, 3).astype(int):
    example = examples[int(c["example_index"][row])]
    starts, left = ip.eval_layout(len(example["audio"]), windows)
    window = ip.cut_windows(example["audio"], starts, left, windows).numpy()[
        c["window"][row]]
    assert starts.numpy()[c["window"][row]] == c["start_frame"][row]
    logits = classifier.model.apply(classifier.variables, window[None])
    expected = jax.nn.softmax(logits)[0, example["label"]]
    np.testing.assert_allclose(c["score"][row], expected, rtol=1e-5)


def test_the_cut_keeps_exactly_the_threshold_or_the_fraction():
  scores = np.array([0.5, 0.1, 0.9, 0.5, 0.3])
  np.testing.assert_array_equal(curate.keep_mask(scores, threshold=0.5),
                                [True, False, True, True, False])
  np.testing.assert_array_equal(curate.keep_mask(scores, keep_fraction=0.4),
                                [True, False, True, False, False])
  for bad in ({}, {"threshold": 0.1, "keep_fraction": 0.5},
              {"keep_fraction": 0.0}, {"keep_fraction": 1.5}):
    with pytest.raises(registry.ConfigError):
      curate.keep_mask(scores, **bad)


def test_reconstruction_scores_need_an_mae_workdir(classifier, tmp_path):
  with pytest.raises(registry.ConfigError, match="--by=reconstruction needs "
                     "a workdir trained with objective 'masked_reconstruc"
                     "tion'; this one was trained with 'classification'"):
    curate.window_scorer(classifier, "reconstruction")
  with pytest.raises(registry.ConfigError, match="not a training workdir"):
    curate.curate(str(tmp_path), str(tmp_path / "out"), keep_fraction=0.5)


def write_keep_list(scores, keep, path):
  scores.select(keep).write(str(path))
  return ip.WindowFilter.read(str(path))


def test_training_on_a_keep_list_sees_only_kept_windows(
    classifier, scores, small_dataset, tmp_path):
  c = scores.columns
  # Keep the first window of every third recording, and all of one more.
  keep = (c["split_position"] % 3 == 0) & (c["window"] == 0)
  keep |= c["split_position"] == 1
  kept = write_keep_list(scores, keep, tmp_path / "keep.csv")
  examples = recordings(small_dataset)
  windows = classifier.windows(48)
  allowed = {}
  for row in np.flatnonzero(keep):
    example = examples[int(c["example_index"][row])]
    cut = ip.cut_windows(example["audio"], np.int32([c["start_frame"][row]]),
                         int(c["left_pad_frames"][row]), windows).numpy()[0]
    allowed.setdefault(int(c["example_index"][row]), []).append(cut)
  num_kept = len(allowed)
  assert kept.num_recordings() == num_kept
  ds = ip.train_windows(small_dataset, "train", windows, seed=1,
                        num_epochs=2, shuffle_buffer=8, process_index=0,
                        process_count=1, window_filter=kept)
  seen = list(ds.take(2 * num_kept).as_numpy_iterator())
  for epoch in (seen[:num_kept], seen[num_kept:]):
    assert sorted(int(x["example_index"]) for x in epoch) == sorted(allowed)
  for x in seen:
    assert any((x["waveform"] == w).all()
               for w in allowed[int(x["example_index"])])
  # Processes split the kept recordings by their split position.
  shares = [ip.train_windows(small_dataset, "train", windows,
                             process_index=p, process_count=2,
                             window_filter=kept) for p in range(2)]
  second = tfds.even_splits("train", n=2, drop_remainder=True)[1]
  [span] = second.to_absolute(small_dataset.info.splits)
  in_second = kept.num_recordings(span.from_, span.to)
  assert 0 < in_second < num_kept
  got = {int(x["example_index"])
         for x in shares[1].take(in_second).as_numpy_iterator()}
  assert got == set(kept.example_index[
      (kept.split_position >= span.from_) &
      (kept.split_position < span.to)].tolist())
  # The run's source counts the kept recordings, and checks window length.
  config = ml_collections.ConfigDict({
      "train_split": "train", "train_window_filter":
      str(tmp_path / "keep.csv")})
  [source] = data_sources.from_config(config, small_dataset)
  assert source.num_examples == num_kept
  with pytest.raises(registry.ConfigError, match="train_window_filter: .*"
                     "windows of 64 frames; this run's are 32"):
    source.windows(ip.WindowConfig(window_frames=32), 0, 0, 1, 8, 0, 1)


@pytest.mark.slow  # Builds the tiny synthetic set.
def test_curate_command_writes_scores_keep_list_and_histogram(tmp_path):
  # The workdir's own dataset (the tiny synthetic set), end to end, as a
  # user runs it.
  workdir = str(tmp_path / "workdir")
  model_workdir.make_workdir(workdir, num_classes=6, window_frames=64,
                             eval_stride_frames=48,
                             data_dir=str(tmp_path / "tfds"))
  out = str(tmp_path / "out")

  def command(*cut):
    return subprocess.run(
        [sys.executable, "-m", "inatsounds_jax.curate", f"--workdir={workdir}",
         f"--out={out}", *cut], capture_output=True, text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO)

  result = command("--keep_fraction=0.25")
  assert result.returncode == 0, result.stderr[-3000:]
  rows = read_csv(os.path.join(out, curate.SCORES_FILE))
  kept_rows = read_csv(os.path.join(out, curate.KEEP_FILE))
  assert len(kept_rows) == round(0.25 * len(rows))
  assert (f"kept {len(kept_rows)} windows; train on them with "
          f"--config.train_window_filter={out}/{curate.KEEP_FILE}"
          ) in result.stdout
  cut = min(float(r["score"]) for r in kept_rows)
  assert all(float(r["score"]) <= cut for r in rows if r not in kept_rows)
  assert os.path.getsize(os.path.join(out, curate.HISTOGRAM_FILE)) > 5000
  # Two cuts at once: one line, exit status 1, the files left as they were.
  before = (tmp_path / "out" / curate.KEEP_FILE).read_bytes()
  result = command("--keep_fraction=0.25", "--threshold=0.5")
  assert result.returncode == 1
  # TensorFlow's start-up lines may come first; ours is the last.
  assert result.stderr.splitlines()[-1] == (
      "error: give exactly one of --threshold and --keep_fraction")
  assert "Traceback" not in result.stderr
  assert (tmp_path / "out" / curate.KEEP_FILE).read_bytes() == before
