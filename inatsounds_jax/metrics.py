"""File-level metrics of the iNatSounds benchmark (Chasmai et al. 2025).

All metrics are averaged over the classes present in the evaluated split
(the "eval species"), each class counting once however many files it has:

- class-averaged top-1 / top-5: per-class accuracy, then the mean;
- mAP: mean over classes of average precision, as scikit-learn defines it
  (step-wise, ties in score share one threshold);
- mF1: mean over classes of the best F1 along that class's precision-recall
  curve (each class its own threshold).

Everything is vectorised over classes: one sort of the score matrix, no
Python loop over 5,569 classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def topk_hits(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
  """Whether each file's label is among its k best classes.

  Ties are broken towards the lower class index, as `np.argmax` does.
  """
  true = scores[np.arange(len(labels)), labels][:, None]
  index = np.arange(scores.shape[1])[None, :]
  ahead = (scores > true) | ((scores == true) & (index < labels[:, None]))
  return ahead.sum(axis=1) < k


def per_class_ap_and_best_f1(scores: np.ndarray, positives: np.ndarray
                             ) -> tuple[np.ndarray, np.ndarray]:
  """Average precision and best F1 of every column.

  Args:
    scores: `[files, classes]`.
    positives: bool `[files, classes]`.

  Returns:
    (AP, best F1), each `[classes]`; NaN for a class without positives.
  """
  order = np.argsort(-scores, axis=0, kind="stable")
  sorted_scores = np.take_along_axis(scores, order, axis=0)
  tp = np.cumsum(np.take_along_axis(positives, order, axis=0), axis=0)
  num_pos = tp[-1].astype(np.float64)
  # A threshold sits at the last file of each run of tied scores.
  is_threshold = np.ones_like(sorted_scores, dtype=bool)
  is_threshold[:-1] = sorted_scores[:-1] != sorted_scores[1:]
  tp_at = np.where(is_threshold, tp, 0)
  # Positives counted at the previous threshold (tp never decreases).
  tp_before = np.zeros_like(tp)
  tp_before[1:] = np.maximum.accumulate(tp_at, axis=0)[:-1]
  predicted = np.arange(1, len(scores) + 1)[:, None]
  with np.errstate(invalid="ignore", divide="ignore"):
    precision = tp / predicted
    ap = np.sum(np.where(is_threshold, (tp - tp_before) * precision, 0.0),
                axis=0) / num_pos
    f1 = np.where(is_threshold, 2.0 * tp / (predicted + num_pos), 0.0)
  best_f1 = f1.max(axis=0)
  missing = num_pos == 0
  ap[missing] = np.nan
  best_f1 = np.where(missing, np.nan, best_f1)
  return ap, best_f1


def file_level_metrics(scores, labels, classes: Sequence[int] | None = None,
                       groups: Sequence[str] | None = None) -> dict:
  """Class-averaged top-1 and top-5, mAP and mF1 over eval species.

  Args:
    scores: `[files, classes]` file-level scores (e.g. mean of window
      softmaxes). Any monotone scale works; only order matters.
    labels: int `[files]`, the annotated class of each file.
    classes: the classes to average over; default: those present in
      `labels`. A listed class with no file is left out of every mean.
    groups: optional name per class (e.g. supercategory) for a breakdown.

  Returns:
    {"top1", "top5", "map", "mf1", "num_classes", "num_files",
     "per_class": {"class", "count", "top1", "top5", "ap", "f1"},
     "groups": {name: {"top1", "top5", "map", "mf1", "num_classes"}}}.
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
  if groups is not None:
    group_of = np.asarray(groups)[classes]
    result["groups"] = {str(g): summary(group_of == g)
                        for g in sorted(set(group_of.tolist()))}
  return result
