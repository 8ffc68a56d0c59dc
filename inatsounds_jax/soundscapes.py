"""Soundscape evaluation: a classifier judged on strongly annotated audio.

The iNatSounds paper's downstream protocol (Chasmai et al. 2025, s.5.2):
models trained on weak, single-species file labels are scored on
soundscapes whose calls are annotated in time (Powdermill, SSW), as
BirdSet (Rauch et al., arXiv:2403.10380), Perch and BirdNET-Analyzer's
evaluation score them. `annotations.py` reads the truth and `metrics.py`
holds every metric; this module joins them to scores and writes the
report. The command is `python -m inatsounds_jax.evaluate`.

Scores (`Scores`), one row per window of every annotated recording, come
from one of two sources:

- A model (`score_with_predictor`): `inference.Predictor.stream` classifies
  the annotated recordings window by window (the dense evaluation layout at
  the hop); of each chunk only the scored classes' columns are kept, with
  the window's best class over every label (for top-1), so memory is flat
  in recording length: no `windows x labels` array of a recording exists.
- Prediction tables (`score_predictions`): a folder that
  `inatsounds_jax.predict` or BirdNET-Analyzer wrote, found and read by
  `tables.read_predictions` (which formats, columns and file names it
  knows is said there), so BirdNET's output and ours are judged on the
  same annotations. The label list is the union of the species the tables
  name. A table's recording is the one its file name names, else the one each
  row's file column names. The windows are the rows' own windows (ends
  clipped to the recording), plus the windows no row shows, on the grid of
  the table's window length and hop (given, else from the prediction
  folder's `settings.json`, else the most common row length and the
  smallest step between the starts of full-length windows), anchored on the
  rows: from the first window starting after minus half a hop to the first
  reaching the recording's end, 0 s where a recording has no row. A
  (window, species) with no row scores 0: tables hold only detections above
  their threshold, so AP and AUROC are computed on truncated scores
  (`metrics.json` says whether the folder's settings.json shows complete
  scores: `--min_confidence=0`, no top-k, species list or geo filter).
  BirdNET's `nocall` rows (its placeholder for a recording without
  detections) are no species.

The scored classes are the labels of the annotated species present in the
annotations (`annotations.map_species`); labels absent from the
annotations are not scored (counted), annotated species that no label
matches are listed, kept out of every class mean and never dropped
silently: a window where such a species is heard stays a negative for
every scored class it does not hold, and is left out of top-1 (its single
right answer is unknown).

Views. Without a prior, one view, `no_prior`. With a geographic prior
(`geo_prior` and a location per recording; for prediction tables too, so
BirdNET's output can be judged with the library's range model), a second
view `prior`: species whose prior presence at the recording's location is
below
`Settings.geo_threshold` (0.1, as the library's file-level evaluator) score
0 there, as BirdNET's location filter removes them; a recording without a
location, and species the range model does not know, keep their scores
(`geo.prior.GeoPrior.mask`). Probabilities are not renormalised: each
species' ranking is what the filter leaves of it.

Levels (`evaluate`), each with every view:

- `window`: truth by `annotations.overlap_truth` (`min_overlap`);
- `file` (`segment_seconds` None, the paper's file-level protocol) or
  `segment` (consecutive `segment_seconds` segments, as BirdSet's 5-s test
  segments): truth by `annotations.segment_truth`, scores pooled by max over
  the windows overlapping each segment (by more than nothing); the pooled
  top-1 is the best class of the window with the highest best score.

Metrics per level and view: per-species AP and AUROC (scikit-learn's
definitions, `metrics.per_class_ap_and_best_f1`, `per_class_auroc`), their
class means over species with a positive (cmAP, cmAUROC: Perch's and
BirdSet's class mean, `metrics.class_mean`), mF1 (the mean best F1), top-1
on rows where exactly one scored species and no unknown one is present
(`metrics.single_label_top1`, the best class over every label), and
percentile bootstrap intervals of cmAP and cmAUROC resampling whole
recordings (`metrics.bootstrap_over_recordings`: windows of one recording
are not independent). Per species, on the window level of the last view
(the prior's where there is one: the scores `predict --geo_filter` keeps):
the threshold reaching `target_precision` and the one maximising F1
(`metrics.threshold_at_precision`, `threshold_at_best_f1`) with the
precision, recall and positive windows behind them, and the precision and
recall the same rule reaches on recordings it was not fitted on
(`metrics.cross_fitted_thresholds`, folds of recordings): the fitted
precision is optimistic by construction, the held-out one is what a user
can expect on new recordings like these; calibration
(`metrics.reliability`, pooled over every (window, scored species) cell
and per species) on the `no_prior` window scores.

Outputs (`write_outputs`):

- `metrics.json`: every metric with its definition, the views, counts,
  the intervals, the scores' source and the settings; NaN is null.
- `per_species.csv`: one row per scored species: `species` (the label),
  `common_name`, `annotated_as` (the names the annotations give it),
  `events`, `positive_windows`, `positive_<level>s`, then per view
  `window_ap`, `window_auroc`, `window_best_f1`, `<level>_ap`,
  `<level>_auroc` (prefixed `prior_` for the prior's view), then
  `threshold`, `threshold_rule` (as in thresholds.csv),
  `calibration_error` and `status`; then one row per annotated species no
  label matches (`status` says why; no metrics).
- `thresholds.csv`: the per-species thresholds, in a form a user can edit
  and meant for `predict --thresholds=FILE`. Columns: `species` (the label's
  scientific name), `threshold` (a window's probability at or above it is
  a detection; empty: none found, use --min_confidence), then informative
  columns `common_name`, `rule` (`precision` where the target precision
  was reached, else `best_f1`), `precision`, `recall`, `f1`,
  `true_positives`, `positive_windows` (all at `threshold`, on the
  evaluation's windows), `target_precision`, `precision_threshold`
  (empty where the target is not reached), `best_f1_threshold`, `view`,
  `held_out_precision`, `held_out_recall` (the rule fitted on the other
  folds' recordings, judged on each fold's; empty with one recording).
  Labels not in the file keep --min_confidence.
- `mapping.tsv` (`annotations.write_mapping_report`), `problems.tsv`
  (`annotations.write_problems`: annotation problems, damaged or missing
  prediction tables and rows, recordings that fail to decode),
  `precision_recall.png` (`precision_recall_prior.png`: window level,
  pooled and per species) and `calibration.png`.
- `rows.npz` (`scored_rows`): every level and view's rows ("<level>/<view>",
  e.g. "window/no_prior", "file/prior": the recording's path, the scores
  of the scored species, the truth), so that two evaluations of the same
  annotated recordings can be compared on the same resampled recordings:
  `python -m inatsounds_jax.compare --a=OUT_A --b=OUT_B` (cmAP and
  cmAUROC; two models compare where they scored the same species).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import functools
import math
import os
import sys
from collections.abc import Callable, Sequence

import numpy as np
import tqdm

import inatsounds_jax
from inatsounds_jax import annotations as annotations_lib
from inatsounds_jax import audio
from inatsounds_jax import inference
from inatsounds_jax import metrics as metrics_lib
from inatsounds_jax import plots
from inatsounds_jax import scored_rows
from inatsounds_jax import storage
from inatsounds_jax import tables
from inatsounds_jax.geo import prior as prior_lib

NO_PRIOR, PRIOR = "no_prior", "prior"
METRICS_FILE = "metrics.json"
PER_SPECIES_FILE = "per_species.csv"
THRESHOLDS_FILE = "thresholds.csv"
MAPPING_FILE = "mapping.tsv"
PROBLEMS_FILE = "problems.tsv"
ROWS_FILE = "rows.npz"
CALIBRATION_PLOT = "calibration.png"
THRESHOLD_COLUMNS = ("species", "threshold", "common_name", "rule",
                     "precision", "recall", "f1", "true_positives",
                     "positive_windows", "target_precision",
                     "precision_threshold", "best_f1_threshold", "view",
                     "held_out_precision", "held_out_recall")
# Times in tables are written to 4 decimals (tables.py); windows whose
# times agree to this are one window.
_TIME_TOLERANCE_S = tables.TIME_TOLERANCE_S
_EPSILON_S = annotations_lib.TIME_EPSILON_S


class NothingToEvaluate(inference.InputError):
  """No recording or no species could be scored (reported in one line)."""


@dataclasses.dataclass(frozen=True)
class Settings:
  """How scores are judged (the module docstring names every rule).

  Attributes:
    min_overlap: `annotations.overlap_truth`'s fraction, in [0, 1].
    segment_seconds: segment length; None: whole recordings (file level).
    target_precision: the per-species threshold's precision, in (0, 1].
    bootstrap: resamples of recordings for the intervals (0: none).
    interval_level: the intervals' coverage.
    seed: the bootstrap's seed.
    calibration_bins: bins on [0, 1] of the reliability diagram.
    threshold_folds: folds of recordings for the held-out check of the
      thresholds (fewer where there are fewer recordings).
    geo_threshold: prior presence below which a species scores 0 (the
      `prior` view).
  """
  min_overlap: float = 0.0
  segment_seconds: float | None = None
  target_precision: float = 0.9
  bootstrap: int = 1000
  interval_level: float = 0.95
  seed: int = 0
  calibration_bins: int = 10
  threshold_folds: int = 5
  geo_threshold: float = 0.1

  @property
  def level(self) -> str:
    """The pooled level's name: `file`, or `segment` with segments."""
    return "file" if self.segment_seconds is None else "segment"

  def check(self) -> None:
    """Raises `inference.InputError` naming each value out of range."""
    bad = []
    if not 0.0 <= self.min_overlap <= 1.0:
      bad.append(f"min_overlap {self.min_overlap} is not in [0, 1]")
    if self.segment_seconds is not None and not self.segment_seconds > 0:
      bad.append(f"segment_seconds {self.segment_seconds} is not positive")
    if not 0.0 < self.target_precision <= 1.0:
      bad.append(f"target_precision {self.target_precision} is not in "
                 "(0, 1]")
    if self.bootstrap < 0 or self.bootstrap == 1:
      bad.append(f"bootstrap {self.bootstrap}: give 0 (none) or 2 or more "
                 "resamples")
    if not 0.0 < self.interval_level < 1.0:
      bad.append(f"interval_level {self.interval_level} is not in (0, 1)")
    if self.calibration_bins < 1:
      bad.append(f"calibration_bins {self.calibration_bins} is below 1")
    if self.threshold_folds < 2:
      bad.append(f"threshold_folds {self.threshold_folds} is below 2")
    if bad:
      raise inference.InputError("; ".join(bad))


# ---------------------------------------------------------------------------
# Scores.
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class ViewScores:
  """One view of a recording's windows.

  Attributes:
    scores: `[windows, scored]` the scored classes' probabilities.
    top1: `[windows]` the best label over every label (-1: none scored).
    top1_score: `[windows]` its probability.
  """
  scores: np.ndarray
  top1: np.ndarray
  top1_score: np.ndarray

  @classmethod
  def of(cls, probabilities: np.ndarray, scored: np.ndarray) -> ViewScores:
    """The view of `[windows, labels]` probabilities."""
    top1 = np.argmax(probabilities, axis=1)
    return cls(probabilities[:, scored].astype(np.float32),
               top1.astype(np.int64),
               probabilities[np.arange(len(top1)), top1])

  @classmethod
  def concatenate(cls, pieces: Sequence[ViewScores]) -> ViewScores:
    return cls(*(np.concatenate([getattr(p, f.name) for p in pieces])
                 for f in dataclasses.fields(cls)))


@dataclasses.dataclass
class RecordingScores:
  """An annotated recording's windows and their scores.

  Attributes:
    recording: its path relative to the audio input.
    duration_s: its length (decoded, or the header's in prediction-table
      mode).
    start_s, end_s: `[windows]`, by start.
    views: view name -> its scores.
    shown: `[windows]` bool: the window had a row in the tables (all True
      for a model).
  """
  recording: str
  duration_s: float
  start_s: np.ndarray
  end_s: np.ndarray
  views: dict[str, ViewScores]
  shown: np.ndarray | None = None


@dataclasses.dataclass
class Scores:
  """Every annotated recording's scores, ready for `evaluate`.

  Attributes:
    labels: the label list (`{"species", "common_name"}` rows): a model's,
      or the species the prediction tables name.
    scored: int `[scored]` the label index of each score column.
    views: the view names, `no_prior` first.
    recordings: the recordings scored, in input order.
    problems: recordings not scored (decoding failed, no table) and rows
      not read, as problems.
    source: what made the scores (for metrics.json).
    notes: sentences for the report.
  """
  labels: list[dict]
  scored: np.ndarray
  views: tuple[str, ...]
  recordings: list[RecordingScores]
  problems: list[annotations_lib.Problem]
  source: dict
  notes: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Recording:
  """An annotated recording to classify: where it is, where it was made."""
  path: str
  relative: str
  latitude: float = math.nan
  longitude: float = math.nan


def _progress_bar(total_s: float, enabled: bool) -> tqdm.tqdm:
  """A bar over hours of audio, as predict's."""
  return tqdm.tqdm(total=total_s / 3600, unit="h audio", desc="evaluate",
                   disable=not enabled,
                   bar_format="{l_bar}{bar}| {n:.3f}/{total:.3f} h audio "
                   "[{elapsed}<{remaining}] {postfix}")


def score_with_predictor(predictor: inference.Predictor,
                         recordings: Sequence[Recording],
                         scored: Sequence[int], *,
                         geo_threshold: float = 0.1,
                         durations_s: Sequence[float] | None = None,
                         progress_bar: bool = False) -> Scores:
  """Classifies the recordings, keeping the scored classes' columns.

  Args:
    predictor: the model (its prior, if it has one, makes the `prior` view).
    recordings: the annotated recordings.
    scored: label indices to keep.
    geo_threshold: the `prior` view's threshold.
    durations_s: each recording's duration, for the progress bar only.
    progress_bar: show a bar over hours of audio on stderr.

  Returns:
    Scores; a recording that fails to decode is a problem, not scored.
  """
  scored = np.asarray(scored, np.int64)
  views = (NO_PRIOR, PRIOR) if predictor.prior is not None else (NO_PRIOR,)
  out, problems = [], []
  pieces: dict[str, list[ViewScores]] = {}
  times: list[tuple[np.ndarray, np.ndarray]] = []
  total = sum(d for d in durations_s or () if math.isfinite(d))
  with _progress_bar(total, progress_bar) as bar:
    covered = 0.0
    for event in predictor.stream([(r.path, r.latitude, r.longitude)
                                   for r in recordings]):
      recording = recordings[event.index]
      if event.kind == inference.BEGIN:  # A second BEGIN voids the first.
        pieces, times, covered = {v: [] for v in views}, [], 0.0
      elif event.kind == inference.WINDOWS:
        table = event.table
        times.append((table.start_s, table.end_s))
        p = table.probabilities
        pieces[NO_PRIOR].append(ViewScores.of(p, scored))
        if PRIOR in views:
          drop = table.geo_prior < geo_threshold  # NaN: kept.
          pieces[PRIOR].append(ViewScores.of(np.where(drop, 0.0, p),
                                             scored))
        end = float(table.end_s[-1])
        bar.update(min(max(0.0, end - covered) / 3600, bar.total - bar.n))
        covered = max(covered, end)
      elif event.kind == inference.END:
        out.append(RecordingScores(
            recording.relative, table.duration_s,
            np.concatenate([t[0] for t in times]),
            np.concatenate([t[1] for t in times]),
            {v: ViewScores.concatenate(pieces[v]) for v in views}))
      else:
        problems.append(annotations_lib.Problem(
            recording.relative, None, f"cannot be decoded, left out of the "
            f"evaluation: {event.error}", "decoding failed"))
        bar.write(f"error: {event.error}", file=sys.stderr)
      if event.kind in (inference.END, inference.ERROR):
        bar.set_postfix_str(f"files {event.index + 1}/{len(recordings)}")
  fe = predictor.windows.frontend
  source = {
      "mode": "model",
      "model": predictor.model_path,
      "labels": len(predictor.labels),
      "label_list_sha256": inference.label_digest(predictor.labels),
      "activation": predictor.activation,
      "window_seconds": predictor.windows.window_samples / fe.sample_rate,
      "hop_seconds": predictor.hop_seconds,
      "geo_prior": predictor.prior is not None,
  }
  return Scores(list(predictor.labels), scored, views, out, problems, source)


# ---------------------------------------------------------------------------
# Prediction tables.
# ---------------------------------------------------------------------------

class _RowWindows:
  """One recording's windows as rows name them: per view, scores and the
  best label (the `prior` view: over the labels `keep` keeps)."""

  def __init__(self, num_scored: int, keep: np.ndarray | None = None):
    self.num_scored, self.keep = num_scored, keep
    self.views = (NO_PRIOR,) if keep is None else (NO_PRIOR, PRIOR)
    self.index: dict[tuple[float, float], int] = {}
    self.times: list[tuple[float, float]] = []
    self.scores = {v: [] for v in self.views}
    self.best = {v: [] for v in self.views}  # [label index, confidence]

  def add(self, row: tables.PredictionRow, label: int, column: int) -> None:
    key = (round(row.start_s, 3), round(row.end_s, 3))
    i = self.index.get(key)
    if i is None:
      i = self.index[key] = len(self.times)
      self.times.append((row.start_s, row.end_s))
      for v in self.views:
        self.scores[v].append(np.zeros(self.num_scored))
        self.best[v].append([-1, -1.0])
    for v in self.views:
      if v == PRIOR and not self.keep[label]:
        continue
      if column >= 0:
        self.scores[v][i][column] = max(self.scores[v][i][column],
                                        row.confidence)
      if row.confidence > self.best[v][i][1]:
        self.best[v][i] = [label, row.confidence]


def grid_windows(start_s: np.ndarray, end_s: np.ndarray, duration_s: float,
                 window_s: float, hop_s: float
                 ) -> tuple[np.ndarray, np.ndarray]:
  """(start, end) of the windows a table does not show (module docstring).

  The rows' windows anchor the grid: a window clipped at the recording's
  start stands for one starting `window_s` before its end. Between two
  anchors the hops that fit are filled; before the first, windows down to
  a start above minus half a hop; after the last, windows until one
  reaches `duration_s`. With no row, the grid starts at 0. Times are
  clipped to the recording.
  """
  start_s = np.asarray(start_s, np.float64)
  end_s = np.asarray(end_s, np.float64)
  clipped = ((start_s <= _TIME_TOLERANCE_S)
             & (end_s - start_s < window_s - _TIME_TOLERANCE_S))
  anchors = np.unique(np.round(np.where(clipped, end_s - window_s, start_s),
                               6))
  new = []
  if not len(anchors):
    anchors = np.zeros(1)
    new.append(anchors)
  before = int(math.floor((anchors[0] + hop_s / 2) / hop_s - 1e-9))
  new.append(anchors[0] - hop_s * np.arange(1, max(before, 0) + 1))
  for a, b in zip(anchors[:-1], anchors[1:]):
    steps = int(round((b - a) / hop_s))
    new.append(a + hop_s * np.arange(1, max(steps, 1)))
  last = anchors[-1]
  if last + window_s < duration_s - _TIME_TOLERANCE_S:
    after = int(math.ceil((duration_s - _TIME_TOLERANCE_S - window_s - last)
                          / hop_s))
    new.append(last + hop_s * np.arange(1, after + 1))
  starts = np.sort(np.concatenate(new))
  start = np.clip(starts, 0.0, duration_s)
  end = np.clip(starts + window_s, 0.0, duration_s)
  keep = end - start > _TIME_TOLERANCE_S
  return start[keep], end[keep]


def score_predictions(predictions: tables.PredictionTables,
                      recordings: Sequence[str], scored: Sequence[int],
                      keep: dict[str, np.ndarray] | None = None) -> Scores:
  """The annotated recordings' windows from the tables' rows.

  Args:
    predictions: from `tables.read_predictions`.
    recordings: relative paths of the recordings to score (a recording
      without a table is a problem, not scored).
    scored: label indices (into `predictions.labels`) to keep.
    keep: per recording, bool `[labels]`: the labels a geographic prior
      keeps at its location (`GeoPrior.mask`); adds the `prior` view, where
      the other labels' rows score 0 and are never the best label. None:
      no prior.
  """
  scored = np.asarray(scored, np.int64)
  column_of = np.full(len(predictions.labels), -1, np.int64)
  column_of[scored] = np.arange(len(scored))
  label_of = {tables.species_key(row["species"]): i
              for i, row in enumerate(predictions.labels)}
  wanted = set(recordings)
  windows = {r: _RowWindows(len(scored), None if keep is None else keep[r])
             for r in recordings}
  has_table = set()
  problems = list(predictions.problems)
  reader = tables.PredictionRowReader(predictions.recording_index,
                                      predictions.durations_s,
                                      predictions.species_map)
  for table in predictions.tables:
    if table.recording is not None:
      if table.recording not in wanted:
        continue
      has_table.add(table.recording)
    for row in reader.rows(table, problems):
      if row.recording not in wanted:
        continue
      has_table.add(row.recording)
      label = label_of[tables.species_key(row.label)]
      windows[row.recording].add(row, label, int(column_of[label]))
  out = []
  for recording in recordings:
    if recording not in has_table:
      problems.append(annotations_lib.Problem(
          recording, None, f"has no prediction table in "
          f"{predictions.source} (a table named after it, or rows naming "
          "it): left out of the evaluation", "no prediction table"))
      continue
    out.append(_table_recording(recording, windows[recording], predictions))
  shown = sum(int(r.shown.sum()) for r in out)
  total = sum(len(r.shown) for r in out)
  notes = list(predictions.notes)
  notes.append(
      f"{total - shown} of {total} windows have no row in the tables and "
      "score 0 for every species; a (window, species) without a row scores "
      "0: " + ("settings.json shows every score was written"
               if predictions.complete else
               "tables hold only detections above their threshold, so AP "
               "and AUROC are computed on truncated scores"))
  if reader.no_calls:
    notes.append(f"{reader.no_calls} 'nocall' rows (BirdNET's placeholder "
                 "for a recording without detections) name no species")
  source = {
      "mode": "predictions",
      "predictions": os.path.abspath(predictions.source),
      "tables": len(predictions.tables),
      "labels": len(predictions.labels),
      "window_seconds": predictions.window_s,
      "window_seconds_from": predictions.window_from,
      "hop_seconds": predictions.hop_s,
      "hop_seconds_from": predictions.hop_from,
      "scores_complete": predictions.complete,
      "windows_with_rows": shown,
      "windows_without_rows": total - shown,
      "predict_settings": predictions.settings,
  }
  source["geo_prior"] = keep is not None
  views = (NO_PRIOR,) if keep is None else (NO_PRIOR, PRIOR)
  return Scores(list(predictions.labels), scored, views, out, problems,
                source, notes)


def _table_recording(recording: str, rows: _RowWindows,
                     predictions: tables.PredictionTables
                     ) -> RecordingScores:
  """A recording's windows: the rows' and the grid's, by start."""
  duration = predictions.durations_s[recording]
  k = rows.num_scored
  start = np.asarray([t[0] for t in rows.times], np.float64)
  end = np.asarray([t[1] for t in rows.times], np.float64)
  if math.isnan(duration):
    duration = float(end.max()) if len(end) else 0.0
  grid_start, grid_end = grid_windows(start, end, duration,
                                      predictions.window_s, predictions.hop_s)
  # Grid windows a row window already shows are not added.
  near = np.zeros(len(grid_start), bool)
  if len(start):
    order = np.argsort(start)
    at = np.clip(np.searchsorted(start[order], grid_start), 1, len(start))
    for candidate in (at - 1, np.minimum(at, len(start) - 1)):
      i = order[candidate]
      near |= ((np.abs(start[i] - grid_start) < predictions.hop_s / 2)
               & (np.abs(end[i] - grid_end) < predictions.hop_s / 2))
  grid_start, grid_end = grid_start[~near], grid_end[~near]
  all_start = np.concatenate([start, grid_start])
  all_end = np.concatenate([end, grid_end])
  order = np.lexsort((all_end, all_start))
  views = {}
  for v in rows.views:
    scores = np.concatenate([np.reshape(rows.scores[v], (len(start), k)),
                             np.zeros((len(grid_start), k))])
    best = np.asarray(rows.best[v] + [[-1, 0.0]] * len(grid_start),
                      np.float64).reshape(-1, 2)
    views[v] = ViewScores(scores[order], best[order, 0].astype(np.int64),
                          best[order, 1])
  shown = np.concatenate([np.ones(len(start), bool),
                          np.zeros(len(grid_start), bool)])[order]
  return RecordingScores(recording, duration, all_start[order],
                         all_end[order], views, shown)


# ---------------------------------------------------------------------------
# Truth and levels.
# ---------------------------------------------------------------------------

def _window_truth(events: annotations_lib.EventArrays, start: np.ndarray,
                  end: np.ndarray, num_columns: int, min_overlap: float
                  ) -> np.ndarray:
  """`overlap_truth`, window by window where the ends are out of order (a
  table of windows of several lengths)."""
  if not np.any(np.diff(end) < 0):
    return annotations_lib.overlap_truth(events, start, end, num_columns,
                                         min_overlap)
  return np.concatenate([
      annotations_lib.overlap_truth(events, start[i:i + 1], end[i:i + 1],
                                    num_columns, min_overlap)
      for i in range(len(start))]).reshape(len(start), num_columns)


def _pool(start: np.ndarray, end: np.ndarray, view: ViewScores,
          segment_start: np.ndarray, segment_end: np.ndarray) -> ViewScores:
  """Max over the windows overlapping each segment (by more than nothing);
  the best label of the window with the highest best score."""
  k = view.scores.shape[1]
  scores = np.zeros((len(segment_start), k), view.scores.dtype)
  top1 = np.full(len(segment_start), -1, np.int64)
  top1_score = np.zeros(len(segment_start))
  reach = np.maximum.accumulate(end) if len(end) else end
  first = np.searchsorted(reach, segment_start + _EPSILON_S, side="right")
  stop = np.searchsorted(start, segment_end - _EPSILON_S, side="left")
  for s, (a, b) in enumerate(zip(first, stop)):
    inside = np.arange(a, b)[end[a:b] > segment_start[s] + _EPSILON_S]
    if len(inside):
      scores[s] = view.scores[inside].max(axis=0)
      best = inside[np.argmax(view.top1_score[inside])]
      top1[s], top1_score[s] = view.top1[best], view.top1_score[best]
  return ViewScores(scores, top1, top1_score)


@dataclasses.dataclass
class Level:
  """Rows (windows or segments) of every recording, with truth and views.

  Attributes:
    name: `window`, `file` or `segment`.
    labels: int `[scored]` the label index of each column.
    recording: `[rows]` index of each row's recording.
    truth: bool `[rows, scored]`.
    unknown: bool `[rows]`: a species no label matches is present.
    views: view name -> the rows' scores.
  """
  name: str
  labels: np.ndarray
  recording: np.ndarray
  truth: np.ndarray
  unknown: np.ndarray
  views: dict[str, ViewScores]

  @property
  def single(self) -> np.ndarray:
    """`[rows]`: exactly one scored species and no unknown one."""
    return (self.truth.sum(axis=1) == 1) & ~self.unknown


def _levels(scores: Scores, annotations: annotations_lib.Annotations,
            mapping: annotations_lib.LabelMapping, settings: Settings
            ) -> tuple[Level, Level, np.ndarray]:
  """(window level, pooled level, events per scored column)."""
  k = len(scores.scored)
  # Model classes -> score columns; species no label matches -> column k
  # (the "unknown" flag); labels not scored -> ignored.
  column_of = np.full(mapping.num_classes + 1, -1, np.int64)
  column_of[scores.scored] = np.arange(k)
  column_of[-1] = k
  rows = {"window": collections.defaultdict(list),
          settings.level: collections.defaultdict(list)}
  events = np.zeros(k + 1, np.int64)
  for i, recording in enumerate(scores.recordings):
    arrays = annotations_lib.event_arrays(annotations, mapping,
                                          recording.recording)
    arrays = dataclasses.replace(arrays,
                                 class_index=column_of[arrays.class_index])
    counted = arrays.class_index[arrays.class_index >= 0]
    events += np.bincount(counted, minlength=k + 1)
    truth = _window_truth(arrays, recording.start_s, recording.end_s, k + 1,
                          settings.min_overlap)
    segment_start, segment_end, segment_truth = annotations_lib.segment_truth(
        arrays, recording.duration_s, settings.segment_seconds, k + 1,
        settings.min_overlap)
    for name, level_truth, views in (
        ("window", truth, recording.views),
        (settings.level, segment_truth,
         {v: _pool(recording.start_s, recording.end_s, view, segment_start,
                   segment_end) for v, view in recording.views.items()})):
      rows[name]["recording"].append(np.full(len(level_truth), i))
      rows[name]["truth"].append(level_truth)
      for v, view in views.items():
        rows[name][v].append(view)
  levels = []
  for name, parts in rows.items():
    truth = (np.concatenate(parts["truth"]) if parts["truth"]
             else np.zeros((0, k + 1), bool))
    levels.append(Level(
        name, scores.scored,
        np.concatenate(parts["recording"] or [np.zeros(0, int)]),
        truth[:, :k], truth[:, k],
        {v: ViewScores.concatenate(parts[v]) if parts[v] else
         ViewScores(np.zeros((0, k), np.float32), np.zeros(0, np.int64),
                    np.zeros(0)) for v in scores.views}))
  return levels[0], levels[1], events[:k]


# ---------------------------------------------------------------------------
# Metrics.
# ---------------------------------------------------------------------------

DEFINITIONS = {
    "cmap": "class-mean average precision: per species, scikit-learn's "
            "average_precision_score over the level's rows; mean over the "
            "species with at least one positive row (cmAP as Perch and "
            "BirdSet compute it)",
    "cmauroc": "class-mean area under the ROC curve (scikit-learn's "
               "roc_auc_score per species), over the species with a "
               "positive and a negative row",
    "mf1": "mean over species with a positive row of the best F1 along "
           "the species' precision-recall curve (the iNatSounds paper's "
           "mF1)",
    "top1": "fraction of rows holding exactly one scored species and no "
            "unknown one whose best class over every label is that species",
    "top1_class_averaged": "top1 per species, then the mean over species",
    "interval": "percentile bootstrap interval resampling whole recordings "
                "with replacement (metrics.bootstrap_over_recordings)",
    "window_truth": "a window holds a species when one of its events "
                    "overlaps the window by more than nothing and by at "
                    "least min_overlap times the shorter of the two",
    "pooling": "a segment's (file's) score for a species is the maximum "
               "over the windows overlapping it; its truth is the window "
               "rule applied to the segment",
    "prior": "view 'prior': species whose geographic prior at the "
             "recording's location is below geo_threshold score 0 (unknown "
             "location or species: scores kept)",
    "threshold_at_precision": "per species, the lowest threshold whose "
                              "window-level precision reaches "
                              "target_precision",
    "held_out": "thresholds.csv's rule fitted on the windows of all "
                "but one fold of recordings and applied to that fold's, "
                "true and predicted positives summed over the folds "
                "(metrics.cross_fitted_thresholds)",
    "threshold_at_best_f1": "per species, the threshold of the best "
                            "window-level F1",
    "calibration_error": "expected calibration error (Guo et al. 2017): "
                         "sum over equal-width bins of count / total x "
                         "|fraction positive - mean score|, every "
                         "(window, scored species) cell one prediction",
}


def _one_hot_top1(level: Level, view: ViewScores) -> tuple[np.ndarray, ...]:
  """(scores, positives) for `metrics.single_label_top1` with the best label
  over every label: column j is 1 where the best label is the j-th scored
  one, the last column 1 where it is none of them (never the truth)."""
  hits = view.top1[:, None] == level.labels[None, :]
  scores = np.concatenate([hits, ~hits.any(axis=1, keepdims=True)], axis=1)
  positives = np.concatenate([level.truth & level.single[:, None],
                              np.zeros((len(level.truth), 1), bool)], axis=1)
  return scores.astype(np.float32), positives


def _interval(metric: Callable, level: Level, scores: np.ndarray,
              settings: Settings) -> dict | None:
  if settings.bootstrap < 2 or not len(level.recording):
    return None
  b = metrics_lib.bootstrap_over_recordings(
      metric, level.recording, scores, level.truth,
      num_samples=settings.bootstrap, level=settings.interval_level,
      seed=settings.seed)
  return {"low": b.low, "high": b.high, "std": b.std, "level": b.level,
          "samples": b.num_samples, "valid_samples": b.num_valid}


def _cmap(scores, truth) -> float:
  return metrics_lib.class_mean_ap(scores, truth).value


def _cmauroc(scores, truth) -> float:
  return metrics_lib.class_mean(metrics_lib.per_class_auroc(scores, truth),
                                truth).value


def row_metrics(key: str) -> scored_rows.RowMetrics:
  """cmAP and cmAUROC of rows `key` ("<level>/<view>"), named
  `<key>/cmap` and `<key>/cmauroc`, as metrics.json computes them:
  (scores, truth) -> metrics."""
  return lambda scores, truth: {f"{key}/cmap": _cmap(scores, truth),
                                f"{key}/cmauroc": _cmauroc(scores, truth)}


def level_rows(evaluation: Evaluation) -> dict[str, scored_rows.ScoredRows]:
  """Every level and view's rows by "<level>/<view>", each row's recording
  named by its path (the same in any evaluation of the same audio), the
  columns by the scored species' names."""
  scores_of = evaluation.scores
  names = np.array([r.recording for r in scores_of.recordings], dtype=str)
  species = np.array([scores_of.labels[j]["species"]
                      for j in scores_of.scored], dtype=str)
  return {f"{level.name}/{view}": scored_rows.ScoredRows(
      __name__, f"{level.name}/{view}", names[level.recording],
      scores.scores, level.truth, species)
          for level in evaluation.levels
          for view, scores in level.views.items()}


@dataclasses.dataclass
class LevelMetrics:
  """One level and view: per-species arrays and the summary."""
  ap: np.ndarray
  auroc: np.ndarray
  best_f1: np.ndarray
  summary: dict


def level_metrics(level: Level, view: str, settings: Settings
                  ) -> LevelMetrics:
  """Every metric of one level and view (module docstring)."""
  scores, truth = level.views[view].scores, level.truth
  ap, f1 = metrics_lib.per_class_ap_and_best_f1(scores, truth)
  auroc = metrics_lib.per_class_auroc(scores, truth)
  cmap = metrics_lib.class_mean(ap, truth)
  cmauroc = metrics_lib.class_mean(auroc, truth)
  top1 = metrics_lib.single_label_top1(*_one_hot_top1(level,
                                                      level.views[view]))
  summary = {
      "cmap": cmap.value,
      "cmap_interval": _interval(_cmap, level, scores, settings),
      "cmauroc": cmauroc.value,
      "cmauroc_interval": _interval(_cmauroc, level, scores, settings),
      "mf1": metrics_lib.class_mean(f1, truth).value,
      "top1": top1.accuracy,
      "top1_class_averaged": top1.class_averaged,
      "top1_rows": top1.num_rows,
      "species_in_cmap": len(cmap.classes),
      "species_in_cmauroc": len(cmauroc.classes),
  }
  return LevelMetrics(ap, auroc, f1, summary)


@dataclasses.dataclass
class Evaluation:
  """What `evaluate` found: everything `write_outputs` writes.

  Attributes:
    metrics: the content of metrics.json.
    per_species: rows of per_species.csv.
    thresholds: rows of thresholds.csv.
    levels: the window and pooled levels (for plots).
    scores: the scores judged.
    mapping: the annotated species on the labels.
    problems: every problem (annotations, tables, recordings).
    reliability: the pooled reliability diagram (no_prior, window level).
  """
  metrics: dict
  per_species: list[dict]
  thresholds: list[dict]
  levels: tuple[Level, Level]
  scores: Scores
  mapping: annotations_lib.LabelMapping
  problems: list[annotations_lib.Problem]
  reliability: metrics_lib.Reliability | None


def evaluate(scores: Scores, annotations: annotations_lib.Annotations,
             mapping: annotations_lib.LabelMapping,
             settings: Settings = Settings(),
             problems: Sequence[annotations_lib.Problem] = (),
             run_settings: dict | None = None) -> Evaluation:
  """Judges `scores` against the annotations (module docstring).

  Args:
    scores: from `score_with_predictor` or `score_predictions`, over the
      labels `mapping` was made with.
    annotations: the truth.
    mapping: `annotations.map_species(annotations, scores.labels, ...)`.
    settings: how.
    problems: problems found before scoring (besides the annotations' and
      the scores' own).
    run_settings: the inputs, recorded in metrics.json.
  """
  settings.check()
  window, pooled, events = _levels(scores, annotations, mapping, settings)
  results = {level.name: {v: level_metrics(level, v, settings)
                          for v in scores.views}
             for level in (window, pooled)}
  view = scores.views[-1]
  window_scores = window.views[view].scores
  at_precision = metrics_lib.threshold_at_precision(
      window_scores, window.truth, settings.target_precision)
  at_f1 = metrics_lib.threshold_at_best_f1(window_scores, window.truth)
  held_out = None
  if len(np.unique(window.recording)) > 1:
    held_out = metrics_lib.cross_fitted_thresholds(
        functools.partial(_fitted_thresholds,
                          target=settings.target_precision),
        window_scores, window.truth, window.recording,
        settings.threshold_folds, settings.seed)
  reliability = per_class_reliability = None
  base = window.views[NO_PRIOR].scores
  if len(base) and base.min() >= 0 and base.max() <= 1:
    reliability = metrics_lib.reliability(base, window.truth,
                                          settings.calibration_bins)
    per_class_reliability = metrics_lib.reliability(
        base, window.truth, settings.calibration_bins, per_class=True)
  all_problems = (list(annotations.problems) + list(problems)
                  + list(scores.problems))
  thresholds = _threshold_rows(scores, at_precision, at_f1, held_out,
                               settings, view)
  per_species = _per_species_rows(scores, mapping, window, pooled, events,
                                  results, thresholds, per_class_reliability)
  metrics = _metrics_json(scores, annotations, mapping, settings, window,
                          pooled, events, results, reliability, thresholds,
                          all_problems, run_settings)
  return Evaluation(metrics, per_species, thresholds, (window, pooled),
                    scores, mapping, all_problems, reliability)


def _fitted_thresholds(scores: np.ndarray, truth: np.ndarray,
                       target: float) -> np.ndarray:
  """thresholds.csv's rule: the threshold reaching `target` precision,
  else the best F1's (NaN: neither)."""
  at_precision = metrics_lib.threshold_at_precision(scores, truth, target)
  at_f1 = metrics_lib.threshold_at_best_f1(scores, truth)
  return np.where(np.isnan(at_precision.threshold), at_f1.threshold,
                  at_precision.threshold)


def _threshold_rows(scores: Scores, at_precision, at_f1,
                    held_out: metrics_lib.HeldOut | None, settings: Settings,
                    view: str) -> list[dict]:
  nan = np.full(len(scores.scored), np.nan)
  held_precision = nan if held_out is None else held_out.precision
  held_recall = nan if held_out is None else held_out.recall
  rows = []
  for j, label in enumerate(scores.scored):
    reached = not math.isnan(at_precision.threshold[j])
    point = at_precision if reached else at_f1
    found = not math.isnan(point.threshold[j])
    rows.append({
        "species": scores.labels[label]["species"],
        "threshold": point.threshold[j] if found else None,
        "common_name": scores.labels[label].get("common_name", ""),
        "rule": ("precision" if reached else "best_f1") if found else "",
        "precision": point.precision[j], "recall": point.recall[j],
        "f1": point.f1[j], "true_positives": int(point.true_positives[j]),
        "positive_windows": int(point.num_positives[j]),
        "target_precision": settings.target_precision,
        "precision_threshold": at_precision.threshold[j],
        "best_f1_threshold": at_f1.threshold[j],
        "view": view,
        "held_out_precision": held_precision[j],
        "held_out_recall": held_recall[j],
    })
  return rows


def _per_species_rows(scores, mapping, window, pooled, events, results,
                      thresholds, per_class_reliability) -> list[dict]:
  written = collections.defaultdict(list)
  for s in mapping.species:
    if s.class_index is not None:
      written[s.class_index].append(s.written)
  rows = []
  order = np.lexsort((np.arange(len(events)), -window.truth.sum(axis=0),
                      -events))
  for j in order:
    label = scores.scored[j]
    row = {"species": scores.labels[label]["species"],
           "common_name": scores.labels[label].get("common_name", ""),
           "annotated_as": "; ".join(written[label]),
           "events": int(events[j]),
           "positive_windows": int(window.truth[:, j].sum()),
           f"positive_{pooled.name}s": int(pooled.truth[:, j].sum())}
    for view in scores.views:
      prefix = "" if view == NO_PRIOR else f"{view}_"
      for level in (window, pooled):
        m = results[level.name][view]
        row[f"{prefix}{level.name}_ap"] = m.ap[j]
        row[f"{prefix}{level.name}_auroc"] = m.auroc[j]
        if level is window:
          row[f"{prefix}window_best_f1"] = m.best_f1[j]
    row["threshold"] = thresholds[j]["threshold"]
    row["threshold_rule"] = thresholds[j]["rule"]
    row["calibration_error"] = (
        None if per_class_reliability is None
        else per_class_reliability.expected_calibration_error[j])
    row["status"] = ("scored" if row["positive_windows"] else
                     "scored, no positive window (out of the class means)")
    rows.append(row)
  for s in mapping.unknown:
    rows.append({"species": s.written, "annotated_as": s.written,
                 "events": s.events,
                 "status": f"not scored: {s.matched_by}"})
  return rows


def _operating_summary(thresholds: list[dict]) -> dict:
  rules = collections.Counter(t["rule"] for t in thresholds)
  reached = [t for t in thresholds if t["rule"] == "precision"]
  held = [t["held_out_precision"] for t in reached
          if not math.isnan(t["held_out_precision"])]
  return {"species": len(thresholds),
          "target_precision_reached": rules.get("precision", 0),
          "best_f1_instead": rules.get("best_f1", 0),
          "none": rules.get("", 0),
          # Of the species whose threshold reached the target: the mean
          # precision on held-out recordings, and how many keep the target.
          "held_out_mean_precision": (float(np.mean(held)) if held
                                      else None),
          "held_out_target_kept": sum(
              t["held_out_precision"] >= t["target_precision"]
              for t in reached)}


def _not_evaluated(annotations, evaluated: set[str],
                   problems: Sequence[annotations_lib.Problem]
                   ) -> list[dict]:
  """Annotated recordings left out, each with the problem that says why."""
  why = {}
  for p in problems:
    if p.row is None:
      why.setdefault(p.file, p.reason)
  return [{"recording": r, "reason": why.get(r, "")}
          for r in annotations.annotated if r not in evaluated]


def _metrics_json(scores, annotations, mapping, settings, window, pooled,
                  events, results, reliability, thresholds, problems,
                  run_settings) -> dict:
  evaluated = {r.recording for r in scores.recordings}
  unknown_events = sum(s.events for s in mapping.unknown)
  hours = sum(r.duration_s for r in scores.recordings) / 3600
  counts = {
      "recordings": len(annotations.annotated) + len(
          annotations.not_annotated),
      "annotated": len(annotations.annotated),
      "evaluated": len(evaluated),
      "not_evaluated": len(annotations.annotated) - len(evaluated),
      "not_annotated": len(annotations.not_annotated),
      "audio_hours": hours,
      "events": len(annotations.events),
      "events_scored": int(events.sum()),
      "events_of_unknown_species": unknown_events,
      "species_annotated": len(mapping.species),
      "species_scored": len(scores.scored),
      "species_unknown": len(mapping.unknown),
      "labels": len(scores.labels),
      "labels_not_annotated": len(scores.labels) - len(scores.scored),
      "problems": len(problems),
  }
  levels = {}
  for level in (window, pooled):
    levels[level.name] = {
        "rows": len(level.truth),
        "rows_with_a_species": int(level.truth.any(axis=1).sum()),
        "rows_with_an_unknown_species": int(level.unknown.sum()),
        "single_species_rows": int(level.single.sum()),
        **{view: m.summary for view, m in results[level.name].items()}}
  levels[pooled.name]["segment_seconds"] = settings.segment_seconds
  out = {
      "definitions": DEFINITIONS,
      "source": scores.source,
      "settings": {**dataclasses.asdict(settings), **(run_settings or {}),
                   "library_version": inatsounds_jax.__version__},
      "counts": counts,
      "views": list(scores.views),
      "levels": levels,
      "thresholds": {"view": scores.views[-1], "level": "window",
                     **_operating_summary(thresholds)},
      "calibration": None if reliability is None else {
          "view": NO_PRIOR, "level": "window", "pooled_over": "every "
          "(window, scored species) cell",
          "calibration_error": reliability.expected_calibration_error,
          "edges": reliability.edges, "count": reliability.count,
          "mean_score": reliability.mean_score,
          "fraction_positive": reliability.fraction_positive},
      "unknown_species": [{"species": s.written, "events": s.events,
                           "why": s.matched_by} for s in mapping.unknown],
      "not_evaluated": _not_evaluated(annotations, evaluated, problems),
      "notes": list(scores.notes),
  }
  if scores.source.get("mode") == "predictions":
    scored = set(scores.scored.tolist())
    out["labels_not_annotated"] = [
        row["species"] for i, row in enumerate(scores.labels)
        if i not in scored]
  return out


# ---------------------------------------------------------------------------
# Outputs.
# ---------------------------------------------------------------------------

def _plain(x):
  """JSON-ready: numpy to Python, NaN to None."""
  if isinstance(x, dict):
    return {str(k): _plain(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_plain(v) for v in x]
  if isinstance(x, np.ndarray):
    return _plain(x.tolist())
  if isinstance(x, np.generic):
    x = x.item()
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x


def _cell_text(x) -> str:
  x = _plain(x)
  if x is None:
    return ""
  if isinstance(x, float):
    # Short where that is exact; else every digit, so a threshold read
    # back (`predict --thresholds`) keeps the windows scoring exactly it.
    short = f"{x:.6g}"
    return short if float(short) == x else repr(x)
  return str(x)


def _write_csv(path: str, rows: list[dict], columns: Sequence[str]) -> None:
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
      writer.writerow([_cell_text(row.get(c)) for c in columns])


def per_species_columns(evaluation: Evaluation) -> list[str]:
  """per_species.csv's columns, in order."""
  pooled = evaluation.levels[1].name
  columns = ["species", "common_name", "annotated_as", "events",
             "positive_windows", f"positive_{pooled}s"]
  for view in evaluation.scores.views:
    prefix = "" if view == NO_PRIOR else f"{view}_"
    columns += [f"{prefix}window_ap", f"{prefix}window_auroc",
                f"{prefix}window_best_f1", f"{prefix}{pooled}_ap",
                f"{prefix}{pooled}_auroc"]
  return columns + ["threshold", "threshold_rule", "calibration_error",
                    "status"]


def _pr_curve(scores: np.ndarray, truth: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
  """(recall, precision) at each distinct score, high to low."""
  order = np.argsort(-scores, kind="stable")
  ranked = scores[order]
  tp = np.cumsum(truth[order])
  last = np.r_[ranked[:-1] != ranked[1:], True]
  predicted = np.arange(1, len(ranked) + 1)
  return (np.r_[0.0, tp[last] / max(tp[-1], 1)],
          np.r_[1.0, tp[last] / predicted[last]])


def _plot_precision_recall(evaluation: Evaluation, view: str, path: str,
                           most: int = 10) -> None:
  plt = plots.pyplot()
  window = evaluation.levels[0]
  scores, truth = window.views[view].scores, window.truth
  fig, ax = plt.subplots(figsize=(6.5, 5))
  positives = truth.sum(axis=0)
  labels = evaluation.scores.labels
  ap = metrics_lib.per_class_ap_and_best_f1(scores, truth)[0]
  for j in np.argsort(-positives, kind="stable")[:most]:
    if positives[j]:
      recall, precision = _pr_curve(scores[:, j], truth[:, j])
      ax.step(recall, precision, where="post", lw=1, alpha=0.7,
              label=f"{labels[evaluation.scores.scored[j]]['species']} "
              f"(AP {ap[j]:.2f}, {positives[j]})")
  if truth.any():
    recall, precision = _pr_curve(scores.ravel(), truth.ravel())
    ax.step(recall, precision, where="post", color="black", lw=2.5,
            label="all species pooled")
  ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.01),
         ylim=(0, 1.01), title=f"windows, view {view}: precision-recall")
  ax.legend(fontsize=7, loc="lower left")
  plots.save(fig, path)


def _plot_calibration(reliability: metrics_lib.Reliability, path: str
                      ) -> None:
  plt = plots.pyplot()
  fig, (top, bottom) = plt.subplots(
      2, 1, figsize=(5.5, 6), sharex=True,
      gridspec_kw={"height_ratios": (3, 1)})
  filled = reliability.count > 0
  top.plot([0, 1], [0, 1], ls="--", color="grey", label="calibrated")
  top.plot(reliability.mean_score[filled],
           reliability.fraction_positive[filled], "o-",
           label=f"windows x species (ECE "
           f"{reliability.expected_calibration_error:.3f})")
  top.set(ylabel="fraction positive", ylim=(0, 1.01),
          title="calibration (view no_prior)")
  top.legend(loc="upper left")
  centres = (reliability.edges[:-1] + reliability.edges[1:]) / 2
  bottom.bar(centres, reliability.count, width=np.diff(reliability.edges),
             color="lightgrey", edgecolor="grey", log=True)
  bottom.set(xlabel="score", ylabel="cells", xlim=(0, 1))
  plots.save(fig, path)


def write_outputs(evaluation: Evaluation, output: str) -> dict[str, str]:
  """Writes every output file into `output`; returns {name: path}."""
  os.makedirs(output, exist_ok=True)
  paths = {name: os.path.join(output, name) for name in (
      METRICS_FILE, PER_SPECIES_FILE, THRESHOLDS_FILE, MAPPING_FILE,
      PROBLEMS_FILE, ROWS_FILE)}
  storage.write_json(paths[METRICS_FILE], _plain(evaluation.metrics))
  _write_csv(paths[PER_SPECIES_FILE], evaluation.per_species,
             per_species_columns(evaluation))
  _write_csv(paths[THRESHOLDS_FILE], evaluation.thresholds,
             THRESHOLD_COLUMNS)
  annotations_lib.write_mapping_report(paths[MAPPING_FILE],
                                       evaluation.mapping)
  annotations_lib.write_problems(paths[PROBLEMS_FILE], evaluation.problems)
  scored_rows.write_rows(paths[ROWS_FILE], level_rows(evaluation))
  for view in evaluation.scores.views:
    name = ("precision_recall.png" if view == NO_PRIOR
            else f"precision_recall_{view}.png")
    paths[name] = os.path.join(output, name)
    _plot_precision_recall(evaluation, view, paths[name])
  if evaluation.reliability is not None:
    paths[CALIBRATION_PLOT] = os.path.join(output, CALIBRATION_PLOT)
    _plot_calibration(evaluation.reliability, paths[CALIBRATION_PLOT])
  return paths


def _number_text(x, interval: dict | None = None) -> str:
  if x is None or (isinstance(x, float) and math.isnan(x)):
    return "-"
  text = f"{x:.3f}"
  if interval and interval["low"] is not None and not math.isnan(
      interval["low"]):
    text += f" [{interval['low']:.3f}, {interval['high']:.3f}]"
  return text


def summary(evaluation: Evaluation, output: str = "") -> str:
  """The report on one screen."""
  m = evaluation.metrics
  c, source = m["counts"], m["source"]
  if source["mode"] == "model":
    what = f"model {source['model']}"
  else:
    what = (f"prediction tables {source['predictions']} "
            f"({source['tables']} tables)")
  lines = [
      f"{what}: windows of {source['window_seconds']:.3f} s every "
      f"{source['hop_seconds']:.3f} s",
      f"recordings: {c['evaluated']} evaluated ({c['audio_hours']:.3f} h), "
      f"{c['not_evaluated']} annotated but not evaluated, "
      f"{c['not_annotated']} not annotated",
      f"annotations: {c['events']} events, {c['events_scored']} scored; "
      f"{c['problems']} problems" + (f" (see {PROBLEMS_FILE})"
                                     if c["problems"] else ""),
      f"species: {evaluation.mapping.summary()}; {c['labels_not_annotated']}"
      " labels not in the annotations (not scored)",
  ]
  lines += m["notes"]
  interval = m["settings"]["bootstrap"] >= 2
  lines.append("")
  lines.append(f"{'level':8} {'view':9} {'cmAP':24} {'cmAUROC':24} "
               f"{'mF1':6} top-1 (rows)")
  for name, level in m["levels"].items():
    for view in m["views"]:
      s = level[view]
      lines.append(
          f"{name:8} {view:9} "
          f"{_number_text(s['cmap'], s['cmap_interval']):24} "
          f"{_number_text(s['cmauroc'], s['cmauroc_interval']):24} "
          f"{_number_text(s['mf1']):6} {_number_text(s['top1'])} "
          f"({s['top1_rows']})")
  if interval:
    lines.append(f"[..]: {m['settings']['interval_level']:.0%} bootstrap "
                 f"interval over recordings ({m['settings']['bootstrap']} "
                 "resamples)")
  t = m["thresholds"]
  lines.append(
      f"thresholds ({t['view']}): precision "
      f"{m['settings']['target_precision']} reached for "
      f"{t['target_precision_reached']} of {t['species']} species, best F1 "
      f"for {t['best_f1_instead']}, none for {t['none']}")
  if t["held_out_mean_precision"] is not None:
    lines.append(
        "  on recordings they were not fitted on: mean precision "
        f"{t['held_out_mean_precision']:.3f}; the target kept for "
        f"{t['held_out_target_kept']} of {t['target_precision_reached']}")
  if m["calibration"]:
    lines.append(f"calibration error (windows, pooled): "
                 f"{m['calibration']['calibration_error']:.3f}")
  if output:
    lines.append(f"outputs in {output}: {METRICS_FILE}, {PER_SPECIES_FILE}, "
                 f"{THRESHOLDS_FILE}, {MAPPING_FILE}, {PROBLEMS_FILE}, "
                 "plots")
  return "\n".join(lines)


# ---------------------------------------------------------------------------
# The whole run.
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Inputs:
  """What the command is given (its flags, module evaluate.py).

  Exactly one of `model` and `predictions`.
  """
  audio: str
  annotations: str
  output: str
  model: str = ""
  predictions: str = ""
  species_map: str = ""
  species_column: str | None = None
  every_recording_annotated: bool = False
  hop_seconds: float | None = None
  window_seconds: float | None = None
  latitude: float = math.nan
  longitude: float = math.nan
  locations: str = ""
  geo_prior: str = ""
  batch_size: int = 32


def _prior_masks(source: str, labels: Sequence[dict],
                 recordings: Sequence[Recording], threshold: float
                 ) -> dict[str, np.ndarray]:
  """Per recording, the labels the range model `source` keeps at its
  location (`GeoPrior.mask`: an unknown location or species keeps all)."""
  try:
    prior = prior_lib.load(source, [row["species"] for row in labels])
  except (OSError, ValueError) as e:
    raise inference.InputError(f"--geo_prior={source}: {e}") from None
  unlocated = [r.relative for r in recordings
               if math.isnan(r.latitude) or math.isnan(r.longitude)]
  if unlocated:
    print(f"warning: {len(unlocated)} of {len(recordings)} recordings have "
          f"no location (e.g. {unlocated[0]}): the prior keeps every "
          "species there", file=sys.stderr)
  keep = prior.mask([r.latitude for r in recordings],
                    [r.longitude for r in recordings], threshold)
  return {r.relative: k for r, k in zip(recordings, keep)}


def _find_audio(path: str) -> list[tuple[str, str]]:
  """`audio.find_audio` of --audio, its problems named so."""
  try:
    return audio.find_audio(path)
  except audio.NoAudioError as e:
    raise inference.InputError(f"--audio={e.path}: {e.reason}") from None


def durations(files: Sequence[tuple[str, str]]
              ) -> tuple[list[float], list[annotations_lib.Problem]]:
  """Each recording's decoded duration from its header (NaN and a problem
  where it cannot be opened)."""
  out, problems = [], []
  for path, relative in files:
    try:
      with audio.open_audio_file(path) as decoder:
        out.append(decoder.num_samples / audio.SAMPLE_RATE)
    except audio.AudioError as e:
      out.append(math.nan)
      problems.append(annotations_lib.Problem(
          relative, None, f"cannot be decoded, left out of the evaluation: "
          f"{e}", "decoding failed"))
  return out, problems


def _check_output(output: str) -> None:
  try:
    os.makedirs(output, exist_ok=True)
  except OSError as e:
    raise inference.InputError(f"--output={output}: cannot write there "
                               f"({e.strerror})") from None


def run(inputs: Inputs, settings: Settings = Settings(), *,
        predictor: inference.Predictor | None = None,
        progress_bar: bool = False) -> Evaluation:
  """Evaluates a model or prediction tables on annotated soundscapes and
  writes the outputs into `inputs.output`.

  Args:
    inputs: the files (exactly one of `model` and `predictions`).
    settings: how scores are judged.
    predictor: a loaded model to use instead of loading `inputs.model`.
    progress_bar: a bar over hours of audio on stderr.

  Raises:
    inference.InputError (a `ValueError`): inputs that prevent any
      evaluation, in one line; `NothingToEvaluate` where no recording or no
      species could be scored (problems.tsv and mapping.tsv are written
      first).
  """
  settings.check()
  if bool(inputs.model or predictor) == bool(inputs.predictions):
    raise inference.InputError("give --model or --predictions (one of them)")
  files = _find_audio(inputs.audio)
  species_map = (annotations_lib.SpeciesMap.read(inputs.species_map)
                 if inputs.species_map else None)
  locations = (inference.read_locations(inputs.locations)
               if inputs.locations else {})
  _check_output(inputs.output)
  lengths, problems = durations(files)
  annotations = annotations_lib.read_annotations(
      inputs.annotations, files, lengths,
      species_column=inputs.species_column,
      every_recording_annotated=inputs.every_recording_annotated)
  decoded = {r for (_, r), d in zip(files, lengths) if not math.isnan(d)}
  todo = [(path, relative) for path, relative in files
          if relative in set(annotations.annotated) and relative in decoded]
  predictions = None
  if inputs.predictions:
    try:
      predictions = tables.read_predictions(
          inputs.predictions, files, lengths,
          window_seconds=inputs.window_seconds,
          hop_seconds=inputs.hop_seconds, species_map=species_map)
    except tables.PredictionTablesError as e:
      raise inference.InputError(f"--predictions={e}") from None
    labels = predictions.labels
  else:
    if predictor is None:
      predictor = inference.Predictor(
          inputs.model, batch_size=inputs.batch_size,
          hop_seconds=inputs.hop_seconds or inference.DEFAULT_HOP_SECONDS,
          geo_prior=inputs.geo_prior or None)
    labels = predictor.labels
  mapping = annotations_lib.map_species(annotations, labels, species_map)

  def nothing(why: str) -> NothingToEvaluate:
    all_problems = (list(annotations.problems) + problems
                    + (predictions.problems if predictions else []))
    annotations_lib.write_problems(
        os.path.join(inputs.output, PROBLEMS_FILE), all_problems)
    annotations_lib.write_mapping_report(
        os.path.join(inputs.output, MAPPING_FILE), mapping)
    return NothingToEvaluate(
        f"nothing to evaluate: {why} ({annotations.summary()}; "
        f"{mapping.summary()}; see {inputs.output})")

  if not todo:
    raise nothing("no annotated recording could be read")
  if not len(mapping.present_classes):
    raise nothing("no annotated species is a label of the "
                  + ("model" if predictions is None else "prediction tables")
                  + ("" if species_map else " (codes and other names need "
                     "--species_map)"))
  recordings = []
  for path, relative in todo:
    lat, lon = (locations.get(relative) or locations.get(path)
                or locations.get(os.path.basename(path))
                or (inputs.latitude, inputs.longitude))
    recordings.append(Recording(path, relative, lat, lon))
  if predictions is not None:
    keep = None
    if inputs.geo_prior:
      keep = _prior_masks(inputs.geo_prior, predictions.labels, recordings,
                          settings.geo_threshold)
    scores = score_predictions(predictions, [r.relative for r in recordings],
                               mapping.present_classes, keep)
  else:
    for line in predictor.unlocated_warnings(
        [r.path for r in recordings
         if math.isnan(r.latitude) or math.isnan(r.longitude)],
        len(recordings)):
      print(line, file=sys.stderr)
    length_of = dict(zip([r for _, r in files], lengths))
    scores = score_with_predictor(
        predictor, recordings, mapping.present_classes,
        geo_threshold=settings.geo_threshold,
        durations_s=[length_of[r.relative] for r in recordings],
        progress_bar=progress_bar)
  if not scores.recordings:
    problems += scores.problems
    scores.problems = []
    raise nothing("no annotated recording could be scored")
  run_settings = {
      "audio": os.path.abspath(inputs.audio),
      "annotations": os.path.abspath(inputs.annotations),
      "species_map": inputs.species_map and os.path.abspath(
          inputs.species_map),
      "species_column": inputs.species_column,
      "every_recording_annotated": inputs.every_recording_annotated,
      "latitude": None if math.isnan(inputs.latitude) else inputs.latitude,
      "longitude": None if math.isnan(inputs.longitude) else inputs.longitude,
      "locations": inputs.locations and os.path.abspath(inputs.locations),
      "geo_prior": inputs.geo_prior and os.path.abspath(inputs.geo_prior),
  }
  evaluation = evaluate(scores, annotations, mapping, settings, problems,
                        run_settings)
  write_outputs(evaluation, inputs.output)
  return evaluation

