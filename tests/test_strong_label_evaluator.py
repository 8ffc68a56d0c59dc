"""The strong-label evaluator against the corpus's strong_labels.json."""

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from inatsounds_jax import data
from inatsounds_jax import input_pipeline
from inatsounds_jax import registry
from inatsounds_jax import scored_rows
from inatsounds_jax.evaluators import common
from inatsounds_jax.evaluators import strong_label
from tests.test_evaluators import context
from tests.test_evaluators import fake_predict


def truth_from_json(corpus, builder, split):
  """Per window (eval layout) and per file: species with a call in it."""
  with open(os.path.join(corpus, "strong_labels.json")) as f:
    strong = {r["audio_id"]: r for r in json.load(f)}
  label_of = {row["category_id"]: row["label"]
              for row in data.class_table(builder)}
  num_classes = len(label_of)
  windows = input_pipeline.WindowConfig()
  hop = windows.frontend.hop_length / windows.frontend.sample_rate
  length = windows.window_samples / windows.frontend.sample_rate
  window_rows, file_rows = [], []
  for ex in tfds.as_numpy(builder.as_dataset(split=split)):
    starts, left = input_pipeline.eval_layout(len(ex["audio"]), windows)
    events = strong[int(ex["recording_id"])]["events"]
    file_row = np.zeros(num_classes, np.uint8)
    for start in (starts.numpy() - int(left)) * hop:
      row = np.zeros(num_classes, np.uint8)
      for e in events:
        if e["start"] < start + length and e["end"] > start:
          row[label_of[e["category_id"]]] = 1
      window_rows.append(row)
      file_row |= row
    file_rows.append(file_row)
  return np.array(window_rows), np.array(file_rows)


def ties_only_map(truth):
  """AP of a constant score is the share of positives (one tied threshold);
  classes without positives are left out."""
  present = truth.sum(0) > 0
  return float((truth.sum(0)[present] / len(truth)).mean())


def test_window_and_file_truth_and_map_match_the_strong_labels(
    small_corpus, small_dataset):
  names = small_dataset.info.features["label"].names
  evaluator = strong_label.Evaluator(context(small_dataset),
                                     split="validation")
  output = evaluator.run(lambda w, *location: np.zeros((len(w), len(names))))
  windows, files = truth_from_json(small_corpus, small_dataset, "validation")
  assert output.summary["num_windows"] == len(windows)
  assert output.summary["num_files"] == len(files)
  assert output.metrics["no_prior/window_map"] == pytest.approx(
      ties_only_map(windows))
  assert output.metrics["no_prior/file_map"] == pytest.approx(
      ties_only_map(files))
  # Some window misses a species audible elsewhere in its file.
  assert windows.sum() > 0 and ties_only_map(windows) < 1


def test_prior_view_and_per_class_ap_are_reported(small_dataset):
  names = small_dataset.info.features["label"].names
  evaluator = strong_label.Evaluator(
      context(small_dataset), split="validation",
      geo_prior="synthetic_truth")
  assert evaluator.metric_names == (
      "no_prior/window_map", "no_prior/file_map", "prior/window_map",
      "prior/file_map")
  output = evaluator.run(fake_predict(len(names)))
  assert set(output.metrics) == set(evaluator.metric_names)
  for value in output.metrics.values():
    assert 0 < value <= 1
  per_class = output.summary["prior"]["window"]["per_class_ap"]
  assert set(per_class) <= set(names) and per_class


def test_strong_label_evaluation_refuses_records_without_strong_labels(
    small_corpus, tmp_path):
  from tests.conftest import build
  from tests.test_tfds_builder import _copy_release
  weak = build(_copy_release(small_corpus, tmp_path / "weak", False),
               tmp_path / "tfds")
  with pytest.raises(registry.ConfigError, match="strong labels"):
    common.from_config({"s": {"type": "strong_label", "split": "test"}},
                       context(weak))


def test_bootstrap_intervals_resample_recordings_and_hold_the_estimate(
    small_dataset, tmp_path):
  names = small_dataset.info.features["label"].names
  predict = fake_predict(len(names))

  def run(bootstrap):
    return strong_label.Evaluator(context(small_dataset), split="validation",
                                  bootstrap=bootstrap).run(predict)

  plain, resampled = run(0), run(200)
  assert plain.metrics == resampled.metrics
  assert "interval" not in plain.summary["no_prior"]["window"]
  for level in ("window", "file"):
    m = resampled.summary["no_prior"][level]
    low, high = m["interval"]["low"], m["interval"]["high"]
    assert low <= m["map"] <= high and low < high
    assert m["interval"]["std"] > 0
  # The same resamples each time: intervals are reproducible.
  assert run(200).summary == resampled.summary
  # Its rows give back its metrics (what paired comparisons recompute).
  for key, rows in resampled.rows.items():
    assert rows.metrics()(rows.scores, rows.truth) == {
        f"{key}_map": resampled.metrics[f"{key}_map"]}
  assert set(resampled.rows) == {"no_prior/window", "no_prior/file"}
  assert set(scored_rows.read_rows(scored_rows.write_rows(
      str(tmp_path / "strong_rows.npz"), resampled.rows))) == set(
          resampled.rows)
  assert "window mAP" in resampled.text and "[" in resampled.text
  with pytest.raises(registry.ConfigError, match="bootstrap=1"):
    strong_label.Evaluator(context(small_dataset), split="validation",
                           bootstrap=1)
