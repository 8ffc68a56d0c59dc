"""Two runs compared on the same resampled recordings: is A better than B?

    python -m inatsounds_jax.compare --a=WORKDIR_A --b=WORKDIR_B \\
        [--evaluation=validation] [--rows=mean/no_prior] \\
        [--bootstrap=1000] [--level=0.95] [--seed=0]

--a and --b name what was evaluated:

- a training workdir: its evaluation --evaluation must have kept its rows
  (the evaluation's option `save_rows`, e.g.
  `--config.evals.validation.save_rows=True`, writes
  `WORKDIR/<evaluation>_rows.npz` at the end of training; add it to a
  finished run's command with `--mode=eval`);
- the output folder of `inatsounds_jax.evaluate` (soundscapes; its
  `rows.npz`): two models, or a model and BirdNET's tables, judged on the
  same annotated recordings, where they scored the same species;
- or a rows file itself.

For every metric of the rows the command prints A, B and A - B with its
percentile interval over recordings drawn the same for both runs
(`metrics.paired_difference`), and a verdict: "A better" or "B better"
when the interval excludes 0, else "cannot tell".

Why paired: two runs scored on the same recordings share those
recordings' difficulty, which dominates each run's own interval on a small
split; the difference's interval leaves it out. Runs with overlapping
intervals (each from `bootstrap`) can still be told apart this way, and
benchmarks/spml.py, mae.py and soundscape_transfer.py judge the studies'
orderings so.

Both runs must have been evaluated on the same rows (the same split of
the same records, the same labels); anything else is refused, naming the
files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import os

from absl import app
from absl import flags
import numpy as np

from inatsounds_jax import cli
from inatsounds_jax import metrics as metrics_lib
from inatsounds_jax import scored_rows
from inatsounds_jax import soundscapes
from inatsounds_jax import storage
from inatsounds_jax import workdir as workdir_lib


@dataclasses.dataclass(frozen=True)
class Comparison:
  """One metric of two runs on the same rows.

  Attributes:
    metric: its name, as the evaluation logs it.
    a, b: each run's value on all rows.
    difference: a - b with its interval over paired resamples.
    classes: the score columns compared (for runs with other labels, the
      species both scored).
  """
  metric: str
  a: float
  b: float
  difference: metrics_lib.BootstrapInterval
  classes: int

  @property
  def sign(self) -> int:
    """1: A better (the interval above 0), -1: B better, 0: cannot tell."""
    if self.difference.low > 0:
      return 1
    if self.difference.high < 0:
      return -1
    return 0

  @property
  def verdict(self) -> str:
    return {1: "A better", -1: "B better", 0: "cannot tell"}[self.sign]


def aligned(a: scored_rows.ScoredRows, b: scored_rows.ScoredRows
            ) -> tuple[scored_rows.ScoredRows, scored_rows.ScoredRows]:
  """`a` and `b` with their rows in one order (by recording, a recording's
  rows in their own order: processes may gather recordings in another
  order), and, where both name their columns differently and the truth is
  per column (soundscapes: a model and BirdNET scored other species), on
  the columns both hold, in `a`'s order.

  Raises:
    ValueError: the rows are not the same (another evaluator or row set,
      other recordings, other windows, other labels or classes, no shared
      column).
  """
  if (a.module, a.key) != (b.module, b.key):
    raise ValueError(f"rows of {a.module} {a.key!r} cannot be compared "
                     f"with rows of {b.module} {b.key!r}")
  if (a.columns is not None and b.columns is not None
      and not np.array_equal(a.columns, b.columns)):
    if a.truth.ndim != 2:  # Labels index the columns: they must agree.
      raise ValueError(f"rows {a.key!r}: the runs have other labels")
    a, b = _shared_columns(a, b)

  def sort(rows):
    order = np.argsort(rows.recording, kind="stable")
    return dataclasses.replace(rows, recording=rows.recording[order],
                               scores=rows.scores[order],
                               truth=rows.truth[order])

  a, b = sort(a), sort(b)
  if not np.array_equal(a.recording, b.recording):
    raise ValueError(
        f"rows {a.key!r}: the runs were evaluated on other recordings "
        f"({len(np.unique(a.recording))} and {len(np.unique(b.recording))} "
        f"recordings, {len(a.recording)} and {len(b.recording)} rows)")
  if a.scores.shape != b.scores.shape:
    raise ValueError(f"rows {a.key!r}: the runs have other classes (scores "
                     f"{a.scores.shape} and {b.scores.shape}: models with "
                     "other labels, or soundscape evaluations that scored "
                     "other species)")
  if not np.array_equal(a.truth, b.truth):
    raise ValueError(f"rows {a.key!r}: the same recordings have other "
                     "labels in the two runs (other records or labels)")
  return a, b


def _shared_columns(a: scored_rows.ScoredRows, b: scored_rows.ScoredRows
                    ) -> tuple[scored_rows.ScoredRows, scored_rows.ScoredRows]:
  """Both rows on the columns they both name, in `a`'s order."""
  index_b = {name: j for j, name in enumerate(b.columns)}
  keep_a = [j for j, name in enumerate(a.columns) if name in index_b]
  if not keep_a:
    raise ValueError(f"rows {a.key!r}: the two share no class (e.g. "
                     f"{list(a.columns[:3])} and {list(b.columns[:3])})")
  keep_b = [index_b[a.columns[j]] for j in keep_a]

  def subset(rows, keep):
    return dataclasses.replace(rows, scores=rows.scores[:, keep],
                               truth=rows.truth[:, keep],
                               columns=rows.columns[keep])

  return subset(a, keep_a), subset(b, keep_b)


def compare(a: scored_rows.ScoredRows, b: scored_rows.ScoredRows,
            num_samples: int = 1000, level: float = 0.95, seed: int = 0,
            metrics: Sequence[str] | None = None) -> list[Comparison]:
  """The metrics of rows `a` and `b` (one row set of one evaluation in two
  runs), A - B with its paired interval: every metric the rows give, or
  those named in `metrics`, in that order.

  Raises:
    ValueError: the rows are not the same (`aligned`), or `metrics` names
      one the rows do not give.
  """
  a, b = aligned(a, b)
  compute = a.metrics()
  value_a, value_b = compute(a.scores, a.truth), compute(b.scores, b.truth)
  names = list(value_a) if metrics is None else list(metrics)
  unknown = sorted(set(names) - set(value_a))
  if unknown:
    raise ValueError(f"rows {a.key!r} give no metric {unknown}; they give "
                     f"{sorted(value_a)}")

  def values(s, t):
    found = compute(s, t)
    return [found[n] for n in names]

  difference = metrics_lib.paired_difference(
      values, a.recording,
      (a.scores, a.truth), (b.scores, b.truth), num_samples=num_samples,
      level=level, seed=seed)

  def one(field, i):
    return np.atleast_1d(getattr(difference, field))[i].item()

  return [Comparison(
      name, float(value_a[name]), float(value_b[name]),
      metrics_lib.BootstrapInterval(
          **{f: one(f, i) for f in ("estimate", "low", "high", "std",
                                    "num_valid")},
          level=level, num_samples=num_samples), a.scores.shape[1])
          for i, name in enumerate(names)]


def ordering_verdict(pairs: Sequence[Comparison]) -> str:
  """Whether several pairs of runs (e.g. one per corpus and seed) say that
  A is better than B, each pair judged by its own paired interval:
  "agrees" when every pair says A better, "disagrees" when every pair says
  B better, else "cannot tell (k of n: A better, m: B better)"."""
  signs = [c.sign for c in pairs]
  if not signs:
    raise ValueError("no pairs of runs to judge")
  if all(s == 1 for s in signs):
    return "agrees"
  if all(s == -1 for s in signs):
    return "disagrees"
  return (f"cannot tell ({signs.count(1)} of {len(signs)}: A better, "
          f"{signs.count(-1)}: B better)")


def rows_file(path: str, evaluation: str) -> str:
  """`path` itself, or a folder's rows file: a soundscape evaluation's, else
  a training workdir's of `evaluation` (local or `gs://`)."""
  folder = storage.resolve(path)
  if not folder.is_dir():
    return path
  if (folder / soundscapes.ROWS_FILE).exists():
    return os.fspath(folder / soundscapes.ROWS_FILE)
  return os.fspath(workdir_lib.eval_rows_path(path, evaluation))


def compare_files(path_a: str, path_b: str, keys: list[str] | None = None,
                  **options) -> dict[str, list[Comparison]]:
  """`compare` of each row set two rows files share (or of `keys`), by key.

  Raises:
    ValueError: naming the file, when one is missing or not a rows file, a
      key is in neither, or the rows are not the same.
  """
  rows = {}
  for path in (path_a, path_b):
    if not storage.resolve(path).exists():
      raise ValueError(
          f"{path}: no such rows file; run the evaluation with its option "
          "save_rows=True (e.g. --config.evals.validation.save_rows=True; "
          "inatsounds_jax.evaluate writes rows.npz itself)")
    rows[path] = scored_rows.read_rows(path)
  rows_a, rows_b = rows[path_a], rows[path_b]
  shared = [k for k in rows_a if k in rows_b]
  for key in keys or []:
    if key not in shared:
      raise ValueError(f"rows {key!r} are not in both {path_a} and "
                       f"{path_b}; both hold {shared}")
  out = {}
  for key in keys or shared:
    try:
      out[key] = compare(rows_a[key], rows_b[key], **options)
    except ValueError as e:
      raise ValueError(f"{path_a} against {path_b}: {e}") from None
  return out


def report(comparisons: Mapping[str, list[Comparison]]) -> str:
  """Per row set, its classes compared; one line per metric: A, B, A - B
  [interval], verdict."""
  lines = []
  for key, found in comparisons.items():
    if found:
      lines.append(f"{key}: {found[0].classes} classes")
    for c in found:
      d = c.difference
      lines.append(f"{c.metric:28s} A {c.a:.4f}  B {c.b:.4f}  A-B "
                   f"{d.estimate:+.4f} [{d.low:+.4f}, {d.high:+.4f}]  "
                   f"{c.verdict}")
  return "\n".join(lines)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """The command's flags, on `flag_values` (defined only when this module
  is the program, as the other commands' flags)."""
  fv = {"flag_values": flag_values}
  flags.DEFINE_string("a", None, "Run A: a training workdir, the output "
                      "folder of inatsounds_jax.evaluate, or a rows file.",
                      **fv)
  flags.DEFINE_string("b", None, "Run B, as --a.", **fv)
  flags.DEFINE_string("evaluation", "validation",
                      "The evaluation's name in config.evals (for "
                      "workdirs).", **fv)
  flags.DEFINE_list("rows", None, "Row sets to compare (e.g. "
                    "mean/no_prior, no_prior/window); default: every one "
                    "both runs hold.", **fv)
  flags.DEFINE_integer("bootstrap", 1000, "Resamples of the recordings.",
                       lower_bound=2, **fv)
  flags.DEFINE_float("level", 0.95, "The intervals' coverage.",
                     lower_bound=0.5, upper_bound=0.999, **fv)
  flags.DEFINE_integer("seed", 0, "Seed of the resamples.", **fv)
  flags.mark_flags_as_required(["a", "b"], **fv)


def main(argv):
  del argv
  f = flags.FLAGS
  try:
    found = compare_files(rows_file(f.a, f.evaluation),
                          rows_file(f.b, f.evaluation), f.rows,
                          num_samples=f.bootstrap, level=f.level,
                          seed=f.seed)
  except Exception as e:  # pylint: disable=broad-except
    cli.fail_on(e)
  print(report(found))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
