"""Command line: train or evaluate a species classifier or a range model.

    python -m inatsounds_jax.main --config=configs/quickstart.py --workdir=DIR
    python -m inatsounds_jax.main --config=configs/vit.py --workdir=DIR \\
        --config.data_dir=/data/tfds --config.manual_dir=/data/inat_sounds
    python -m inatsounds_jax.main --config=configs/vit.py:tiny --workdir=DIR
    python -m inatsounds_jax.main --config=configs/sinr.py --workdir=DIR
    python -m inatsounds_jax.main --config=... --workdir=DIR --mode=eval

The config's `job` picks what runs ("classifier" unless set). `train`
resumes from DIR when it holds a checkpoint; `eval` evaluates what DIR holds
(for a classifier, its best checkpoint, with every configured evaluation).
A configuration problem is reported in a few lines, without a traceback,
before any work starts; so are a workdir with no intact checkpoint and a
run stopped by a non-finite update. SIGTERM during training saves the
current step and exits with status 143.
"""

import importlib
import logging as std_logging
import os
import sys
from typing import Any, Protocol

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from inatsounds_jax import checkpoints
from inatsounds_jax import registry

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training configuration (a file in configs/).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, "
                               "TensorBoard logs and results go.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "What to do.")
flags.mark_flags_as_required(["config", "workdir"])


class Job(Protocol):
  """What a job module provides (`train.py`, `geo/train_range.py`)."""

  def train_and_evaluate(self, config, workdir: str) -> Any:
    """Runs the job (resuming from `workdir`); returns its results."""

  def evaluate_checkpoint(self, config, workdir: str) -> Any:
    """Evaluates what `workdir` holds; returns the same kind of results."""

  def format_results(self, results: Any) -> str:
    """A few console lines of the results."""


# Job name -> module path (imported when used: each pulls in TF and JAX).
JOBS: registry.Registry[str] = registry.Registry("job")
JOBS.add("classifier", "inatsounds_jax.train")
JOBS.add("range_model", "inatsounds_jax.geo.train_range")


def load_job(name: str) -> Job:
  return importlib.import_module(JOBS.get(name))


class _QuietLibraries(std_logging.Filter):
  """Drops orbax's and TFDS's per-call INFO lines; our progress stays."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or not any(
        lib in record.pathname for lib in ("/orbax/", "/tensorflow_datasets/"))


# Exit status after SIGTERM: the shell's convention (128 + signal 15).
_PREEMPTED_STATUS = 143


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # TF is only the input pipeline: keep its logs and any GPU away from JAX.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  config = _CONFIG.value
  try:
    job = load_job(config.get("job", "classifier"))
    logging.info("Config:\n%s", config)
    if _MODE.value == "train":
      results = job.train_and_evaluate(config, _WORKDIR.value)
    else:
      results = job.evaluate_checkpoint(config, _WORKDIR.value)
  except (registry.ConfigError, checkpoints.DamagedCheckpointError,
          FloatingPointError) as e:
    # What went wrong and what to do is in the message; a traceback adds
    # nothing for the user.
    sys.exit(f"error: {e}")
  except checkpoints.Preempted as e:
    logging.warning("%s", e)
    sys.exit(_PREEMPTED_STATUS)
  print(job.format_results(results))
  print(f"Everything else (results JSON, plots, checkpoints, TensorBoard): "
        f"{os.path.abspath(_WORKDIR.value)}")


if __name__ == "__main__":
  app.run(main)
