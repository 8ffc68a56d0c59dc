"""File-level evaluation: dense windows -> softmax -> pooled per file.

The iNatSounds paper's protocol (Chasmai et al. 2025): every window of
every file is classified once (`input_pipeline.eval_dataset`); window
softmaxes (also for sigmoid-trained models, as in the paper) are pooled per
recording by mean and by max, then scored with `metrics.file_level_metrics`
(class-averaged top-1/top-5, mAP, mF1), overall and per supercategory. With
a geographic prior, species outside the recording's range get the window's
lowest logit before the softmax, and results are reported both ways. A
model with a location input (`config.location_input`) is given each
window's recording location (NaN: unknown) through `predict`.

Options (`config.evals.<name>`): `split`; `geo_prior` ("" none,
"synthetic_truth" the synthetic corpus's true ranges, or a range-model
workdir); `geo_ceiling_prior` (a second prior of the same kinds, reported
as the view "ceiling": the true ranges beside a learned prior show how
much a better range model could add); `geo_threshold` (0.1);
`min_prior_coverage` (warn when a prior covers fewer of the labels than
this fraction; a prior covering none is refused); `bootstrap` (resamples of
the files, 0 none: 95 % percentile intervals of the headline metrics, in
`eval_results.json` and on the console); `save_rows` (an option of every
evaluation: `evaluators.common`).

Rows (`EvalOutput.rows`, for comparing two runs on the same resamples,
`inatsounds_jax.compare`): "mean/no_prior" and "max/no_prior", one row per
file (its pooled probabilities, its label); the prior views' rows are not
kept (at the release's size each is files x 5,569 classes).

Metrics: `<pooling>/<view>/<metric>` for pooling mean|max, view
no_prior|prior|ceiling, metric top1|top5|map|mf1 (e.g. `mean/no_prior/map`,
the paper's headline pooling). `eval_results.json` also breaks each down by
supercategory and by the species' number of training recordings
(`metrics.TRAINING_COUNT_BINS`: the long tail the paper leaves open), and
the console shows the latter.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import tensorflow_datasets as tfds

from inatsounds_jax import data
from inatsounds_jax import input_pipeline
from inatsounds_jax import metrics as metrics_lib
from inatsounds_jax import plots
from inatsounds_jax import registry
from inatsounds_jax import scored_rows
from inatsounds_jax.evaluators import common
from inatsounds_jax.geo import prior as prior_lib

POOLINGS = ("mean", "max")
HEADLINE = ("top1", "top5", "map", "mf1")


class FilePooler:
  """Accumulates window probabilities per recording (mean and max)."""

  def __init__(self):
    self.index: dict[int, int] = {}
    self.labels: list[int] = []
    self._sum: list[np.ndarray] = []
    self._max: list[np.ndarray] = []
    self._count: list[int] = []

  def add(self, probs: np.ndarray, recording_ids, labels) -> None:
    for p, rid, label in zip(probs, recording_ids, labels):
      i = self.index.get(int(rid))
      if i is None:
        self.index[int(rid)] = len(self.labels)
        self.labels.append(int(label))
        self._sum.append(p.astype(np.float64))
        self._max.append(p.copy())
        self._count.append(1)
      else:
        self._sum[i] += p
        np.maximum(self._max[i], p, out=self._max[i])
        self._count[i] += 1

  def files(self) -> dict[str, np.ndarray]:
    """{"recording", "labels" [files], "mean" [files, C], "max" [files, C]}.
    """
    counts = np.asarray(self._count, np.float64)[:, None]
    return {"recording": np.fromiter(self.index, np.int64, len(self.index)),
            "labels": np.asarray(self.labels, np.int64),
            "mean": np.stack(self._sum) / counts, "max": np.stack(self._max)}


def evaluate_split(predict: common.PredictFn,
                   builder: tfds.core.DatasetBuilder, split: str,
                   windows: input_pipeline.WindowConfig, batch_size: int,
                   priors: dict[str, prior_lib.GeoPrior] | None = None,
                   threshold: float = 0.1, groups=None,
                   bootstrap: int = 0) -> dict:
  """Metrics of one split, per pooling, without a prior and with each of
  `priors` (view name -> prior; the model runs once for all views).
  With `bootstrap` resamples of the files, each metrics dict also holds
  `interval`: {metric: {low, high, std}} of the HEADLINE metrics (95 %
  percentile intervals, `metrics.bootstrap_over_recordings`).

  Returns:
    {"mean"|"max": {"no_prior"|<view>: metrics dict}, "num_windows",
     "files": {"recording", "labels", "mean", "max"}} (files for plots and
     rows, not for JSON).
  """
  priors = priors or {}
  poolers = {view: FilePooler() for view in ("no_prior", *priors)}
  num_windows = 0
  for batch in common.in_step_with_other_processes(tfds.as_numpy(
      input_pipeline.eval_dataset(builder, split, batch_size, windows))):
    # Images (L48) have no location: the model sees it unknown.
    logits = np.asarray(predict(input_pipeline.model_input(batch),
                                batch.get("latitude"),
                                batch.get("longitude")), np.float64)
    valid = batch["mask"]
    num_windows += int(valid.sum())
    views = {"no_prior": logits}
    for view, prior in priors.items():
      keep = prior.mask(batch["latitude"], batch["longitude"], threshold)
      views[view] = prior_lib.lowest_logit_mask(logits, keep)
    for name, view in views.items():
      poolers[name].add(np.asarray(jax.nn.softmax(view[valid], axis=-1)),
                        batch["recording_id"][valid], batch["label"][valid])
  result = {"num_windows": int(common.sum_over_processes(num_windows))}
  for view, pooler in poolers.items():
    files = common.rows_of_all_processes(pooler.files())
    for pooling in POOLINGS:
      m = metrics_lib.file_level_metrics(files[pooling], files["labels"],
                                         groups=groups)
      if bootstrap:
        m["interval"] = _intervals(files[pooling], files["labels"],
                                   bootstrap)
      result.setdefault(pooling, {})[view] = m
    if view == "no_prior":
      result["files"] = files
  return result


def row_metrics(key: str) -> scored_rows.RowMetrics:
  """The HEADLINE metrics, named `<key>/<metric>`, of rows `key`
  ("<pooling>/<view>"): (pooled file probabilities, labels) -> metrics."""

  def compute(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    m = metrics_lib.file_level_metrics(scores, labels)
    return {f"{key}/{k}": m[k] for k in HEADLINE}

  return compute


def _intervals(scores: np.ndarray, labels: np.ndarray, num_samples: int
               ) -> dict:
  """{metric: {low, high, std}} of the HEADLINE metrics, files resampled
  (a resample averages over the classes it holds)."""
  metric = row_metrics("")
  interval = metrics_lib.bootstrap_over_recordings(
      lambda s, y: list(metric(s, y).values()), np.arange(len(labels)),
      scores, labels, num_samples=num_samples)
  return {k: {"low": float(interval.low[i]), "high": float(interval.high[i]),
              "std": float(interval.std[i]), "num_samples": num_samples}
          for i, k in enumerate(HEADLINE)}


def summary_for_json(result: dict) -> dict:
  """Drops arrays (per-class values, file scores) for `eval_results.json`."""
  out = {}
  for key, value in result.items():
    if key in ("files", "per_class"):
      continue
    out[key] = summary_for_json(value) if isinstance(value, dict) else value
  return out


def plot_long_tail_and_confusions(path_prefix: str, result: dict,
                                  train_counts: np.ndarray,
                                  label_names, top: int = 15) -> list[str]:
  """Per-class top-1 against train count; the most confused species pairs."""
  plt = plots.pyplot()
  per_class = result["mean"]["no_prior"]["per_class"]
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.scatter(train_counts[per_class["class"]], per_class["top1"], s=12)
  ax.set_xscale("log")
  ax.set_xlabel("training recordings of the species")
  ax.set_ylabel("file-level top-1 (mean pooling)")
  ax.set_title("Accuracy along the long tail")
  paths = [plots.save(fig, path_prefix + "_long_tail.png")]

  labels = result["files"]["labels"]
  predicted = result["files"]["mean"].argmax(axis=1)
  wrong = labels != predicted
  pairs, counts = np.unique(np.stack([labels[wrong], predicted[wrong]], 1),
                            axis=0, return_counts=True)
  order = np.argsort(-counts, kind="stable")[:top]
  fig, ax = plt.subplots(figsize=(7, 0.35 * max(len(order), 1) + 1.2))
  ax.barh([f"{label_names[a]} -> {label_names[b]}" for a, b in pairs[order]],
          counts[order])
  ax.invert_yaxis()
  ax.set_xlabel("files of the first species predicted as the second")
  ax.set_title("Most confused species pairs")
  paths.append(plots.save(fig, path_prefix + "_confusions.png"))
  return paths


def _bin_order(item: tuple[str, dict]) -> int:
  names = metrics_lib.training_count_bins(
      [low for low, _ in metrics_lib.TRAINING_COUNT_BINS])
  return names.index(item[0])


class Evaluator:
  """File-level metrics of one split (see the module docstring)."""

  def __init__(self, context: common.EvalContext, *, split: str,
               geo_prior: str = "", geo_ceiling_prior: str = "",
               geo_threshold: float = 0.1, min_prior_coverage: float = 0.5,
               bootstrap: int = 0):
    splits = context.builder.info.splits
    if split not in splits:
      raise registry.ConfigError(
          f"split {split!r} is not in the dataset; it has {sorted(splits)}")
    self.context, self.split, self.threshold = context, split, geo_threshold
    self.bootstrap = common.bootstrap_resamples(bootstrap)
    self.priors = {
        view: context.priors(source, min_prior_coverage)
        for view, source in (("prior", geo_prior),
                             ("ceiling", geo_ceiling_prior)) if source}
    views = ("no_prior", *self.priors)
    self.metric_names = tuple(f"{pooling}/{view}/{k}" for pooling in POOLINGS
                              for view in views for k in HEADLINE)
    self.row_keys = tuple(f"{pooling}/no_prior" for pooling in POOLINGS)
    self.groups = {"training_recordings": metrics_lib.training_count_bins(
        self._train_counts())}
    classes = data.class_table(context.builder)
    if classes is not None:
      self.groups["supercategory"] = [row["supercategory"] for row in classes]

  def run(self, predict: common.PredictFn) -> common.EvalOutput:
    c = self.context
    result = evaluate_split(predict, c.builder, self.split, c.windows,
                            c.batch_size, priors=self.priors,
                            threshold=self.threshold, groups=self.groups,
                            bootstrap=self.bootstrap)
    metrics, lines = {}, []
    for pooling in POOLINGS:
      for view, m in result[pooling].items():
        metrics.update({f"{pooling}/{view}/{k}": m[k] for k in HEADLINE})
        lines.append(f"{self.split:10s} {pooling:4s} {view:8s} " + " ".join(
            f"{k} {m[k]:.3f}" + (f" [{m['interval'][k]['low']:.3f}, "
                                 f"{m['interval'][k]['high']:.3f}]"
                                 if "interval" in m else "")
            for k in HEADLINE))
    by_count = result["mean"]["no_prior"]["groups"]["training_recordings"]
    lines += [f"{self.split:10s} mean no_prior species with {name:>6s} "
              f"training recordings ({m['num_classes']}): " + " ".join(
                  f"{k} {m[k]:.3f}" for k in HEADLINE)
              for name, m in sorted(by_count.items(), key=_bin_order)]
    files = result["files"]
    rows = {key: scored_rows.ScoredRows(
        __name__, key, files["recording"], files[key.split("/")[0]],
        files["labels"], np.asarray(c.label_names)) for key in self.row_keys}
    return common.EvalOutput(
        metrics=metrics, summary=summary_for_json(result),
        text="\n".join(lines), write_artefacts=functools.partial(
            plot_long_tail_and_confusions, result=result,
            train_counts=self._train_counts(), label_names=c.label_names),
        rows=rows)

  def _train_counts(self) -> np.ndarray:
    """Training recordings per label (1 each for records built before label
    counts were written)."""
    counts = data.label_counts(self.context.builder)
    if counts is None or "train" not in counts:
      return np.ones(len(self.context.label_names))
    return np.asarray(counts["train"])
