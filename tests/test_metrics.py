import numpy as np
import pytest
from sklearn import metrics as skm

from inatsounds_jax import metrics


def _sklearn_reference(scores, labels, classes):
  top1, top5, ap, f1 = [], [], [], []
  for c in classes:
    rows = labels == c
    ranks = np.argsort(-scores[rows], axis=1, kind="stable")
    top1.append(np.mean(ranks[:, 0] == c))
    top5.append(np.mean((ranks[:, :5] == c).any(axis=1)))
    y = labels == c
    ap.append(skm.average_precision_score(y, scores[:, c]))
    p, r, _ = skm.precision_recall_curve(y, scores[:, c])
    with np.errstate(invalid="ignore", divide="ignore"):
      f = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    f1.append(f.max())
  return np.mean(top1), np.mean(top5), np.mean(ap), np.mean(f1)


@pytest.mark.parametrize("seed, quantize", [(0, None), (1, 10), (2, 3)])
def test_agrees_with_sklearn_including_ties(seed, quantize):
  rng = np.random.default_rng(seed)
  files, num_classes = 300, 25
  labels = rng.integers(0, 20, files)  # Classes 20..24: no positives.
  scores = rng.random((files, num_classes))
  scores[np.arange(files), labels] += rng.random(files) * 0.5
  if quantize:  # Many tied scores.
    scores = np.round(scores * quantize) / quantize
  got = metrics.file_level_metrics(scores, labels)
  classes = np.unique(labels)
  want = _sklearn_reference(scores, labels, classes)
  np.testing.assert_allclose(
      [got["top1"], got["top5"], got["map"], got["mf1"]], want, rtol=1e-12)
  assert got["num_classes"] == len(classes) == 20
  assert got["num_files"] == files


def test_listed_classes_without_files_are_left_out():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 5, 50)
  scores = rng.random((50, 8))
  everything = metrics.file_level_metrics(scores, labels, classes=range(8))
  present = metrics.file_level_metrics(scores, labels)
  assert everything["map"] == present["map"]
  subset = metrics.file_level_metrics(scores, labels, classes=[0, 1])
  np.testing.assert_allclose(
      subset["map"], np.mean([skm.average_precision_score(labels == c,
                                                          scores[:, c])
                              for c in (0, 1)]))
  assert subset["num_files"] == np.isin(labels, [0, 1]).sum()


def test_class_averaging_weighs_classes_equally():
  # Class 0: 9 files all right; class 1: 1 file wrong -> 0.5, not 0.9.
  labels = np.array([0] * 9 + [1])
  scores = np.zeros((10, 2))
  scores[:, 0] = 1.0
  out = metrics.file_level_metrics(scores, labels)
  assert out["top1"] == 0.5
  assert out["top5"] == 1.0


def test_perfect_and_ties_break_to_lower_index():
  labels = np.array([0, 1, 2])
  out = metrics.file_level_metrics(np.eye(3), labels)
  assert out["top1"] == out["map"] == out["mf1"] == 1.0
  tied = metrics.file_level_metrics(np.ones((3, 3)), labels)
  assert tied["top1"] == pytest.approx(1 / 3)  # Only class 0 wins ties.


def test_group_breakdown():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 6, 120)
  scores = rng.random((120, 6))
  groups = ["Aves"] * 4 + ["Insecta"] * 2
  out = metrics.file_level_metrics(scores, labels, groups=groups)
  aves = metrics.file_level_metrics(scores, labels, classes=range(4))
  assert out["groups"]["Aves"]["map"] == pytest.approx(aves["map"])
  assert out["groups"]["Insecta"]["num_classes"] == 2


def test_bad_input():
  with pytest.raises(ValueError, match="labels must lie"):
    metrics.file_level_metrics(np.zeros((2, 3)), [0, 3])
  with pytest.raises(ValueError, match=r"\[files, classes\]"):
    metrics.file_level_metrics(np.zeros(3), [0])
  with pytest.raises(ValueError, match="no class to evaluate"):
    metrics.file_level_metrics(np.zeros((2, 3)), [0, 1], classes=[2])
