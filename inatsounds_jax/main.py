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
from inatsounds_jax import storage

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training configuration (a file in configs/).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, "
                               "TensorBoard logs and results go.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "What to do.")
# Several processes (`--config.distributed=True`): on TPU pod slices, Slurm
# and other clusters JAX finds the coordinator and each process's id itself;
# these flags are for launching the processes by hand (one host, or hosts
# JAX cannot detect).
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0's coordinator.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "How many processes take part.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                   "This process's index, 0 .. n-1.")
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


def initialize_processes(config) -> None:
  """`jax.distributed.initialize` for a `distributed` config, before any
  other JAX call; the flags (when given) say where process 0 listens."""
  if not config.get("distributed"):
    return
  from inatsounds_jax import processes  # pylint: disable=import-outside-toplevel
  processes.initialize(_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                       process_id=_PROCESS_ID.value)


def _stop_after_another_process_failed(error: Exception) -> None:
  """Exits at once when a collective with the other processes failed.

  A process that dies (killed, out of memory, a bug) breaks the collectives
  of the others; without this they would wait out JAX's shutdown barrier
  (its heartbeat timeout) and then abort with a long C++ stack trace.
  """
  import jax  # pylint: disable=import-outside-toplevel
  if not (jax.distributed.is_initialized() and jax.process_count() > 1 and
          isinstance(error, jax.errors.JaxRuntimeError)):
    return
  message = str(error).strip().splitlines()[0][:300]
  print(f"error: process {jax.process_index()} of {jax.process_count()}: an "
        f"operation with the other processes failed ({message}); another "
        "process has probably stopped: see its log. This process stops too; "
        "start all processes again to resume from the last checkpoint.",
        file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(1)  # pylint: disable=protected-access


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # TF is only the input pipeline: keep its logs and any GPU away from JAX.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  config = _CONFIG.value
  initialize_processes(config)
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
  except Exception as e:  # pylint: disable=broad-except
    _stop_after_another_process_failed(e)
    raise
  print(job.format_results(results))
  print(f"Everything else (results JSON, plots, checkpoints, TensorBoard): "
        f"{storage.resolve(_WORKDIR.value)}")


if __name__ == "__main__":
  app.run(main)
