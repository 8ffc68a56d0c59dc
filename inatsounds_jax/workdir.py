"""A training workdir's layout: the name of every file a job leaves there.

    WORKDIR/
      config.json          the run's config (the resume check compares it)
      classes.json         the model's labels in output order
      checkpoints/<step>/  the latest N training states (orbax)
      best/<step>/         the best state by `config.best_metric`
      damaged_checkpoints/ checkpoints found damaged, set aside on restore
      eval_results.json    the latest evaluations' summaries
      <evaluation>_*.png   each evaluation's artefacts (plots)
      <evaluation>_rows.npz  its scored rows (`scored_rows.ScoredRows`;
                           an evaluation's option `save_rows`)
      range_model/         a classifier's own range model (`range_model`
                           set), itself a range-model workdir:
        range_model/         the saved SINR (`geo/range_model.py`)
        range_results.json   its training summary and quality
        range_maps.png
      .inatsounds_jax.lock there while a run holds the workdir, naming it
                           (`workdir_lock.LOCK_FILE`)

Everything that names one of these files asks this module, so a job, a
loader or a test never spells a name of its own. Paths are `epath.Path`s
(local or `gs://`, `storage.resolve`).
"""

from __future__ import annotations

from etils import epath

from inatsounds_jax import storage

CONFIG_FILE = "config.json"
LABELS_FILE = "classes.json"
CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"
DAMAGED_DIR = "damaged_checkpoints"
EVAL_RESULTS_FILE = "eval_results.json"
# A classifier run's own range model (`config.range_model`).
RANGE_MODEL_DIR = "range_model"
# Inside a range-model workdir.
SAVED_RANGE_MODEL_DIR = "range_model"
RANGE_RESULTS_FILE = "range_results.json"
RANGE_MAPS_FILE = "range_maps.png"


def path(workdir: storage.PathLike, name: str) -> epath.Path:
  """`name` (one of this module's names) inside `workdir`, resolved."""
  return storage.resolve(workdir) / name


def eval_rows_path(workdir: storage.PathLike, evaluation: str) -> epath.Path:
  """The rows file of evaluation `evaluation` (its name in `config.evals`),
  written when its option `save_rows` is set."""
  return storage.resolve(workdir) / f"{evaluation}_rows.npz"
