"""Evaluators as plug-ins, checked with fake predict functions (no model)."""

import threading

import numpy as np
import pytest
import tensorflow_datasets as tfds

from inatsounds_jax import data
from inatsounds_jax import input_pipeline
from inatsounds_jax import registry
from inatsounds_jax import scored_rows
from inatsounds_jax.evaluators import common
from inatsounds_jax.evaluators import file_level
from inatsounds_jax.geo import prior as prior_lib
from inatsounds_jax.geo import range_model as range_lib

NUM_WINDOW_FEATURES = 4


def fake_predict(num_classes):
  """Logits that are a fixed function of the window's samples."""
  rng = np.random.default_rng(0)
  projection = rng.normal(size=(NUM_WINDOW_FEATURES, num_classes))

  def predict(waveform, latitude=None, longitude=None):
    del latitude, longitude  # A model without a location input.
    w = np.asarray(waveform, np.float64) / 32767.0
    features = np.stack([w.mean(1), np.abs(w).mean(1), w.std(1),
                         w[:, ::7].mean(1)], axis=1)
    return features @ projection * 50.0

  return predict


def context(builder, batch_size=8):
  names = tuple(builder.info.features["label"].names)
  return common.EvalContext(
      builder=builder, windows=input_pipeline.WindowConfig(),
      batch_size=batch_size, label_names=names,
      priors=prior_lib.Priors(names, data.true_ranges_path(builder)))


def softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_file_level_pools_every_window_of_every_file_once(small_dataset):
  names = small_dataset.info.features["label"].names
  predict = fake_predict(len(names))
  result = file_level.evaluate_split(
      predict, small_dataset, "validation", input_pipeline.WindowConfig(), 8)
  # The same pooling, written out per file from the dense windows.
  expected = {}
  windows = input_pipeline.WindowConfig()
  for example in tfds.as_numpy(small_dataset.as_dataset(split="validation")):
    audio = example["audio"].reshape(-1)
    starts, left = input_pipeline.eval_layout(len(audio), windows)
    cut = input_pipeline.cut_windows(audio, starts, left, windows).numpy()
    probs = softmax(predict(cut))
    expected[int(example["recording_id"])] = (
        int(example["label"]), probs.mean(0), probs.max(0), len(cut))
  assert result["num_windows"] == sum(e[3] for e in expected.values())
  files = result["files"]
  assert len(files["labels"]) == len(expected)
  for label, mean, maximum, _ in expected.values():
    # Files are pooled in the order they are read: find each by its scores.
    i = np.argmin(np.abs(files["mean"] - mean).sum(1))
    assert files["labels"][i] == label
    np.testing.assert_allclose(files["mean"][i], mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(files["max"][i], maximum, rtol=1e-4,
                               atol=1e-6)


def test_file_level_evaluator_reports_named_metrics_and_artefacts(
    small_dataset, tmp_path):
  evaluator = file_level.Evaluator(context(small_dataset), split="validation")
  output = evaluator.run(fake_predict(len(evaluator.context.label_names)))
  assert set(output.metrics) == set(evaluator.metric_names)
  assert "mean/no_prior/map" in output.metrics
  assert output.summary["mean"]["no_prior"]["map"] == (
      output.metrics["mean/no_prior/map"])
  assert "validation mean no_prior top1" in output.text
  paths = output.write_artefacts(str(tmp_path / "val"))
  assert [p.rsplit("/", 1)[1] for p in paths] == ["val_long_tail.png",
                                                  "val_confusions.png"]


def test_file_level_bootstrap_gives_reproducible_intervals_per_metric(
    small_dataset):
  evaluator = file_level.Evaluator(context(small_dataset), split="validation",
                                   bootstrap=100)
  predict = fake_predict(len(evaluator.context.label_names))
  output = evaluator.run(predict)
  plain = file_level.Evaluator(context(small_dataset),
                               split="validation").run(predict)
  assert output.metrics == plain.metrics
  assert "interval" not in plain.summary["mean"]["no_prior"]
  for pooling in file_level.POOLINGS:
    interval = output.summary[pooling]["no_prior"]["interval"]
    assert set(interval) == set(file_level.HEADLINE)
    for k in file_level.HEADLINE:
      assert 0.0 <= interval[k]["low"] <= interval[k]["high"] <= 1.0
      assert interval[k]["std"] >= 0.0
  assert output.summary == evaluator.run(predict).summary
  assert "top1" in output.text and "[" in output.text
  with pytest.raises(registry.ConfigError, match="bootstrap=1"):
    file_level.Evaluator(context(small_dataset), split="validation",
                         bootstrap=1)


def test_evaluators_are_built_from_the_config_by_type(small_dataset):
  built = common.from_config(
      {"val": {"type": "file_level", "split": "validation",
               "every_epochs": 2.0, "save_rows": True},
       "test": {"type": "file_level", "split": "test"}},
      context(small_dataset))
  # The schedule and the rows are the loop's business (train.write_outputs).
  assert [(s.name, s.every_epochs, s.save_rows) for s in built] == [
      ("val", 2.0, True), ("test", 1.0, False)]
  assert isinstance(built[0].evaluator, file_level.Evaluator)


@pytest.mark.parametrize("evals, message", [
    ({"v": {"type": "nope", "split": "validation"}},
     r"unknown evaluator type 'nope'; choose from \['file_level', "
     r"'reconstruction', 'strong_label'\]"),
    ({"v": {"split": "validation"}}, "evals.v has no 'type'"),
    ({"v": {"type": "file_level", "split": "validation", "pooling": "x"}},
     "evals.v \\(file_level\\): .*'pooling'"),
    ({"v": {"type": "file_level", "split": "dev"}}, "split 'dev' is not"),
    ({"v": {"type": "reconstruction", "split": "validation",
            "save_rows": True}},
     r"evals.v \(reconstruction\): save_rows=True, but this evaluation "
     "returns no rows"),
])
def test_bad_evaluation_configs_fail_at_construction(small_dataset, evals,
                                                     message):
  with pytest.raises(registry.ConfigError, match=message):
    common.from_config(evals, context(small_dataset))


class ThreadAllgather:
  """`process_allgather` for n threads standing in for n processes."""

  def __init__(self, n):
    self.n, self.barrier = n, threading.Barrier(n)
    self.slots = [None] * n

  def for_process(self, index):
    def allgather(x):
      self.slots[index] = np.asarray(x)
      self.barrier.wait()
      out = np.stack(self.slots)
      self.barrier.wait()
      return out
    return allgather


def run_as_processes(fns):
  results = [None] * len(fns)

  def target(i):
    results[i] = fns[i]()

  threads = [threading.Thread(target=target, args=(i,))
             for i in range(len(fns))]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=30)
  return results


def test_processes_with_fewer_batches_feed_masked_ones_until_all_are_done():
  gather = ThreadAllgather(2)
  batches = [[{"mask": np.ones(2, bool), "x": np.full(2, i + 1)}
              for i in range(n)] for n in (3, 1)]
  out = run_as_processes([
      lambda i=i: list(common.in_step_with_other_processes(
          batches[i], gather.for_process(i), process_count=2))
      for i in range(2)])
  assert [len(o) for o in out] == [3, 3]
  assert [b["mask"].any() for b in out[1]] == [True, False, False]


def test_rows_of_every_process_are_gathered_in_order():
  gather = ThreadAllgather(2)
  rows = [{"labels": np.array([1, 2, 3]), "scores": np.ones((3, 2))},
          {"labels": np.array([7]), "scores": np.zeros((1, 2))}]
  out = run_as_processes([
      lambda i=i: common.rows_of_all_processes(
          rows[i], gather.for_process(i), process_count=2)
      for i in range(2)])
  for gathered in out:
    np.testing.assert_array_equal(gathered["labels"], [1, 2, 3, 7])
    np.testing.assert_array_equal(gathered["scores"][:, 0], [1, 1, 1, 0])


def test_a_prior_that_covers_no_label_is_refused_at_construction(
    small_dataset, tmp_path):
  rng = np.random.default_rng(0)
  other_names = ["Nomen nescio", "Species ignota"]
  observations = range_lib.Observations(
      rng.uniform(-50, 50, 64), rng.uniform(-150, 150, 64),
      rng.integers(0, 2, 64), other_names)
  range_lib.train(observations, epochs=1, batch_size=32, width=8,
                  depth=1).save(str(tmp_path / "range_model"))
  with pytest.raises(registry.ConfigError,
                     match="geo_prior .*covers 0/8 labels.*Nomen nescio"):
    file_level.Evaluator(context(small_dataset), split="validation",
                         geo_prior=str(tmp_path))


def test_file_level_rows_give_back_its_metrics_and_survive_a_rows_file(
    small_dataset, tmp_path):
  evaluator = file_level.Evaluator(context(small_dataset), split="validation")
  output = evaluator.run(fake_predict(len(evaluator.context.label_names)))
  assert set(output.rows) == {"mean/no_prior", "max/no_prior"}
  for key, rows in output.rows.items():
    # One row per validation file, each file once.
    assert len(np.unique(rows.recording)) == len(rows.recording) == len(
        rows.truth) == output.summary["mean"]["no_prior"]["num_files"]
    assert rows.metrics()(rows.scores, rows.truth) == {
        name: value for name, value in output.metrics.items()
        if name.startswith(key + "/")}
  assert set(evaluator.row_keys) == set(output.rows)
  path = scored_rows.write_rows(str(tmp_path / "val_rows.npz"), output.rows)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["val_rows.npz"]
  saved = scored_rows.read_rows(path)
  assert list(saved) == list(output.rows)
  for key, rows in saved.items():
    assert (rows.module, rows.key) == (file_level.__name__, key)
    np.testing.assert_array_equal(rows.scores, output.rows[key].scores)
    np.testing.assert_array_equal(rows.recording, output.rows[key].recording)


def test_a_file_that_is_not_rows_is_refused_naming_it(tmp_path):
  bad = tmp_path / "x_rows.npz"
  bad.write_bytes(b"not a zip")
  with pytest.raises(ValueError, match="x_rows.npz: not a rows file"):
    scored_rows.read_rows(str(bad))
  other = tmp_path / "other.npz"
  np.savez(other, a=np.zeros(3))
  with pytest.raises(ValueError, match="other.npz: holds no rows"):
    scored_rows.read_rows(str(other))
