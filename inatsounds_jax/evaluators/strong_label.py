"""Strong-label evaluation: every audible species, per window and per file.

The library's stand-in for the fully annotated test sets of the Merlin L48
study (arXiv:2511.00252, s.4: mAP against full labels) and the strongly
labelled soundscapes the iNatSounds paper transfers to (Chasmai et al.
2025, s.5.2). It needs records with strong labels (the synthetic corpus):
a window's truth is every species with a call overlapping it, a file's is
every species audible in it. On the L48 clips (each clip a window, each
asset a file) a window's truth is its labels, and window mAP counts only
the fully annotated clips, as the benchmark does (its test metric); a
file's truth is every species present in any of its clips.

Scores are per-class probabilities of the model's logits (`scores`:
"sigmoid", for multilabel heads, or "softmax"); a file's score is the
maximum over its windows. With a geographic prior, species outside the
recording's range get the window's lowest logit first, and results are
reported both ways. AP per class is `metrics.per_class_ap_and_best_f1`
(scikit-learn's step-wise AP); classes with no positive in the split are
left out of the mean (scikit-learn would score them 0).

Options (`config.evals.<name>`): `split`; `geo_prior`, `geo_threshold`,
`min_prior_coverage` as for `file_level`; `scores`; `soundscapes`: a set
of annotated recordings to evaluate on instead of the run's dataset (the
fields of `tfds_builders/soundscapes`: `audio`, `annotations`,
`species_map`, `chunk_seconds`, ...; none: its synthetic soundscapes,
sizes as fields), built on first use into the run's data dir with its
species mapped onto the run's labels (split "test": one example per
chunk, and `file_map` pools each whole recording):

    config.evals.soundscapes = {
        "type": "strong_label", "split": "test", "every_epochs": 0,
        "soundscapes": {"audio": "DIR/recordings",
                        "annotations": "DIR/tables",
                        "species_map": "DIR/species_map.csv"}}

`bootstrap`: resamples (0: none) of a percentile bootstrap over recordings
(`metrics.bootstrap_over_recordings`: windows of one recording are not
independent, so recordings are resampled, not windows) giving each mAP a
95 % interval, in the summary (`interval`: low, high, std) and the text.
`save_rows`: an option of every evaluation (`evaluators.common`).

Rows (`EvalOutput.rows`, for comparing two runs on the same resamples,
`inatsounds_jax.compare`): "<view>/window" (the annotated windows) and
"<view>/file", each row's scores and positives.

Metrics: `<view>/window_map`, `<view>/file_map` for view no_prior|prior.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import os

import jax
import numpy as np
import tensorflow_datasets as tfds

from inatsounds_jax import data
from inatsounds_jax import input_pipeline
from inatsounds_jax import metrics as metrics_lib
from inatsounds_jax import registry
from inatsounds_jax import scored_rows
from inatsounds_jax.evaluators import common
from inatsounds_jax.geo import prior as prior_lib

SCORES = {"sigmoid": jax.nn.sigmoid,
          "softmax": lambda x: jax.nn.softmax(x, axis=-1)}


def mean_ap(scores: np.ndarray, positives: np.ndarray) -> dict:
  """mAP over the classes with a positive, and AP per class (NaN without)."""
  ap, _ = metrics_lib.per_class_ap_and_best_f1(
      np.asarray(scores, np.float64), np.asarray(positives, bool))
  present = ~np.isnan(ap)
  return {"map": float(ap[present].mean()) if present.any() else float("nan"),
          "num_classes": int(present.sum()), "per_class_ap": ap}


def row_metrics(key: str) -> scored_rows.RowMetrics:
  """`<key>_map` of rows `key` ("<view>/window" or "<view>/file"):
  (scores, positives) -> {name: mAP}."""
  return lambda scores, positives: {f"{key}_map": mean_ap(scores,
                                                          positives)["map"]}


def soundscape_records(context: common.EvalContext, fields: dict
                       ) -> tfds.core.DatasetBuilder:
  """The soundscape set of `fields`, prepared (by process 0 first) next to
  the run's records, labelled with the run's labels.

  Raises:
    registry.ConfigError: an unknown field, missing files, or records
      whose labels are not the run's.
  """
  rows = data.class_table(context.builder) or [
      {"species": name} for name in context.label_names]
  labels = tuple((row["species"], row.get("common_name") or "")
                 for row in rows)
  try:
    built = data.prepared_by_process_zero(lambda: data.prepare(
        data.SOUNDSCAPES, data_dir=os.fspath(context.builder.data_dir_root),
        labels=labels, **fields))
  except ValueError as e:
    raise registry.ConfigError(f"soundscapes: {e}") from None
  if tuple(built.info.features["label"].names) != context.label_names:
    raise registry.ConfigError(
        f"soundscapes: the records in {built.data_path} are labelled with "
        "other labels than the run's")
  return built


class Evaluator:
  """Window- and file-level mAP against strong labels (module docstring)."""

  def __init__(self, context: common.EvalContext, *, split: str,
               geo_prior: str = "", geo_threshold: float = 0.1,
               min_prior_coverage: float = 0.5, scores: str = "sigmoid",
               soundscapes: Mapping | None = None, bootstrap: int = 0):
    if soundscapes is not None:
      context = dataclasses.replace(
          context, builder=soundscape_records(context, dict(soundscapes)))
    splits = context.builder.info.splits
    if split not in splits:
      raise registry.ConfigError(
          f"split {split!r} is not in the dataset; it has {sorted(splits)}")
    sources = data.label_sources(context.builder)
    if not (sources["strong_labels"] or sources["label_masks"]):
      raise registry.ConfigError(
          f"the strong_label evaluation needs strong labels, and the records "
          f"in {context.builder.data_path} have none: use the synthetic "
          "corpus (dataset='synthetic'), whose strong_labels.json the "
          "builder turns into features, L48 (dataset='l48'), or annotated "
          "soundscapes (the option soundscapes)")
    if scores not in SCORES:
      raise registry.ConfigError(
          f"scores {scores!r}: choose from {sorted(SCORES)}")
    self.context, self.split, self.threshold = context, split, geo_threshold
    self.bootstrap = common.bootstrap_resamples(bootstrap)
    self.squash = SCORES[scores]
    self.prior = context.priors(geo_prior, min_prior_coverage)
    self.views = ("no_prior",) if self.prior is None else ("no_prior",
                                                           "prior")
    self.metric_names = tuple(f"{view}/{level}_map" for view in self.views
                              for level in ("window", "file"))
    self.row_keys = tuple(f"{view}/{level}" for view in self.views
                          for level in ("window", "file"))

  def _window_scores(self, predict: common.PredictFn, batches) -> dict:
    """Every valid window's scores per view, truth and recording id."""
    windows = {view: [] for view in self.views}
    window_truth, recording, annotated = [], [], []
    for batch in common.in_step_with_other_processes(batches):
      # Images (L48) have no location: the model sees it unknown.
      logits = np.asarray(predict(input_pipeline.model_input(batch),
                                  batch.get("latitude"),
                                  batch.get("longitude")), np.float64)
      valid = batch["mask"]
      views = {"no_prior": logits}
      if self.prior is not None:
        keep = self.prior.mask(batch["latitude"], batch["longitude"],
                               self.threshold)
        views["prior"] = prior_lib.lowest_logit_mask(logits, keep)
      for view in self.views:
        windows[view].append(np.asarray(self.squash(views[view][valid])))
      window_truth.append(batch["audible_in_window"][valid])
      recording.append(batch["recording_id"][valid])
      annotated.append(batch["annotated"][valid])
    return common.rows_of_all_processes(
        {"truth": np.concatenate(window_truth),
         "recording": np.concatenate(recording),
         "annotated": np.concatenate(annotated),
         **{view: np.concatenate(v) for view, v in windows.items()}})

  def run(self, predict: common.PredictFn) -> common.EvalOutput:
    c = self.context
    rows = self._window_scores(predict, tfds.as_numpy(
        input_pipeline.eval_dataset(c.builder, self.split, c.batch_size,
                                    c.windows)))
    files, file_of = np.unique(rows["recording"], return_inverse=True)
    file_truth = np.zeros((len(files), rows["truth"].shape[1]), np.uint8)
    np.maximum.at(file_truth, file_of, rows["truth"])
    result, metrics, lines, scored = {}, {}, [], {}
    for view in self.views:
      file_scores = np.full(file_truth.shape, -np.inf)
      np.maximum.at(file_scores, file_of, rows[view])
      known = rows["annotated"]
      # Per level: (recording of each row, scores, truth).
      level_rows = {"window": (rows["recording"][known], rows[view][known],
                               rows["truth"][known]),
                    "file": (files, file_scores, file_truth)}
      result[view] = {level: mean_ap(*inputs[1:])
                      for level, inputs in level_rows.items()}
      texts = []
      for level, m in result[view].items():
        key = f"{view}/{level}"
        scored[key] = scored_rows.ScoredRows(
            __name__, key, *level_rows[level], np.asarray(c.label_names))
        metrics[f"{key}_map"] = m["map"]
        texts.append(f"{level} mAP {m['map']:.3f}")
        if self.bootstrap:
          interval = metrics_lib.bootstrap_over_recordings(
              lambda s, t: mean_ap(s, t)["map"], *level_rows[level],
              num_samples=self.bootstrap)
          m["interval"] = {"low": interval.low, "high": interval.high,
                           "std": interval.std,
                           "num_samples": self.bootstrap}
          texts[-1] += f" [{interval.low:.3f}, {interval.high:.3f}]"
      lines.append(f"{self.split:10s} strong {view:8s} " + " ".join(texts))
    summary = {view: {level: {"map": m["map"],
                              "num_classes": m["num_classes"],
                              "per_class_ap": {
                                  c.label_names[i]: float(ap) for i, ap in
                                  enumerate(m["per_class_ap"])
                                  if not np.isnan(ap)},
                              **({"interval": m["interval"]}
                                 if "interval" in m else {})}
                      for level, m in levels.items()}
               for view, levels in result.items()}
    summary["num_windows"] = int(len(rows["truth"]))
    summary["num_annotated_windows"] = int(rows["annotated"].sum())
    summary["num_files"] = int(len(files))
    return common.EvalOutput(metrics=metrics, summary=summary,
                             text="\n".join(lines), rows=scored)
