"""Two runs compared on the same resampled recordings (`compare`)."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from inatsounds_jax import compare
from inatsounds_jax import scored_rows
from inatsounds_jax.evaluators import file_level
from inatsounds_jax.evaluators import strong_label

NUM_FILES, NUM_CLASSES = 60, 6


def file_rows(noise: float, seed: int = 0, labels_seed: int = 0
              ) -> scored_rows.ScoredRows:
  """File-level rows of a model whose scores are the label plus noise:
  the more noise, the worse the model. Files differ in difficulty (the
  same per file for every model), as real recordings do."""
  labels = np.random.default_rng(labels_seed).integers(0, NUM_CLASSES,
                                                       NUM_FILES)
  difficulty = np.random.default_rng(99).random(NUM_FILES)[:, None] * 2
  scores = np.eye(NUM_CLASSES)[labels] + difficulty * np.random.default_rng(
      7).normal(size=(NUM_FILES, NUM_CLASSES)) + noise * (
          np.random.default_rng(seed).normal(size=(NUM_FILES, NUM_CLASSES)))
  return scored_rows.ScoredRows(file_level.__name__, "mean/no_prior",
                           np.arange(100, 100 + NUM_FILES), scores, labels)


def by_metric(found):
  return {c.metric: c for c in found}


def test_a_better_run_is_told_apart_though_its_interval_overlaps():
  better, worse = file_rows(noise=0.2), file_rows(noise=1.5, seed=1)
  found = by_metric(compare.compare(better, worse, num_samples=300))
  assert set(found) == {f"mean/no_prior/{k}" for k in file_level.HEADLINE}
  top1 = found["mean/no_prior/top1"]
  assert top1.a > top1.b
  assert top1.difference.estimate == pytest.approx(top1.a - top1.b)
  assert top1.difference.low > 0 and top1.verdict == "A better"
  # Each run's own interval over the same recordings overlaps the other's.
  alone = {name: file_level._intervals(rows.scores, rows.truth, 300)["top1"]
           for name, rows in (("a", better), ("b", worse))}
  assert alone["a"]["low"] < alone["b"]["high"]
  swapped = by_metric(compare.compare(worse, better, num_samples=300))
  assert swapped["mean/no_prior/top1"].verdict == "B better"
  # One metric alone, on the same resamples: the same comparison.
  [alone_top1] = compare.compare(better, worse, num_samples=300,
                                 metrics=["mean/no_prior/top1"])
  assert alone_top1.difference.std == pytest.approx(top1.difference.std)
  assert alone_top1 == dataclasses.replace(top1, difference=dataclasses.replace(
      top1.difference, std=alone_top1.difference.std))
  with pytest.raises(ValueError, match=r"give no metric \['top1'\]"):
    compare.compare(better, worse, metrics=["top1"])


def test_a_run_against_itself_differs_by_nothing():
  rows = file_rows(noise=1.0)
  for c in compare.compare(rows, rows, num_samples=50):
    assert (c.difference.estimate, c.difference.low, c.difference.high) == (
        0.0, 0.0, 0.0)
    assert c.verdict == "cannot tell" and c.sign == 0


def test_rows_in_another_order_are_aligned_by_recording():
  a, b = file_rows(noise=0.2), file_rows(noise=1.5, seed=1)
  order = np.random.default_rng(3).permutation(NUM_FILES)
  shuffled = scored_rows.ScoredRows(b.module, b.key, b.recording[order],
                               b.scores[order], b.truth[order])
  assert [c.difference for c in compare.compare(a, b, num_samples=40)] == [
      c.difference for c in compare.compare(a, shuffled, num_samples=40)]


def test_an_ordering_agrees_only_when_every_pair_of_runs_says_so():
  better, worse = file_rows(noise=0.2), file_rows(noise=1.5, seed=1)
  top1 = {"mean/no_prior/top1"}

  def pair(a, b):
    return [c for c in compare.compare(a, b, num_samples=100)
            if c.metric in top1][0]

  same = pair(better, better)
  assert compare.ordering_verdict([pair(better, worse)] * 2) == "agrees"
  assert compare.ordering_verdict([pair(worse, better)]) == "disagrees"
  assert compare.ordering_verdict([pair(better, worse), same]) == (
      "cannot tell (1 of 2: A better, 0: B better)")
  with pytest.raises(ValueError, match="no pairs"):
    compare.ordering_verdict([])


def test_models_with_other_species_compare_on_the_species_both_scored():
  # Window rows of a soundscape evaluation: positives per column. Model b
  # scored B, C, D; model a A, B, C (say BirdNET and ours).
  rng = np.random.default_rng(2)
  truth = rng.random((40, 4)) < 0.3
  scores = rng.random((40, 4)) + truth
  recording = np.repeat(np.arange(8), 5)

  def rows(columns, noise):
    keep = ["ABCD".index(c) for c in columns]
    return scored_rows.ScoredRows(
        strong_label.__name__, "no_prior/window", recording,
        scores[:, keep] + noise * rng.random((40, len(keep))),
        truth[:, keep], np.array(list(columns)))

  found = compare.compare(rows("ABC", 0.0), rows("BCD", 0.0), num_samples=30)
  assert found[0].classes == 2
  # On B and C both have the same scores: no difference.
  assert found[0].difference.estimate == 0.0 and found[0].a == found[0].b
  with pytest.raises(ValueError, match="share no class"):
    compare.compare(rows("A", 0.0), rows("D", 0.0), num_samples=10)
  files = file_rows(noise=1.0)
  renamed = scored_rows.ScoredRows(
      files.module, files.key, files.recording, files.scores, files.truth,
      np.array([f"s{j}" for j in range(NUM_CLASSES)]))
  other = dataclasses.replace(renamed, columns=renamed.columns[::-1])
  with pytest.raises(ValueError, match="other labels"):
    compare.compare(renamed, other, num_samples=10)


@pytest.mark.parametrize("change, message", [
    (lambda r: scored_rows.ScoredRows(r.module, "max/no_prior", r.recording,
                                 r.scores, r.truth), "cannot be compared"),
    (lambda r: scored_rows.ScoredRows(r.module, r.key, r.recording + 1,
                                 r.scores, r.truth), "other recordings"),
    (lambda r: scored_rows.ScoredRows(r.module, r.key, r.recording,
                                 r.scores[:, :-1], r.truth), "other classes"),
    (lambda r: scored_rows.ScoredRows(r.module, r.key, r.recording, r.scores,
                                 (r.truth + 1) % NUM_CLASSES),
     "other labels"),
])
def test_other_rows_are_refused(change, message):
  rows = file_rows(noise=1.0)
  with pytest.raises(ValueError, match=message):
    compare.compare(rows, change(rows), num_samples=10)


def test_files_without_rows_are_refused_naming_the_option(tmp_path):
  path = scored_rows.write_rows(str(tmp_path / "a_rows.npz"),
                           {"mean/no_prior": file_rows(noise=1.0)})
  with pytest.raises(ValueError, match="missing_rows.npz: no such rows file"
                     ".*save_rows=True"):
    compare.compare_files(path, str(tmp_path / "missing_rows.npz"))
  with pytest.raises(ValueError, match="'max/no_prior' are not in both"):
    compare.compare_files(path, path, ["max/no_prior"])


@pytest.mark.slow  # Two interpreters start (JAX and TF: ~10 s on 2 cores).
def test_the_command_prints_a_line_per_metric_and_ends_a_problem_in_one_line(
    tmp_path):
  for name, noise, seed in (("a", 0.2, 0), ("b", 1.5, 1)):
    (tmp_path / name).mkdir()
    scored_rows.write_rows(str(tmp_path / name / "validation_rows.npz"),
                      {"mean/no_prior": file_rows(noise, seed)})
  done = subprocess.run(
      [sys.executable, "-m", "inatsounds_jax.compare",
       f"--a={tmp_path / 'a'}", f"--b={tmp_path / 'b'}", "--bootstrap=100"],
      capture_output=True, text=True, check=False)
  assert done.returncode == 0, done.stderr
  lines = done.stdout.strip().splitlines()
  assert lines[0] == f"mean/no_prior: {NUM_CLASSES} classes"
  assert len(lines) == 1 + len(file_level.HEADLINE)
  assert lines[1].startswith("mean/no_prior/top1") and "A better" in lines[1]
  done = subprocess.run(
      [sys.executable, "-m", "inatsounds_jax.compare",
       f"--a={tmp_path / 'a'}", f"--b={tmp_path}", "--bootstrap=100"],
      capture_output=True, text=True, check=False)
  assert done.returncode == 1
  assert done.stderr.strip().splitlines() == [
      f"error: {tmp_path / 'validation_rows.npz'}: no such rows file; run "
      "the evaluation with its option save_rows=True (e.g. "
      "--config.evals.validation.save_rows=True; inatsounds_jax.evaluate "
      "writes rows.npz itself)"]
