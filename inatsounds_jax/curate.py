"""Data curation: score every training window, keep the best (MAE study 4.7).

    python -m inatsounds_jax.curate --workdir=TRAINED_WORKDIR --out=DIR \\
        [--by=confidence|reconstruction] \\
        [--threshold=X | --keep_fraction=F]

Every dense window of the workdir's train split (`input_pipeline.
eval_dataset`: the evaluation layout at the run's `eval_stride_frames`) is
scored by the trained model (Liu et al. 2026, s. 4.7):

- `confidence` (a classifier workdir): the probability of the recording's
  labelled species (softmax, or sigmoid for multilabel models); empty
  segments score low.
- `reconstruction` (an MAE workdir, configs/mae_pretrain.py): the masked-
  patch reconstruction loss with the model's fixed evaluation masks; the
  study keeps the hard (high-loss) segments.

Windows scoring at least `--threshold`, or the top `--keep_fraction` of
them, are kept. DIR receives `scores.csv` (every window: recording_id,
example_index, split_position, window, start_s, start_frame,
left_pad_frames, window_frames, score), `keep.csv` (the kept rows) and
`histogram.png` (the score distribution and the cut). Train on the kept
windows with `--config.train_window_filter=DIR/keep.csv` (fine-tuning or
pretraining; `input_pipeline.WindowFilter`).
"""

from __future__ import annotations

import csv
import dataclasses

from absl import app
from absl import flags
import numpy as np
import tensorflow_datasets as tfds

from inatsounds_jax import checkpoints
from inatsounds_jax import cli
from inatsounds_jax import compilation
from inatsounds_jax import data
from inatsounds_jax import input_pipeline
from inatsounds_jax import objectives
from inatsounds_jax import plots
from inatsounds_jax import registry
from inatsounds_jax import storage
from inatsounds_jax import trained as trained_lib

SCORES_FILE = "scores.csv"
KEEP_FILE = "keep.csv"
HISTOGRAM_FILE = "histogram.png"
COLUMNS = ("recording_id", "example_index", "split_position", "window",
           "start_s", "start_frame", "left_pad_frames", "window_frames",
           "score")


@dataclasses.dataclass
class Scores:
  """One row per window, as `COLUMNS` (numpy columns, split order)."""
  columns: dict[str, np.ndarray]

  def __len__(self) -> int:
    return len(self.columns["score"])

  def select(self, keep: np.ndarray) -> "Scores":
    return Scores({k: v[keep] for k, v in self.columns.items()})

  def write(self, path: str) -> str:
    """Writes the CSV at `path` (local or `gs://`), streamed and whole or
    not at all (`storage.writing_whole`); returns `path`."""
    with storage.writing_whole(path, encoding="utf-8") as f:
      writer = csv.writer(f)
      writer.writerow(COLUMNS)
      for row in zip(*(self.columns[k] for k in COLUMNS)):
        writer.writerow([f"{v:.6g}" if isinstance(v, np.floating) else
                         (v.decode() if isinstance(v, bytes) else v)
                         for v in row])
    return path


def window_scorer(trained: trained_lib.TrainedModel, by: str):
  """`(variables, waveform [B, S], label [B]) -> score [B]` for `by`: the
  window score of the objective whose `window_score` is `by`.

  Raises:
    registry.ConfigError: no objective scores so, the workdir's objective
      is not that one, or its model cannot be scored on waveforms.
  """
  name, objective = objectives.by_window_score(by)
  if trained.config.objective != name:
    raise registry.ConfigError(
        f"--by={by} needs a workdir trained with objective {name!r}; this "
        f"one was trained with {trained.config.objective!r}")
  try:
    return objective.scorer(trained)
  except registry.ConfigError as e:
    raise registry.ConfigError(f"--by={by}: {e}") from None


def score_windows(trained: trained_lib.TrainedModel, by: str,
                  builder: tfds.core.DatasetBuilder, split: str,
                  batch_size: int = 64) -> Scores:
  """Scores of every dense window of `split` (one process)."""
  scorer = compilation.jit(window_scorer(trained, by))
  windows = trained.windows(trained.config.eval_stride_frames)
  rows = {k: [] for k in COLUMNS}
  position, previous, window = -1, None, 0
  seconds_per_frame = (windows.frontend.hop_length /
                       windows.frontend.sample_rate)
  for batch in tfds.as_numpy(input_pipeline.eval_dataset(
      builder, split, batch_size, windows, process_index=0,
      process_count=1)):
    score = np.asarray(scorer(trained.variables, batch["waveform"],
                              batch["label"]))
    for i in np.flatnonzero(batch["mask"]):
      index = int(batch["example_index"][i])
      if index != previous:  # A file's windows come together, in order.
        position, previous, window = position + 1, index, 0
      start, left = int(batch["start_frame"][i]), int(
          batch["left_pad_frames"][i])
      for k, v in (("recording_id", batch["recording_id"][i]),
                   ("example_index", index), ("split_position", position),
                   ("window", window), ("start_frame", start),
                   ("left_pad_frames", left),
                   ("window_frames", windows.window_frames),
                   ("start_s", max(0, start - left) * seconds_per_frame),
                   ("score", score[i])):
        rows[k].append(v)
      window += 1
  return Scores({k: np.asarray(v) for k, v in rows.items()})


def keep_mask(scores: np.ndarray, threshold: float | None = None,
              keep_fraction: float | None = None) -> np.ndarray:
  """Windows scoring >= `threshold`, or the round(F x n) highest (ties
  broken by order)."""
  if (threshold is None) == (keep_fraction is None):
    raise registry.ConfigError(
        "give exactly one of --threshold and --keep_fraction")
  if threshold is not None:
    return scores >= threshold
  if not 0.0 < keep_fraction <= 1.0:
    raise registry.ConfigError(
        f"--keep_fraction={keep_fraction} must be in (0, 1]")
  keep = np.zeros(len(scores), bool)
  keep[np.argsort(-scores, kind="stable")[:round(keep_fraction * len(scores))]
       ] = True
  return keep


def plot_histogram(path: str, scores: np.ndarray, keep: np.ndarray,
                   by: str) -> str:
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(6, 3.5))
  bins = np.histogram_bin_edges(scores, bins=50)
  ax.hist(scores, bins=bins, color="0.7", label="all windows")
  ax.hist(scores[keep], bins=bins, color="C0", label="kept")
  ax.set_xlabel({"confidence": "confidence of the labelled species",
                 "reconstruction": "reconstruction loss"}[by])
  ax.set_ylabel("windows")
  ax.set_title(f"{keep.sum()} of {len(keep)} windows kept "
               f"({keep.mean():.1%})")
  ax.legend()
  return plots.save(fig, path)


def curate(workdir: str, out: str, by: str = "confidence",
           threshold: float | None = None,
           keep_fraction: float | None = None,
           batch_size: int = 64) -> Scores:
  """Scores the workdir's train split, writes DIR's files; the kept rows.

  Raises:
    registry.ConfigError: bad options or a workdir of the wrong kind.
  """
  keep_mask(np.zeros(1), threshold, keep_fraction)  # Options, before work.
  try:
    trained = trained_lib.load_workdir(workdir)
  except FileNotFoundError as e:
    raise registry.ConfigError(f"--workdir={workdir}: {e}") from None
  window_scorer(trained, by)  # The workdir's kind, before reading data.
  builder = data.prepare_from_config(trained.config)
  scores = score_windows(trained, by, builder, trained.config.train_split,
                         batch_size)
  keep = keep_mask(scores.columns["score"], threshold, keep_fraction)
  out = storage.resolve(out)
  out.mkdir(parents=True, exist_ok=True)
  scores.write(out / SCORES_FILE)
  kept = scores.select(keep)
  kept.write(out / KEEP_FILE)
  plot_histogram(out / HISTOGRAM_FILE, scores.columns["score"], keep, by)
  return kept


def _define_flags() -> None:
  flags.DEFINE_string("workdir", None, "A trained classifier or MAE workdir.")
  flags.DEFINE_string("out", None, "Folder for scores, keep-list, plot.")
  flags.DEFINE_string("by", "confidence",
                      "What scores a window: 'confidence' (a classifier "
                      "workdir) or 'reconstruction' (an MAE workdir).")
  flags.DEFINE_float("threshold", None, "Keep windows scoring at least this.")
  flags.DEFINE_float("keep_fraction", None,
                     "Keep this fraction of the highest-scoring windows.")
  flags.DEFINE_integer("batch_size", 64, "Windows per model call.")
  flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  del argv
  input_pipeline.hide_gpus_from_tensorflow()
  f = flags.FLAGS
  try:
    kept = curate(f.workdir, f.out, f.by, f.threshold, f.keep_fraction,
                  f.batch_size)
  except (registry.ConfigError, OSError,
          checkpoints.DamagedCheckpointError) as e:
    cli.fail(str(e), e)
  print(f"kept {len(kept)} windows; train on them with "
        f"--config.train_window_filter={storage.resolve(f.out) / KEEP_FILE}")
  return 0


if __name__ == "__main__":
  _define_flags()
  app.run(main)
