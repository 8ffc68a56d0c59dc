"""Metrics of the iNatSounds benchmark and of soundscape evaluation.

File-level metrics of the iNatSounds benchmark (Chasmai et al. 2025) are
averaged over the classes present in the evaluated split (the "eval
species"), each class counting once however many files it has:

- class-averaged top-1 / top-5: per-class accuracy, then the mean;
- mAP: mean over classes of average precision, as scikit-learn defines it
  (step-wise, ties in score share one threshold);
- mF1: mean over classes of the best F1 along that class's precision-recall
  curve (each class its own threshold).

Soundscape evaluation (strongly annotated recordings: the iNatSounds
paper's transfer to Powdermill and SSW, s.5.2; BirdSet, Rauch et al.,
arXiv:2403.10380; Perch) scores windows or segments that may hold several
species or none, so every metric below takes a score matrix and a
positives matrix of the same shape `[rows, classes]`:

- `per_class_auroc`, `per_class_ap_and_best_f1`: scikit-learn's
  `roc_auc_score` and `average_precision_score` per column;
- `class_mean`, `class_mean_ap`: the class mean over classes with at least
  one positive (cmAP as Perch's and BirdSet's code computes it);
- `single_label_top1`: top-1 on rows with exactly one species;
- `threshold_at_precision`, `threshold_at_best_f1`: per-class operating
  points on scikit-learn's precision-recall curve;
- `reliability`: binned score against fraction positive, as
  `sklearn.calibration.calibration_curve` bins;
- `bootstrap_over_recordings`: percentile intervals from resampled
  recordings; `paired_difference`: the interval of two models' difference
  on the same resamples.

Everything ranking-based comes from one sort of each column (`_Ranking`),
vectorised over classes: no Python loop over 5,569 classes, and columns in
blocks so that memory stays bounded however many rows there are.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

# Columns are ranked in blocks of at most this many cells (rows x columns):
# a ranking holds a few arrays of this size (64 MB each in float64),
# whatever the size of the matrix.
_BLOCK_CELLS = 1 << 23


def topk_hits(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
  """Whether each file's label is among its k best classes.

  Ties are broken towards the lower class index, as `np.argmax` does.
  """
  true = scores[np.arange(len(labels)), labels][:, None]
  index = np.arange(scores.shape[1])[None, :]
  ahead = (scores > true) | ((scores == true) & (index < labels[:, None]))
  return ahead.sum(axis=1) < k


@dataclasses.dataclass(frozen=True)
class _Ranking:
  """Columns sorted by score, high to low, counted at every threshold.

  A threshold t predicts "positive" for scores >= t; the thresholds are the
  distinct scores of a column, as in scikit-learn's `precision_recall_curve`
  and `roc_curve`. A threshold sits at the last row of each run of tied
  scores, so tied rows enter together.

  Attributes:
    sorted_scores: `[rows, classes]`, each column descending.
    tp: `[rows, classes]` positives among the first i + 1 sorted rows.
    is_threshold: `[rows, classes]` whether row i ends a run of ties.
    num_pos: `[classes]` float, positives per column.
  """
  sorted_scores: np.ndarray
  tp: np.ndarray
  is_threshold: np.ndarray
  num_pos: np.ndarray

  @classmethod
  def of(cls, scores: np.ndarray, positives: np.ndarray) -> _Ranking:
    order = np.argsort(-scores, axis=0, kind="stable")
    sorted_scores = np.take_along_axis(scores, order, axis=0)
    tp = np.cumsum(np.take_along_axis(positives, order, axis=0), axis=0)
    is_threshold = np.ones_like(sorted_scores, dtype=bool)
    is_threshold[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    return cls(sorted_scores, tp, is_threshold,
               tp[-1].astype(np.float64) if len(tp) else
               np.zeros(scores.shape[1]))

  @property
  def predicted(self) -> np.ndarray:
    """`[rows, 1]` rows at or above each row's score (i + 1)."""
    return np.arange(1, len(self.tp) + 1)[:, None]

  @property
  def fp(self) -> np.ndarray:
    return self.predicted - self.tp

  def at_previous_threshold(self, counts: np.ndarray) -> np.ndarray:
    """A non-decreasing count (tp, fp) at the threshold above each row."""
    at = np.where(self.is_threshold, counts, 0)
    before = np.zeros_like(counts)
    before[1:] = np.maximum.accumulate(at, axis=0)[:-1]
    return before

  def last_threshold_where(self, condition: np.ndarray) -> np.ndarray:
    """`[classes]` row of the lowest threshold meeting `condition`, or -1."""
    hits = condition & self.is_threshold
    last = len(hits) - 1 - np.argmax(hits[::-1], axis=0)
    return np.where(hits.any(axis=0), last, -1)


def _check_matrix(scores, positives) -> tuple[np.ndarray, np.ndarray]:
  scores = np.asarray(scores)
  positives = np.asarray(positives, bool)
  if scores.ndim != 2 or positives.shape != scores.shape:
    raise ValueError(f"scores and positives must both be [rows, classes]; "
                     f"got {scores.shape} and {positives.shape}")
  if not np.issubdtype(scores.dtype, np.floating):
    scores = scores.astype(np.float64)  # Negating unsigned ints wraps.
  if np.isnan(scores).any():
    raise ValueError("scores hold NaN: a ranking needs ordered scores")
  return scores, positives


def _column_blocks(shape: tuple[int, int]) -> Iterator[slice]:
  width = max(1, _BLOCK_CELLS // max(shape[0], 1))
  for start in range(0, max(shape[1], 1), width):
    yield slice(start, min(start + width, shape[1]))


def _per_class(compute: Callable[[_Ranking], tuple[np.ndarray, ...]],
               scores, positives) -> tuple[np.ndarray, ...]:
  """`compute` on the ranking of every block of columns, joined."""
  scores, positives = _check_matrix(scores, positives)
  parts = [compute(_Ranking.of(scores[:, block], positives[:, block]))
           for block in _column_blocks(scores.shape)]
  return tuple(np.concatenate(p) for p in zip(*parts))


def _ap_and_best_f1(r: _Ranking) -> tuple[np.ndarray, np.ndarray]:
  with np.errstate(invalid="ignore", divide="ignore"):
    precision = r.tp / r.predicted
    gained = r.tp - r.at_previous_threshold(r.tp)
    ap = np.sum(np.where(r.is_threshold, gained * precision, 0.0),
                axis=0) / r.num_pos
    f1 = np.where(r.is_threshold, 2.0 * r.tp / (r.predicted + r.num_pos),
                  0.0)
  missing = r.num_pos == 0
  return (np.where(missing, np.nan, ap),
          np.where(missing, np.nan, f1.max(axis=0, initial=0.0)))


def per_class_ap_and_best_f1(scores: np.ndarray, positives: np.ndarray
                             ) -> tuple[np.ndarray, np.ndarray]:
  """Average precision and best F1 of every column.

  AP as `sklearn.metrics.average_precision_score` per column (step-wise:
  precision at each threshold weighted by the recall it adds); best F1 is
  the maximum over the thresholds of `precision_recall_curve`.

  Args:
    scores: `[rows, classes]`.
    positives: bool `[rows, classes]`.

  Returns:
    (AP, best F1), each `[classes]`; NaN for a class without positives
    (scikit-learn warns and scores such a class 0; it has nothing to rank).
  """
  return _per_class(_ap_and_best_f1, scores, positives)


def file_level_metrics(scores, labels, classes: Sequence[int] | None = None,
                       groups: Mapping[str, Sequence[str]] | None = None
                       ) -> dict:
  """Class-averaged top-1 and top-5, mAP and mF1 over eval species.

  Args:
    scores: `[files, classes]` file-level scores (e.g. mean of window
      softmaxes). Any monotone scale works; only order matters.
    labels: int `[files]`, the annotated class of each file.
    classes: the classes to average over; default: those present in
      `labels`. A listed class with no file is left out of every mean.
    groups: optional breakdowns: grouping name -> a group name per class
      (e.g. "supercategory", or "training_recordings" from
      `training_count_bins`).

  Returns:
    {"top1", "top5", "map", "mf1", "num_classes", "num_files",
     "per_class": {"class", "count", "top1", "top5", "ap", "f1"},
     "groups": {grouping: {group: {"top1", "top5", "map", "mf1",
                                   "num_classes"}}}}.
  """
  scores = np.asarray(scores, np.float64)
  labels = np.asarray(labels, np.int64)
  if scores.ndim != 2 or labels.shape != (scores.shape[0],):
    raise ValueError(f"scores must be [files, classes] and labels [files]; "
                     f"got {scores.shape} and {labels.shape}")
  if len(labels) and (labels.min() < 0 or labels.max() >= scores.shape[1]):
    raise ValueError(f"labels must lie in [0, {scores.shape[1]}); got "
                     f"{labels.min()}..{labels.max()}")
  present = np.bincount(labels, minlength=scores.shape[1])
  if classes is None:
    classes = np.nonzero(present)[0]
  classes = np.asarray([c for c in classes if present[c] > 0], np.int64)
  if len(classes) == 0:
    raise ValueError("no class to evaluate: no file carries a listed class")

  counts = present[classes].astype(np.float64)
  per_class = {"class": classes, "count": present[classes]}
  for k in (1, 5):
    hits = topk_hits(scores, labels, k).astype(np.float64)
    hits_per_class = np.bincount(labels, weights=hits,
                                 minlength=scores.shape[1])
    per_class[f"top{k}"] = hits_per_class[classes] / counts
  ap, f1 = per_class_ap_and_best_f1(scores[:, classes],
                                    labels[:, None] == classes[None, :])
  per_class["ap"], per_class["f1"] = ap, f1

  def summary(mask):
    return {"top1": float(per_class["top1"][mask].mean()),
            "top5": float(per_class["top5"][mask].mean()),
            "map": float(ap[mask].mean()), "mf1": float(f1[mask].mean()),
            "num_classes": int(mask.sum())}

  result = summary(np.ones(len(classes), bool))
  result["num_files"] = int(np.isin(labels, classes).sum())
  result["per_class"] = per_class
  if groups:
    result["groups"] = {}
    for grouping, names in groups.items():
      group_of = np.asarray(names)[classes]
      result["groups"][grouping] = {str(g): summary(group_of == g)
                                    for g in sorted(set(group_of.tolist()))}
  return result


# The iNatSounds paper's long-tail question (s.5, "the very long tail ...
# an opportunity for future research on few-shot learning"): species binned
# by how many training recordings they have.
TRAINING_COUNT_BINS = ((0, 0), (1, 5), (6, 20), (21, 100), (101, None))


def training_count_bins(train_counts: Sequence[int]) -> list[str]:
  """The `TRAINING_COUNT_BINS` name of each class ("0", "1-5", "6-20",
  "21-100", ">100"), for `file_level_metrics(groups=...)`."""
  names = []
  for count in np.asarray(train_counts, np.int64):
    for low, high in TRAINING_COUNT_BINS:
      if count >= low and (high is None or count <= high):
        names.append(f">{low - 1}" if high is None else
                     str(low) if low == high else f"{low}-{high}")
        break
  return names


def _auroc(r: _Ranking) -> tuple[np.ndarray]:
  tp, fp = r.tp, r.fp
  tp_before = r.at_previous_threshold(tp)
  fp_before = r.at_previous_threshold(fp)
  # Trapezoids between consecutive ROC points, in counts (exact integers).
  area = np.sum(np.where(r.is_threshold,
                         (fp - fp_before) * (tp + tp_before), 0), axis=0)
  num_neg = len(tp) - r.num_pos
  with np.errstate(invalid="ignore", divide="ignore"):
    auroc = area / (2.0 * r.num_pos * num_neg)
  return (np.where((r.num_pos == 0) | (num_neg == 0), np.nan, auroc),)


def per_class_auroc(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
  """Area under the ROC curve of every column.

  As `sklearn.metrics.roc_auc_score` per column: the trapezoidal area under
  `roc_curve`, whose points are the distinct scores, so tied positives and
  negatives count a half each.

  Args:
    scores: `[rows, classes]`.
    positives: bool `[rows, classes]`.

  Returns:
    `[classes]`; NaN for a class with no positive or no negative (where
    scikit-learn warns that the score is undefined and returns NaN).
  """
  return _per_class(_auroc, scores, positives)[0]


@dataclasses.dataclass(frozen=True)
class ClassMean:
  """A per-class metric averaged over the classes that count.

  Attributes:
    value: the mean; NaN when no class counts.
    classes: int `[k]`, the column indices that counted.
  """
  value: float
  classes: np.ndarray


def class_mean(per_class: np.ndarray, positives: np.ndarray) -> ClassMean:
  """Mean of a per-class metric over classes with at least one positive.

  The class mean of Perch (`chirp.models.metrics`, cmAP: classes without a
  positive are ignored) and of BirdSet (cmAP, Rauch et al.,
  arXiv:2403.10380, which uses Perch's definition): each class counts once
  however many rows it has. A class whose value is NaN although it has a
  positive (AUROC with no negative) is left out too.

  Args:
    per_class: `[classes]`.
    positives: bool `[rows, classes]` (or `[classes]` counts).
  """
  per_class = np.asarray(per_class, np.float64)
  positives = np.asarray(positives)
  counts = positives.sum(axis=0) if positives.ndim == 2 else positives
  counted = np.nonzero((counts > 0) & ~np.isnan(per_class))[0]
  value = float(per_class[counted].mean()) if len(counted) else float("nan")
  return ClassMean(value, counted)


def class_mean_ap(scores: np.ndarray, positives: np.ndarray) -> ClassMean:
  """cmAP: AP per class (`per_class_ap_and_best_f1`), by `class_mean`."""
  ap, _ = per_class_ap_and_best_f1(scores, positives)
  return class_mean(ap, positives)


@dataclasses.dataclass(frozen=True)
class SingleLabelTop1:
  """Top-1 on the rows where exactly one species is present.

  Attributes:
    accuracy: fraction of those rows whose best-scoring class is the
      species present (NaN with no such row).
    class_averaged: the same per class, then the mean over classes, as
      the iNatSounds benchmark averages top-1 (NaN with no such row).
    num_rows: how many rows had exactly one species.
    classes: int `[k]`, the classes present in those rows.
    per_class: `[k]` top-1 of each of `classes`.
  """
  accuracy: float
  class_averaged: float
  num_rows: int
  classes: np.ndarray
  per_class: np.ndarray


def single_label_top1(scores: np.ndarray, positives: np.ndarray
                      ) -> SingleLabelTop1:
  """Top-1 accuracy where a row's truth is a single species.

  A row (window or segment) with no species or with several has no single
  right answer, so it is left out. The best class is the argmax over all
  columns given (ties to the lower index, as `topk_hits`): pass the
  model's full label set to score the model as it would be used.
  """
  scores, positives = _check_matrix(scores, positives)
  single = positives.sum(axis=1) == 1
  labels = np.argmax(positives[single], axis=1)
  hits = topk_hits(scores[single], labels, 1).astype(np.float64)
  count = np.bincount(labels, minlength=scores.shape[1])
  classes = np.nonzero(count)[0]
  per_class = (np.bincount(labels, weights=hits, minlength=scores.shape[1])
               [classes] / count[classes])
  nan = float("nan")
  return SingleLabelTop1(
      accuracy=float(hits.mean()) if len(hits) else nan,
      class_averaged=float(per_class.mean()) if len(classes) else nan,
      num_rows=int(single.sum()), classes=classes, per_class=per_class)


@dataclasses.dataclass(frozen=True)
class OperatingPoints:
  """One threshold per class and how the class fares there.

  A row is predicted positive when its score >= `threshold`. Every field is
  `[classes]`; NaN (0 for the counts) where a class has no such threshold.

  Attributes:
    threshold, precision, recall, f1: at the chosen threshold.
    true_positives: positives at or above the threshold (the evidence
      behind its precision).
    num_positives: the class's positives in all rows.
  """
  threshold: np.ndarray
  precision: np.ndarray
  recall: np.ndarray
  f1: np.ndarray
  true_positives: np.ndarray
  num_positives: np.ndarray


def _operating_points(r: _Ranking, row: np.ndarray) -> tuple[np.ndarray, ...]:
  """The fields of `OperatingPoints` at `row` per class (-1: none)."""
  found = row >= 0
  at = np.maximum(row, 0)[None, :]
  tp = np.take_along_axis(r.tp, at, axis=0)[0].astype(np.float64)
  predicted = at[0] + 1.0
  threshold = np.take_along_axis(r.sorted_scores, at, axis=0)[0]
  with np.errstate(invalid="ignore", divide="ignore"):
    precision, recall = tp / predicted, tp / r.num_pos
    f1 = 2.0 * tp / (predicted + r.num_pos)
  nan = np.nan
  return (np.where(found, threshold, nan), np.where(found, precision, nan),
          np.where(found, recall, nan), np.where(found, f1, nan),
          np.where(found, tp, 0).astype(np.int64), r.num_pos.astype(np.int64))


def threshold_at_precision(scores: np.ndarray, positives: np.ndarray,
                           target: float) -> OperatingPoints:
  """Per class, the lowest threshold whose precision reaches `target`.

  On scikit-learn's `precision_recall_curve`: the smallest of its
  thresholds with precision >= target, which is the one with the most
  recall among them (precision is not monotone in the threshold; a higher
  threshold may fall below the target). Unreachable (no threshold that
  precise, or no positive) gives NaN.

  Args:
    scores: `[rows, classes]`.
    positives: bool `[rows, classes]`.
    target: precision in (0, 1].
  """
  if not 0.0 < target <= 1.0:
    raise ValueError(f"target precision must be in (0, 1]; got {target}")

  def compute(r: _Ranking):
    with np.errstate(invalid="ignore"):
      row = r.last_threshold_where(r.tp / r.predicted >= target)
    return _operating_points(r, np.where(r.num_pos > 0, row, -1))

  return OperatingPoints(*_per_class(compute, scores, positives))


def threshold_at_best_f1(scores: np.ndarray, positives: np.ndarray
                         ) -> OperatingPoints:
  """Per class, the threshold with the best F1 and the precision/recall there.

  The F1 is `per_class_ap_and_best_f1`'s best F1 (the iNatSounds paper's
  mF1 per class); among thresholds with equal F1 the highest is taken.
  NaN for a class without positives.
  """
  def compute(r: _Ranking):
    f1 = np.where(r.is_threshold, r.tp / (r.predicted + r.num_pos), -1.0)
    row = np.argmax(f1, axis=0)
    return _operating_points(r, np.where(r.num_pos > 0, row, -1))

  return OperatingPoints(*_per_class(compute, scores, positives))


@dataclasses.dataclass(frozen=True)
class Reliability:
  """A reliability diagram's data: binned scores against truth.

  Pooled over every cell, each field has one bin axis `[bins]`; per class,
  `[classes, bins]` (and `[classes]` for the calibration error).

  Attributes:
    edges: `[bins + 1]` bin edges on [0, 1].
    count: rows (cells) per bin.
    mean_score: mean score per bin; NaN in an empty bin.
    fraction_positive: fraction of positives per bin; NaN in an empty bin.
    expected_calibration_error: sum over bins of count / total x
      |fraction_positive - mean_score|: the expected calibration error of
      Guo et al. (2017, s.2) with each cell a binary prediction.
  """
  edges: np.ndarray
  count: np.ndarray
  mean_score: np.ndarray
  fraction_positive: np.ndarray
  expected_calibration_error: np.ndarray | float


def reliability(scores: np.ndarray, positives: np.ndarray, num_bins: int = 10,
                *, per_class: bool = False) -> Reliability:
  """Calibration of probabilities: score against fraction positive per bin.

  Bins as `sklearn.calibration.calibration_curve(strategy="uniform")`:
  `num_bins` equal bins on [0, 1], a score on an inner edge in the lower
  bin. Its `prob_pred` and `prob_true` are `mean_score` and
  `fraction_positive` of the non-empty bins.

  Args:
    scores: `[rows, classes]` probabilities in [0, 1].
    positives: bool `[rows, classes]`.
    num_bins: bins on [0, 1].
    per_class: one diagram per column instead of one over every cell.
  """
  scores, positives = _check_matrix(scores, positives)
  if scores.size and (scores.min() < 0 or scores.max() > 1):
    raise ValueError("reliability needs probabilities in [0, 1]; got scores "
                     f"in [{scores.min()}, {scores.max()}]")
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  bins = np.searchsorted(edges[1:-1], scores)
  groups = scores.shape[1] if per_class else 1
  cell = bins + (num_bins * np.arange(scores.shape[1]) if per_class else 0)
  size = groups * num_bins

  def total(weights=None):
    return np.bincount(cell.ravel(), weights=weights,
                       minlength=size).reshape(groups, num_bins)

  count = total()
  with np.errstate(invalid="ignore", divide="ignore"):
    mean_score = total(scores.ravel().astype(np.float64)) / count
    fraction = total(positives.ravel().astype(np.float64)) / count
    gap = np.where(count > 0, np.abs(fraction - mean_score), 0.0)
    ece = (count * gap).sum(axis=1) / count.sum(axis=1)
  if not per_class:
    count, mean_score, fraction = count[0], mean_score[0], fraction[0]
    ece = float(ece[0])
  return Reliability(edges, count, mean_score, fraction, ece)


@dataclasses.dataclass(frozen=True)
class BootstrapInterval:
  """A metric with its bootstrap spread.

  Fields are floats for a scalar metric, arrays of the metric's shape for
  an array-valued one.

  Attributes:
    estimate: the metric on all rows.
    low, high: the percentile interval at `level`.
    std: the standard deviation of the resampled metric (ddof=1).
    level: the interval's coverage, e.g. 0.95.
    num_samples: resamples drawn.
    num_valid: resamples where the metric was not NaN (only those enter
      the interval and std).
  """
  estimate: float | np.ndarray
  low: float | np.ndarray
  high: float | np.ndarray
  std: float | np.ndarray
  level: float
  num_samples: int
  num_valid: int | np.ndarray


def _resampled_rows(groups: np.ndarray, num_samples: int,
                    rng: np.random.Generator) -> Iterator[np.ndarray]:
  """Row indices of each resample: recordings drawn with replacement, all
  rows of a recording drawn as often as the recording is."""
  _, group_of = np.unique(groups, return_inverse=True)
  order = np.argsort(group_of, kind="stable")
  size = np.bincount(group_of)
  start = np.concatenate([[0], np.cumsum(size)[:-1]])
  drawn = rng.integers(0, len(size), size=(num_samples, len(size)))
  for sample in drawn:
    sizes = size[sample]
    ends = np.cumsum(sizes)
    # Position k of the resample is row start[g] + (k - first k of g).
    offset = np.repeat(start[sample] - (ends - sizes), sizes)
    yield order[offset + np.arange(ends[-1] if len(ends) else 0)]


def bootstrap_over_recordings(metric: Callable[..., float | np.ndarray],
                              recordings: Sequence, *arrays: np.ndarray,
                              num_samples: int = 1000, level: float = 0.95,
                              seed: int = 0) -> BootstrapInterval:
  """Percentile bootstrap of `metric(*arrays)` resampling recordings.

  Windows of one recording are not independent (the same birds, the same
  noise, the same recorder), so the unit resampled is the recording: rows
  resampled one by one would give intervals that are too narrow. Each
  resample draws as many recordings as there are, with
  replacement, and keeps every row of each drawn recording (twice if drawn
  twice), then recomputes the metric. A class mean such as `class_mean_ap`
  skips the classes with no positive in a resample, so a resample may
  average over fewer classes than the estimate.

  Args:
    metric: rows of each array -> a float or an array of floats.
    recordings: `[rows]` recording id of each row (any hashable values).
    *arrays: arrays whose first axis is the rows.
    num_samples: resamples.
    level: the interval's coverage, in (0, 1).
    seed: the same seed gives the same resamples and interval.
  """
  recordings = np.asarray(recordings)
  if any(len(a) != len(recordings) for a in arrays):
    raise ValueError(f"every array needs one row per recording id "
                     f"({len(recordings)}); got "
                     f"{[len(a) for a in arrays]}")
  if not 0.0 < level < 1.0 or num_samples < 2:
    raise ValueError(f"level must be in (0, 1) and num_samples >= 2; got "
                     f"{level}, {num_samples}")
  estimate = np.asarray(metric(*arrays), np.float64)
  rng = np.random.default_rng(seed)
  samples = np.stack([
      np.asarray(metric(*(a[rows] for a in arrays)), np.float64)
      for rows in _resampled_rows(recordings, num_samples, rng)])
  valid = ~np.isnan(samples)
  tail = 100.0 * (1.0 - level) / 2.0
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # An all-NaN column.
    low, high = np.nanpercentile(samples, [tail, 100.0 - tail], axis=0)
    std = np.nanstd(samples, axis=0, ddof=1)

  num_valid = valid.sum(axis=0)

  def out(x):
    return x.item() if np.ndim(x) == 0 else x

  return BootstrapInterval(
      estimate=out(estimate), low=out(low), high=out(high), std=out(std),
      level=level, num_samples=num_samples, num_valid=out(num_valid))


def paired_difference(metric: Callable[..., float | np.ndarray],
                      recordings: Sequence, a: Sequence[np.ndarray],
                      b: Sequence[np.ndarray], num_samples: int = 1000,
                      level: float = 0.95, seed: int = 0
                      ) -> BootstrapInterval:
  """Percentile bootstrap of `metric(*a) - metric(*b)`, both computed on
  the same resampled recordings.

  Two models scored on the same recordings share those recordings'
  difficulty: a resample heavy in hard recordings lowers both metrics. The
  interval of the difference leaves that shared part out, so it is what an
  ordering of two models is judged by; two separate intervals that overlap
  may still give a difference whose interval excludes 0.

  Args:
    metric: rows of each array -> a float or an array of floats.
    recordings: `[rows]` recording id of each row, the same rows for both
      models (row i of every array in `a` and `b` is the same window or
      file).
    a, b: the two models' arrays (e.g. `(scores, truth)` each), first axis
      the rows.
    num_samples, level, seed: as `bootstrap_over_recordings`.
  """
  if len(a) != len(b):
    raise ValueError(f"both models need the same arrays; got {len(a)} and "
                     f"{len(b)}")
  n = len(a)

  def difference(*arrays):
    return (np.asarray(metric(*arrays[:n]), np.float64)
            - np.asarray(metric(*arrays[n:]), np.float64))

  return bootstrap_over_recordings(difference, recordings, *a, *b,
                                   num_samples=num_samples, level=level,
                                   seed=seed)


@dataclasses.dataclass(frozen=True)
class HeldOut:
  """Thresholds judged on recordings they were not fitted on.

  Every field is `[classes]`: precision and recall over all folds' held-out
  rows together (NaN where no held-out row was predicted positive, resp.
  the class has no positive), and the counts behind them.
  """
  precision: np.ndarray
  recall: np.ndarray
  true_positives: np.ndarray
  predicted_positives: np.ndarray
  num_folds: int


def cross_fitted_thresholds(fit: Callable[[np.ndarray, np.ndarray],
                                          np.ndarray],
                            scores: np.ndarray, positives: np.ndarray,
                            recordings: Sequence, num_folds: int = 5,
                            seed: int = 0) -> HeldOut:
  """How thresholds fitted on some recordings fare on the others.

  A threshold chosen on the rows it is then judged on is optimistic (its
  precision is what it was chosen to reach). Recordings are split at
  random into `num_folds` folds (fewer if there are fewer recordings);
  each fold's rows are judged with thresholds `fit` finds on the other
  folds' rows (a NaN threshold predicts nothing), and the counts are summed
  over folds: cross-fitting by recording, since windows of one recording
  are not independent (`bootstrap_over_recordings`).

  Args:
    fit: `(scores, positives)` of the fitting rows -> `[classes]`
      thresholds (e.g. `threshold_at_precision(...).threshold`).
    scores: `[rows, classes]`.
    positives: bool `[rows, classes]`.
    recordings: `[rows]` recording id of each row.
    num_folds: at least 2.
    seed: the same seed gives the same folds.
  """
  recordings = np.asarray(recordings)
  positives = np.asarray(positives, bool)
  if num_folds < 2:
    raise ValueError(f"num_folds must be at least 2; got {num_folds}")
  names = np.unique(recordings)
  folds = min(num_folds, len(names))
  if folds < 2:
    raise ValueError("cross-fitting needs at least 2 recordings; got "
                     f"{len(names)}")
  fold_of_name = np.empty(len(names), np.int64)
  fold_of_name[np.random.default_rng(seed).permutation(len(names))] = (
      np.arange(len(names)) % folds)
  fold = fold_of_name[np.searchsorted(names, recordings)]
  tp = np.zeros(positives.shape[1], np.int64)
  predicted = np.zeros(positives.shape[1], np.int64)
  for k in range(folds):
    held = fold == k
    thresholds = np.asarray(fit(scores[~held], positives[~held]), np.float64)
    with np.errstate(invalid="ignore"):
      hit = scores[held] >= thresholds[None, :]  # NaN compares False.
    predicted += hit.sum(axis=0)
    tp += (hit & positives[held]).sum(axis=0)
  num_pos = positives.sum(axis=0)
  with np.errstate(invalid="ignore", divide="ignore"):
    precision = np.where(predicted > 0, tp / predicted, np.nan)
    recall = np.where(num_pos > 0, tp / num_pos, np.nan)
  return HeldOut(precision, recall, tp, predicted, folds)
