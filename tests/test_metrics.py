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
  out = metrics.file_level_metrics(scores, labels,
                                   groups={"supercategory": groups})
  aves = metrics.file_level_metrics(scores, labels, classes=range(4))
  by_group = out["groups"]["supercategory"]
  assert by_group["Aves"]["map"] == pytest.approx(aves["map"])
  assert by_group["Insecta"]["num_classes"] == 2


def test_species_fall_in_the_long_tail_bins_by_training_recordings():
  counts = [0, 1, 5, 6, 20, 21, 100, 101, 5000]
  assert metrics.training_count_bins(counts) == [
      "0", "1-5", "1-5", "6-20", "6-20", "21-100", "21-100", ">100", ">100"]
  rng = np.random.default_rng(1)
  labels = rng.integers(0, len(counts), 300)
  scores = rng.random((300, len(counts)))
  out = metrics.file_level_metrics(
      scores, labels,
      groups={"training_recordings": metrics.training_count_bins(counts)})
  rare = metrics.file_level_metrics(scores, labels, classes=[1, 2])
  bins = out["groups"]["training_recordings"]
  assert bins["1-5"]["top1"] == pytest.approx(rare["top1"])
  assert sum(b["num_classes"] for b in bins.values()) == len(counts)


def test_bad_input():
  with pytest.raises(ValueError, match="labels must lie"):
    metrics.file_level_metrics(np.zeros((2, 3)), [0, 3])
  with pytest.raises(ValueError, match=r"\[files, classes\]"):
    metrics.file_level_metrics(np.zeros(3), [0])
  with pytest.raises(ValueError, match="no class to evaluate"):
    metrics.file_level_metrics(np.zeros((2, 3)), [0, 1], classes=[2])


# ---------------------------------------------------------------------------
# Soundscape metrics: every one against scikit-learn, column by column.
# ---------------------------------------------------------------------------

def _multilabel(seed, quantize=None, rows=400, classes=12):
  """Scores and positives with absent classes (no positive: 9; no
  negative: 10; neither is scorable by AUROC) and, quantized, many ties."""
  rng = np.random.default_rng(seed)
  positives = rng.random((rows, classes)) < rng.uniform(0.02, 0.4, classes)
  positives[:, 9] = False
  positives[:, 10] = True
  scores = rng.random((rows, classes)) + 0.4 * positives
  scores = scores / scores.max()
  if quantize:
    scores = np.round(scores * quantize) / quantize
  return scores, positives


def _sklearn_pr_curve(y, s):
  """precision, recall, thresholds at scikit-learn's thresholds only."""
  p, r, t = skm.precision_recall_curve(y, s)
  return p[:-1], r[:-1], t


@pytest.mark.parametrize("seed, quantize", [(0, None), (1, 20), (2, 4)])
def test_auroc_and_ap_agree_with_sklearn_with_ties_and_absent_classes(
    seed, quantize):
  scores, positives = _multilabel(seed, quantize)
  auroc = metrics.per_class_auroc(scores, positives)
  ap, _ = metrics.per_class_ap_and_best_f1(scores, positives)
  for c in range(scores.shape[1]):
    y = positives[:, c]
    if 0 < y.sum() < len(y):
      assert auroc[c] == pytest.approx(skm.roc_auc_score(y, scores[:, c]),
                                       rel=1e-12)
    else:
      assert np.isnan(auroc[c])
    if y.any():
      assert ap[c] == pytest.approx(
          skm.average_precision_score(y, scores[:, c]), rel=1e-12)
    else:
      assert np.isnan(ap[c])


def test_class_mean_counts_only_classes_with_a_positive():
  scores, positives = _multilabel(3, quantize=10)
  cmap = metrics.class_mean_ap(scores, positives)
  counted = [c for c in range(scores.shape[1]) if positives[:, c].any()]
  assert cmap.classes.tolist() == counted and 9 not in counted
  assert cmap.value == pytest.approx(np.mean(
      [skm.average_precision_score(positives[:, c], scores[:, c])
       for c in counted]), rel=1e-12)
  # AUROC: the class with no negative has a positive but no value.
  auroc = metrics.class_mean(metrics.per_class_auroc(scores, positives),
                             positives)
  assert 10 not in auroc.classes and len(auroc.classes) == len(counted) - 1
  nothing = metrics.class_mean_ap(scores, np.zeros_like(positives))
  assert np.isnan(nothing.value) and len(nothing.classes) == 0


def test_single_label_top1_scores_only_rows_with_one_species():
  scores = np.array([[0.9, 0.1, 0.0],   # one species (0): right
                     [0.2, 0.1, 0.7],   # one species (1): wrong
                     [0.5, 0.5, 0.0],   # one species (1): tie -> 0, wrong
                     [0.9, 0.8, 0.0],   # two species: left out
                     [0.1, 0.1, 0.9],   # none: left out
                     [0.0, 0.1, 0.9]])  # one species (2): right
  positives = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0], [1, 1, 0],
                        [0, 0, 0], [0, 0, 1]], bool)
  top1 = metrics.single_label_top1(scores, positives)
  assert top1.num_rows == 4
  assert top1.accuracy == 0.5
  assert top1.classes.tolist() == [0, 1, 2]
  assert top1.per_class.tolist() == [1.0, 0.0, 1.0]
  assert top1.class_averaged == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed, quantize", [(4, None), (5, 10)])
@pytest.mark.parametrize("target", [0.5, 0.8, 1.0])
def test_threshold_at_precision_agrees_with_sklearn_curve(seed, quantize,
                                                          target):
  scores, positives = _multilabel(seed, quantize)
  got = metrics.threshold_at_precision(scores, positives, target)
  for c in range(scores.shape[1]):
    y = positives[:, c]
    assert got.num_positives[c] == y.sum()
    p, r, t = (_sklearn_pr_curve(y, scores[:, c]) if y.any()
               else ([], [], []))
    reached = np.nonzero(np.asarray(p) >= target)[0]
    if len(reached) == 0:
      assert np.isnan(got.threshold[c]) and np.isnan(got.recall[c])
      assert got.true_positives[c] == 0
      continue
    lowest = reached[np.argmin(t[reached])]
    assert got.threshold[c] == t[lowest]
    assert got.precision[c] == pytest.approx(p[lowest], rel=1e-12)
    assert got.recall[c] == pytest.approx(r[lowest], rel=1e-12)
    assert got.true_positives[c] == np.sum(y & (scores[:, c] >= t[lowest]))


def test_threshold_at_precision_on_a_constructed_case():
  # Ranked: + + - + - - ; precision at each threshold 1, 1, 2/3, 3/4, ...
  scores = np.array([[0.9], [0.8], [0.7], [0.6], [0.5], [0.4]])
  positives = np.array([[1], [1], [0], [1], [0], [0]], bool)
  at_75 = metrics.threshold_at_precision(scores, positives, 0.75)
  assert at_75.threshold[0] == 0.6  # Below 0.7 (2/3) it is back above 3/4.
  assert at_75.recall[0] == 1.0 and at_75.true_positives[0] == 3
  assert at_75.precision[0] == 0.75
  at_1 = metrics.threshold_at_precision(scores, positives, 1.0)
  assert at_1.threshold[0] == 0.8 and at_1.recall[0] == pytest.approx(2 / 3)
  # Unreachable: the top score is negative.
  never = metrics.threshold_at_precision(1.0 - scores, positives, 0.9)
  assert np.isnan(never.threshold[0]) and never.num_positives[0] == 3


@pytest.mark.parametrize("seed, quantize", [(6, None), (7, 5)])
def test_threshold_at_best_f1_agrees_with_sklearn_curve(seed, quantize):
  scores, positives = _multilabel(seed, quantize)
  got = metrics.threshold_at_best_f1(scores, positives)
  _, best_f1 = metrics.per_class_ap_and_best_f1(scores, positives)
  for c in range(scores.shape[1]):
    y = positives[:, c]
    if not y.any():
      assert np.isnan(got.threshold[c]) and np.isnan(got.f1[c])
      continue
    p, r, t = _sklearn_pr_curve(y, scores[:, c])
    with np.errstate(invalid="ignore", divide="ignore"):
      f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    best = np.nonzero(np.isclose(f1, f1.max(), rtol=1e-12, atol=0))[0]
    highest = best[np.argmax(t[best])]
    assert got.threshold[c] == t[highest]
    assert got.f1[c] == pytest.approx(f1.max(), rel=1e-12)
    assert got.f1[c] == pytest.approx(best_f1[c], rel=1e-12)
    assert got.precision[c] == pytest.approx(p[highest], rel=1e-12)
    assert got.recall[c] == pytest.approx(r[highest], rel=1e-12)


@pytest.mark.parametrize("quantize", [None, 10])  # 10: scores on bin edges.
def test_reliability_bins_as_sklearn_calibration_curve(quantize):
  from sklearn import calibration
  scores, positives = _multilabel(8, quantize)
  per_class = metrics.reliability(scores, positives, 10, per_class=True)
  for c in (0, 3, 9, 10):
    want_true, want_pred = calibration.calibration_curve(
        positives[:, c], scores[:, c], n_bins=10)
    nonempty = per_class.count[c] > 0
    np.testing.assert_allclose(per_class.fraction_positive[c][nonempty],
                               want_true, rtol=1e-12)
    np.testing.assert_allclose(per_class.mean_score[c][nonempty], want_pred,
                               rtol=1e-12)
    assert np.isnan(per_class.mean_score[c][~nonempty]).all()
    assert per_class.count[c].sum() == len(scores)
    gap = np.abs(want_true - want_pred)
    assert per_class.expected_calibration_error[c] == pytest.approx(
        np.sum(per_class.count[c][nonempty] * gap) / len(scores), rel=1e-12)
  pooled = metrics.reliability(scores, positives, 10)
  want_true, _ = calibration.calibration_curve(positives.ravel(),
                                               scores.ravel(), n_bins=10)
  np.testing.assert_allclose(pooled.fraction_positive[pooled.count > 0],
                             want_true, rtol=1e-12)
  assert pooled.count.sum() == scores.size
  assert pooled.edges.tolist() == np.linspace(0, 1, 11).tolist()


def test_metrics_that_rank_columns_in_blocks_give_the_same_answer(
    monkeypatch):
  scores, positives = _multilabel(9, quantize=10)
  whole = metrics.per_class_auroc(scores, positives)
  monkeypatch.setattr(metrics, "_BLOCK_CELLS", 2 * len(scores))
  np.testing.assert_array_equal(metrics.per_class_auroc(scores, positives),
                                whole)


def test_integer_scores_rank_as_their_values():
  scores, positives = _multilabel(11, quantize=10)
  as_bytes = np.round(scores * 10).astype(np.uint8)
  np.testing.assert_array_equal(
      metrics.per_class_auroc(as_bytes, positives),
      metrics.per_class_auroc(as_bytes.astype(np.float64), positives))


def test_metrics_refuse_mismatched_or_nan_scores():
  with pytest.raises(ValueError, match=r"\[rows, classes\]"):
    metrics.per_class_auroc(np.zeros((3, 2)), np.zeros((3, 3), bool))
  with pytest.raises(ValueError, match="NaN"):
    metrics.class_mean_ap(np.full((3, 2), np.nan), np.ones((3, 2), bool))
  with pytest.raises(ValueError, match="target precision"):
    metrics.threshold_at_precision(np.zeros((3, 2)), np.ones((3, 2)), 0.0)
  with pytest.raises(ValueError, match="probabilities"):
    metrics.reliability(np.full((3, 2), 2.0), np.ones((3, 2), bool))


# ---------------------------------------------------------------------------
# Bootstrap over recordings.
# ---------------------------------------------------------------------------

def _cmap(scores, positives):
  return metrics.class_mean_ap(scores, positives).value


def test_bootstrap_is_deterministic_for_a_seed():
  scores, positives = _multilabel(10, quantize=10, rows=120)
  recordings = np.repeat(np.arange(12), 10)
  a = metrics.bootstrap_over_recordings(_cmap, recordings, scores, positives,
                                        num_samples=50, seed=3)
  b = metrics.bootstrap_over_recordings(_cmap, recordings, scores, positives,
                                        num_samples=50, seed=3)
  c = metrics.bootstrap_over_recordings(_cmap, recordings, scores, positives,
                                        num_samples=50, seed=4)
  assert a == b
  assert (a.low, a.high) != (c.low, c.high)
  assert a.estimate == _cmap(scores, positives)
  assert a.low <= a.estimate <= a.high and a.std > 0


def test_bootstrap_resamples_whole_recordings():
  # Each recording holds rows of one value: a resample's mean is a mean of
  # recording values, so its spread is that of 4 values, not of 400 rows.
  recordings = np.repeat(["a", "b", "c", "d"], 100)
  values = np.repeat([0.0, 1.0, 2.0, 3.0], 100)
  seen = []

  def mean(v):
    # Rows of a recording stay together: 100 of each drawn recording.
    counts = np.unique(v, return_counts=True)[1]
    assert np.all(counts % 100 == 0)
    seen.append(len(v))
    return v.mean()

  out = metrics.bootstrap_over_recordings(mean, recordings, values,
                                          num_samples=2000, level=0.9)
  assert set(seen) == {400}
  assert out.estimate == 1.5 and out.low < 1.5 < out.high
  # The mean of 4 draws from {0, 1, 2, 3}: sd = sqrt(1.25 / 4).
  assert out.std == pytest.approx(np.sqrt(1.25 / 4), rel=0.05)
  assert out.low == pytest.approx(np.percentile(
      _bootstrap_means_by_hand(2000, 0), 5))


def _bootstrap_means_by_hand(num_samples, seed):
  rng = np.random.default_rng(seed)
  drawn = rng.integers(0, 4, size=(num_samples, 4))
  return drawn.mean(axis=1)


def test_bootstrap_of_an_array_metric_skips_nan_resamples():
  recordings = np.array([0, 0, 1, 1])
  positives = np.array([[1, 0], [0, 0], [0, 1], [0, 0]], bool)
  scores = np.array([[0.9, 0.1], [0.1, 0.2], [0.3, 0.8], [0.2, 0.1]])
  out = metrics.bootstrap_over_recordings(
      lambda s, p: metrics.per_class_ap_and_best_f1(s, p)[0], recordings,
      scores, positives, num_samples=200, seed=0)
  assert out.estimate.tolist() == [1.0, 1.0]
  # A class is NaN in the resamples that drew only the other recording.
  assert np.all(out.num_valid < 200) and np.all(out.num_valid > 0)
  assert out.low.tolist() == out.high.tolist() == [1.0, 1.0]
  assert out.std.tolist() == [0.0, 0.0]


def test_paired_difference_draws_the_same_recordings_for_both_models():
  # Model b is model a plus 0.1 on every recording: recordings differ a lot
  # in difficulty (0..3), so the separate intervals overlap widely, but the
  # difference is 0.1 in every resample.
  recordings = np.repeat(["a", "b", "c", "d"], 3)
  a = np.repeat([0.0, 1.0, 2.0, 3.0], 3)
  b = a + 0.1
  out = metrics.paired_difference(np.mean, recordings, [b], [a],
                                  num_samples=500, seed=1)
  assert out.estimate == pytest.approx(0.1)
  assert out.low == pytest.approx(0.1) and out.high == pytest.approx(0.1)
  assert out.std == pytest.approx(0.0, abs=1e-12)
  alone = metrics.bootstrap_over_recordings(np.mean, recordings, b,
                                            num_samples=500, seed=1)
  assert alone.low < 1.5 < alone.high  # Unpaired: nothing told apart.


def test_paired_difference_is_the_bootstrap_of_the_two_metrics_subtracted():
  scores, positives = _multilabel(10, quantize=10, rows=120)
  other = np.roll(scores, 1, axis=1)
  recordings = np.repeat(np.arange(12), 10)
  out = metrics.paired_difference(_cmap, recordings, (scores, positives),
                                  (other, positives), num_samples=60, seed=2)
  by_hand = metrics.bootstrap_over_recordings(
      lambda s, o, p: _cmap(s, p) - _cmap(o, p), recordings, scores, other,
      positives, num_samples=60, seed=2)
  assert out.estimate == pytest.approx(_cmap(scores, positives)
                                       - _cmap(other, positives))
  assert (out.low, out.high) == pytest.approx((by_hand.low, by_hand.high))
  with pytest.raises(ValueError, match="same arrays"):
    metrics.paired_difference(_cmap, recordings, (scores, positives),
                              (other,))


def test_cross_fitting_never_fits_a_threshold_on_the_rows_it_judges():
  rng = np.random.default_rng(4)
  recordings = np.repeat(np.arange(6), 10)
  row_id = np.arange(60, dtype=np.float64)
  positives = rng.random((60, 2)) < 0.3
  scores = np.stack([row_id, rng.random(60)], axis=1)
  fitted_on = []

  def fit(s, p):
    fitted_on.append(set(s[:, 0].astype(int).tolist()))
    return np.array([np.inf, 0.5])  # Class 0 never predicted.

  held = metrics.cross_fitted_thresholds(fit, scores, positives, recordings,
                                         num_folds=3)
  assert held.num_folds == len(fitted_on) == 3
  for rows in fitted_on:  # Each fit sees two folds: 4 recordings.
    assert len(rows) == 40 and len({r // 10 for r in rows}) == 4
  # Every row is judged once, with a threshold fitted without it.
  judged = [set(range(60)) - rows for rows in fitted_on]
  assert sorted(r for rows in judged for r in rows) == list(range(60))
  # A fixed threshold: the held-out counts are those of all rows.
  hit = scores[:, 1] >= 0.5
  assert held.predicted_positives.tolist() == [0, hit.sum()]
  assert held.true_positives[1] == (hit & positives[:, 1]).sum()
  assert held.precision[1] == pytest.approx(
      (hit & positives[:, 1]).sum() / hit.sum())
  assert held.recall[1] == pytest.approx(
      (hit & positives[:, 1]).sum() / positives[:, 1].sum())
  assert np.isnan(held.precision[0]) and held.recall[0] == 0.0


def test_a_threshold_fitted_on_its_own_rows_is_optimistic_held_out():
  # Recording A: a positive at 0.9, a negative at 0.6; B: a positive at
  # 0.5, a negative at 0.7. On all rows, 0.9 reaches precision 1 with
  # recall 1/2. Fitted on B alone no threshold is that precise (nothing is
  # predicted on A); fitted on A, 0.9 predicts nothing on B.
  scores = np.array([[0.9], [0.6], [0.5], [0.7]])
  positives = np.array([[True], [False], [True], [False]])
  recordings = ["A", "A", "B", "B"]

  def fit(s, p):
    return metrics.threshold_at_precision(s, p, 1.0).threshold

  fitted = metrics.threshold_at_precision(scores, positives, 1.0)
  assert (fitted.threshold[0], fitted.recall[0]) == (0.9, 0.5)
  held = metrics.cross_fitted_thresholds(fit, scores, positives, recordings)
  assert held.num_folds == 2
  assert held.predicted_positives[0] == 0 and held.recall[0] == 0.0
  assert np.isnan(held.precision[0])


def test_cross_fitting_needs_two_recordings():
  with pytest.raises(ValueError, match="at least 2 recordings"):
    metrics.cross_fitted_thresholds(lambda s, p: np.zeros(1), np.zeros((3, 1)),
                                    np.ones((3, 1), bool), [0, 0, 0])
