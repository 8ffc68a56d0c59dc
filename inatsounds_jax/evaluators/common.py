"""What every evaluator shares: its interface, construction from the config,
the predict function it is given, and gathering across processes.

An evaluation is configured by name in `config.evals`:

    config.evals = {
        "validation": {"type": "file_level", "split": "validation",
                       "every_epochs": 1.0},
        "test": {"type": "file_level", "split": "test", "every_epochs": 0},
    }

`type` names a module in `inatsounds_jax.evaluators` (or any importable
module path) whose `Evaluator(context, **options)` builds the evaluation;
`every_epochs` (0 = only at the end of training) and `save_rows` (below)
are the loop's business.
Construction happens before training starts, so a bad split, prior or option
fails at start-up. `Evaluator.run(predict)` returns an
`EvalOutput`; the loop logs its metrics as `<name>/<metric>` and picks the
best checkpoint by one of them (`config.best_metric`).

An evaluator may also return the rows its metrics are computed from
(`ScoredRows`: per file or per window, the scores, the truth and the
recording: `scored_rows.ScoredRows`), so that two runs can be compared on
the same bootstrap resamples (`inatsounds_jax.compare`). With the option
`save_rows` (False) the loop writes the final evaluation's rows to
`WORKDIR/<name>_rows.npz` (`workdir.eval_rows_path`); asking it of an
evaluator that returns no rows fails at start-up.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

import jax
from jax.experimental import multihost_utils
import numpy as np
import tensorflow_datasets as tfds

from inatsounds_jax import compilation
from inatsounds_jax import input_pipeline
from inatsounds_jax import registry
from inatsounds_jax import scored_rows
from inatsounds_jax.geo import prior as prior_lib

# (int16 waveforms `[batch, window_samples]` of this process, and
# optionally their recordings' `latitude`, `longitude` `[batch]`, NaN where
# unknown) -> float logits `[batch, classes]` of the same rows (the model
# runs on the global batch); for a model with several outputs (the MAE), a
# dict of such arrays. Evaluators pass the locations their records have; a
# model without a location input ignores them.
PredictFn = Callable[..., np.ndarray]


@dataclasses.dataclass(frozen=True)
class EvalContext:
  """What an evaluator may use besides its own options."""
  builder: tfds.core.DatasetBuilder
  windows: input_pipeline.WindowConfig  # The model's window and frontend.
  batch_size: int  # Global batch of windows.
  label_names: tuple[str, ...]
  # The run's geographic priors by source (`geo.prior.Priors`: each loaded
  # once; "" gives None).
  priors: prior_lib.Priors


def bootstrap_resamples(value: int) -> int:
  """An evaluator's `bootstrap` option: resamples of a percentile
  bootstrap over recordings (0: no intervals).

  Raises:
    registry.ConfigError: below 0, or 1 (no spread).
  """
  if value < 0 or value == 1:
    raise registry.ConfigError(
        f"bootstrap={value}: give 0 (no interval) or 2 and more resamples")
  return value


@dataclasses.dataclass(frozen=True)
class EvalOutput:
  """One evaluation's results.

  Attributes:
    metrics: scalar metrics by name (logged as `<evaluation>/<name>`).
    summary: this evaluation's section of `eval_results.json`.
    text: lines for the console.
    write_artefacts: writes plots etc. to files starting with the given
      path prefix and returns their paths (called on process 0 only).
    rows: the rows behind some of the metrics, by key.
  """
  metrics: dict[str, float]
  summary: dict[str, Any]
  text: str
  write_artefacts: Callable[[str], list[str]] = lambda prefix: []
  rows: Mapping[str, scored_rows.ScoredRows] = dataclasses.field(
      default_factory=dict)


class Evaluator(Protocol):
  """An evaluation built from `(context, **options)`."""

  # The keys of `run(...).metrics`, known before it runs (so that a
  # `best_metric` naming none of them fails at start-up).
  metric_names: tuple[str, ...]
  # The keys of `run(...).rows` (empty or absent: it returns none).
  row_keys: tuple[str, ...]

  def run(self, predict: PredictFn) -> EvalOutput:
    ...


def _discover() -> registry.Registry[str]:
  """Evaluator type -> module path: every module of this package."""
  found = registry.Registry("evaluator type")
  package = importlib.import_module(__package__)
  for module in pkgutil.iter_modules(package.__path__):
    if module.name != "common":
      found.add(module.name, f"{__package__}.{module.name}")
  return found


EVALUATORS = _discover()


@dataclasses.dataclass(frozen=True)
class ScheduledEvaluator:
  name: str
  evaluator: Evaluator
  every_epochs: float  # 0: only at the end.
  save_rows: bool = False  # Write the final evaluation's rows.


def from_config(evals: Mapping[str, Mapping[str, Any]],
                context: EvalContext) -> list[ScheduledEvaluator]:
  """Builds every configured evaluation, in the config's order.

  Raises:
    registry.ConfigError: naming the evaluation and the problem.
  """
  out = []
  for name, options in evals.items():
    options = dict(options)
    kind = options.pop("type", None)
    if kind is None:
      raise registry.ConfigError(f"evals.{name} has no 'type'; choose from "
                                 f"{EVALUATORS.names()}")
    every = float(options.pop("every_epochs", 1.0))
    save_rows = bool(options.pop("save_rows", False))
    path = EVALUATORS.get(kind) if "." not in kind else kind
    module = importlib.import_module(path)
    try:
      evaluator = module.Evaluator(context, **options)
    except TypeError as e:  # An unknown or missing option.
      raise registry.ConfigError(f"evals.{name} ({kind}): {e}") from None
    if save_rows and not getattr(evaluator, "row_keys", ()):
      raise registry.ConfigError(
          f"evals.{name} ({kind}): save_rows=True, but this evaluation "
          "returns no rows to save")
    out.append(ScheduledEvaluator(name, evaluator, every, save_rows))
  return out


def jit_apply(apply_logits: Callable, sharding: jax.sharding.NamedSharding
              ) -> Callable:
  """`apply_logits` jitted for `make_predict_fn`, outputs sharded like the
  batch. Jit it once and pass the result at every evaluation: each new jit
  traces and compiles the model again."""
  return compilation.jit(apply_logits, out_shardings=sharding)


def make_predict_fn(jitted_apply: Callable, variables,
                    sharding: jax.sharding.NamedSharding,
                    location_features: Callable | None = None) -> PredictFn:
  """Mesh-sharded `PredictFn` (logits or a dict of per-window arrays) for
  this process's batches.

  `jitted_apply` (`jit_apply`) runs `apply_logits(variables, waveform)`,
  or with `location_features` (a `location_input.LocationFeatures`:
  `(latitude, longitude, n) -> [n, width]` on the host)
  `apply_logits(variables, waveform, location)`, on the global batch.
  """

  def predict(waveform: np.ndarray, latitude=None, longitude=None
              ) -> np.ndarray:
    inputs = {"w": waveform}
    if location_features is not None:
      inputs["location"] = location_features(latitude, longitude,
                                             len(waveform))
    x = input_pipeline.shard_batch(inputs, sharding)
    logits = jitted_apply(variables, x["w"], *(
        [x["location"]] if location_features is not None else []))
    if jax.process_count() > 1:  # Only this process's rows.
      logits = multihost_utils.global_array_to_host_local_array(
          logits, sharding.mesh, sharding.spec)
    return jax.tree.map(np.asarray, jax.device_get(logits))

  return predict


# Multi-host: each process reads its own files (whole files, so pooling per
# file is local), but the jitted model runs on global batches, so every
# process takes part in every batch; per-file results are gathered at the end.

def _one_process(process_count: int | None) -> bool:
  return (jax.process_count() if process_count is None else process_count) == 1


def in_step_with_other_processes(batches: Iterable[dict],
                                 allgather=multihost_utils.process_allgather,
                                 process_count: int | None = None
                                 ) -> Iterator[dict]:
  """Yields this process's batches, then masked copies until all are done.

  Each yielded batch has `mask` all False once this process has run out, so
  the others' batches still get a partner in the jitted call.
  """
  if _one_process(process_count):
    yield from batches
    return
  template = None
  for batch in batches:
    template = batch
    allgather(np.ones((), np.int32))
    yield batch
  while True:
    others = allgather(np.zeros((), np.int32))
    if not np.any(others):
      return
    if template is None:
      raise RuntimeError("a process has no evaluation files; use fewer "
                         "processes than files")
    yield {k: np.zeros_like(v) for k, v in template.items()}


def sum_over_processes(value, allgather=multihost_utils.process_allgather,
                       process_count: int | None = None):
  if _one_process(process_count):
    return value
  return np.asarray(allgather(np.asarray(value))).sum()


def rows_of_all_processes(arrays: Mapping[str, np.ndarray],
                          allgather=multihost_utils.process_allgather,
                          process_count: int | None = None
                          ) -> dict[str, np.ndarray]:
  """Each array's rows from every process, concatenated in process order.

  Processes may hold different numbers of rows (the same within a process);
  rows are padded to the largest count for the gather and cut back after.
  """
  if _one_process(process_count):
    return dict(arrays)
  counts = np.asarray(allgather(np.asarray(len(next(iter(arrays.values()))))))
  most = int(counts.max())

  def gather(x):
    x = np.pad(x, [(0, most - len(x))] + [(0, 0)] * (x.ndim - 1))
    every = np.asarray(allgather(x))
    return np.concatenate([every[i, :n] for i, n in enumerate(counts)])

  return {k: gather(v) for k, v in arrays.items()}
