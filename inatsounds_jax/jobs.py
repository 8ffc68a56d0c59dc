"""The jobs a run can be, by name: what `config.job` names.

A job module (`train.py`, `geo/train_range.py`) is imported only when a run
asks for it, by its path in `JOBS`: each pulls in TensorFlow and the
training machinery, which commands that only load a model (prediction,
export) must not pay for, and no module imports the training job by name
(`tests/test_structure.py`). `main.py` and the commands that train
(`custom --mode=finetune`) load a job here.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

from inatsounds_jax import registry


class Job(Protocol):
  """What a job module provides (`train.py`, `geo/train_range.py`)."""

  def train_and_evaluate(self, config, workdir: str) -> Any:
    """Runs the job (resuming from `workdir`); returns its results."""

  def evaluate_checkpoint(self, config, workdir: str) -> Any:
    """Evaluates what `workdir` holds; returns the same kind of results."""

  def format_results(self, results: Any) -> str:
    """A few console lines of the results."""


# Job name -> module path.
JOBS: registry.Registry[str] = registry.Registry("job")
JOBS.add("classifier", "inatsounds_jax.train")
JOBS.add("range_model", "inatsounds_jax.geo.train_range")


def load_job(name: str) -> Job:
  """The job module `name` (`registry.ConfigError` for an unknown one)."""
  return importlib.import_module(JOBS.get(name))
