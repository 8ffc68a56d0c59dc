"""What a run trains: objectives as plug-ins, chosen by `config.objective`.

An `Objective` gives everything that differs between kinds of training and
nothing else: the model it builds from a config, the per-batch loss the one
training loop (`train.py`) differentiates, the check of the dataset it needs,
and how a trained model scores a window for data curation (`curate.py`).
The loop, checkpoints, evaluation and loading a trained model (`trained.py`)
are shared.

    classification          a species classifier (`classification.py`)
    masked_reconstruction   masked-autoencoder pretraining
                            (`masked_reconstruction.py`)

Objectives are registered by module path and imported when first asked for,
as jobs are (`jobs.JOBS`), so loading a classifier never imports the
masked autoencoder's code and vice versa. A new objective is a module with
an `OBJECTIVE` and one line below.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

from inatsounds_jax import registry


@dataclasses.dataclass(frozen=True)
class Objective:
  """What a run trains.

  Attributes:
    make_model: `(config, num_classes, multilabel) -> module` taking the
      dataset's inputs (`model_input` of a batch), with `window_frames`,
      `frontend`, `window_samples`, `example_input` and `input_kind` (the
      input pipeline's windows come from them).
    loss: `(params, state, batch, rng, *, model, loss, augment_config,
      **options) -> (value, (metrics, variable updates, loss state))`,
      differentiated with respect to `params`; `metrics` are scalars logged
      as `train/*`. Classification also takes the mean `teacher`.
    check_input: `(config, builder) -> None`, raising `ConfigError` when the
      dataset's records cannot feed this objective's model.
    window_score: the name `curate --by` gives this objective's window
      score ("confidence", "reconstruction").
    scorer: `(trained model) -> fn(variables, inputs [B, ...], label [B])
      -> score [B]`, the window score of a trained model, pure (jitted by
      the caller).
    uses_labels: the loss reads the batch's targets; objectives that do
      not can train on unlabelled audio (`config.pretrain_sources`).
  """
  make_model: Callable[..., Any]
  loss: Callable[..., Any]
  check_input: Callable[..., None]
  window_score: str
  scorer: Callable[..., Callable]
  uses_labels: bool = True


# Objective name -> the module defining its `OBJECTIVE`.
OBJECTIVES: registry.Registry[str] = registry.Registry("objective")
OBJECTIVES.add("classification", "inatsounds_jax.objectives.classification")
OBJECTIVES.add("masked_reconstruction",
               "inatsounds_jax.objectives.masked_reconstruction")


def get(name: str) -> Objective:
  """The objective `name` (a `ConfigError` lists the choices)."""
  return importlib.import_module(OBJECTIVES.get(name)).OBJECTIVE


def by_window_score(score: str) -> tuple[str, Objective]:
  """(name, objective) whose `window_score` is `score`.

  Raises:
    registry.ConfigError: no objective scores windows so.
  """
  found = {name: get(name) for name in OBJECTIVES.names()}
  for name, objective in found.items():
    if objective.window_score == score:
      return name, objective
  raise registry.ConfigError(
      f"--by={score!r}: choose from "
      f"{sorted(o.window_score for o in found.values())}")
