"""The rows a set of metrics is computed from, kept to compare two models.

A metric of a model on a split (file-level top-1, window cmAP, ...) is a
function of rows: per file or per window, the model's scores, the truth
and the recording the row belongs to. Two models evaluated on the same
rows can be compared on the same resampled recordings
(`metrics.paired_difference`, `inatsounds_jax.compare`), which needs the
rows of both, possibly from two runs on two days: so they are written to a
file (`write_rows`) beside the other outputs, by the training loop (an
evaluation's option `save_rows`) and by soundscape evaluation.

A saved row set names the module whose `row_metrics(key)` computes its
metrics (a function cannot be saved), so whoever reads it computes them
exactly as the evaluation that wrote it. numpy and etils only: the
soundscape command and `compare` import no TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import dataclasses
import importlib
import io

from etils import epath
import numpy as np

from inatsounds_jax import storage

# One metric set computed from rows: (scores, truth) -> {metric name: value}.
RowMetrics = Callable[[np.ndarray, np.ndarray], dict[str, float]]


@dataclasses.dataclass(frozen=True)
class ScoredRows:
  """The rows some metrics of an evaluation are computed from.

  Attributes:
    module: the module whose `row_metrics(key)` gives the `RowMetrics` of
      these rows (e.g. "inatsounds_jax.evaluators.file_level").
    key: which of its row sets, e.g. "mean/no_prior", "window/no_prior".
    recording: `[rows]` the recording of each row (ids or names).
    scores: `[rows, classes]`.
    truth: `[rows]` labels or `[rows, classes]` positives.
    columns: `[classes]` the name of each score column (for positives,
      of each truth column too), so that two models with other labels can
      be compared on the species they share; None: unnamed.
  """
  module: str
  key: str
  recording: np.ndarray
  scores: np.ndarray
  truth: np.ndarray
  columns: np.ndarray | None = None

  def metrics(self) -> RowMetrics:
    return importlib.import_module(self.module).row_metrics(self.key)


_FIELDS = ("module", "key", "recording", "scores", "truth")
_OPTIONAL = ("columns",)


def write_rows(path: str, rows: Mapping[str, ScoredRows]) -> str:
  """Writes `rows` (by key) to the `.npz` file `path` (local or `gs://`);
  returns `path`. The file appears whole or not at all
  (`storage.write_whole`)."""
  arrays = {f"{i}_{name}": np.asarray(getattr(r, name))
            for i, r in enumerate(rows.values())
            for name in _FIELDS + _OPTIONAL if getattr(r, name) is not None}
  buffer = io.BytesIO()  # np.savez writes local files only; epath URIs too.
  np.savez_compressed(buffer, **arrays)
  storage.write_whole(path, buffer.getvalue())
  return path


def read_rows(path: str) -> dict[str, ScoredRows]:
  """The rows `write_rows` wrote to `path`, by key.

  Raises:
    ValueError: naming `path`, when it is not such a file.
  """
  try:
    with epath.Path(path).open("rb") as f, np.load(f) as stored:
      arrays = {k: stored[k] for k in stored.files}
  except (OSError, ValueError, EOFError) as e:
    raise ValueError(f"{path}: not a rows file ({e})") from None
  out = {}
  for i in range(sum(k.endswith("_module") for k in arrays)):
    try:
      fields = {name: arrays[f"{i}_{name}"] for name in _FIELDS}
    except KeyError as e:
      raise ValueError(f"{path}: not a rows file (no {e})") from None
    fields.update({name: arrays[f"{i}_{name}"] for name in _OPTIONAL
                   if f"{i}_{name}" in arrays})
    rows = ScoredRows(module=str(fields.pop("module")),
                      key=str(fields.pop("key")), **fields)
    out[rows.key] = rows
  if not out:
    raise ValueError(f"{path}: holds no rows")
  return out
