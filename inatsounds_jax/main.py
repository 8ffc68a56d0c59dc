"""Command line: train or evaluate a species classifier or a range model.

    python -m inatsounds_jax.main --config=configs/quickstart.py --workdir=DIR
    python -m inatsounds_jax.main --config=configs/vit.py --workdir=DIR \\
        --config.data_dir=/data/tfds --config.manual_dir=/data/inat_sounds
    python -m inatsounds_jax.main --config=configs/vit.py:tiny --workdir=DIR
    python -m inatsounds_jax.main --config=configs/sinr.py --workdir=DIR
    python -m inatsounds_jax.main --config=... --workdir=DIR --mode=eval

The config's `job` picks what runs ("classifier" unless set). `train`
resumes from DIR when it holds a checkpoint; `eval` evaluates what DIR holds
(for a classifier, its best checkpoint on validation and test).
"""

import importlib
import logging as std_logging
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training configuration (a file in configs/).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, "
                               "TensorBoard logs and results go.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "What to do.")
flags.mark_flags_as_required(["config", "workdir"])

# Job name -> module with train_and_evaluate, evaluate_checkpoint and
# format_results (imported when used: each pulls in TF and JAX).
JOBS = {
    "classifier": "inatsounds_jax.train",
    "range_model": "inatsounds_jax.geo.train_range",
}


class _QuietLibraries(std_logging.Filter):
  """Drops orbax's and TFDS's per-call INFO lines; our progress stays."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or not any(
        lib in record.pathname for lib in ("/orbax/", "/tensorflow_datasets/"))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # TF is only the input pipeline: keep its logs and any GPU away from JAX.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  config = _CONFIG.value
  job = config.get("job", "classifier")
  if job not in JOBS:
    raise app.UsageError(f"unknown job {job!r}; choose from {sorted(JOBS)}")
  module = importlib.import_module(JOBS[job])
  logging.info("Config:\n%s", config)
  if _MODE.value == "train":
    results = module.train_and_evaluate(config, _WORKDIR.value)
  else:
    results = module.evaluate_checkpoint(config, _WORKDIR.value)
  print(module.format_results(results))
  print(f"Everything else (results JSON, plots, checkpoints, TensorBoard): "
        f"{os.path.abspath(_WORKDIR.value)}")


if __name__ == "__main__":
  app.run(main)
