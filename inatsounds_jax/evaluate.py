"""File-level evaluation: dense windows -> softmax -> pooled per file.

Every window of every file is classified once (`input_pipeline.eval_dataset`);
window softmaxes (also for sigmoid-trained models, as in the paper) are pooled
per recording by mean and by max, then scored with `metrics`. With a
`GeoPrior`, species outside the recording's range get the window's lowest
logit before the softmax (REFERENCE s.3); results are reported both ways.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import jax
from jax.experimental import multihost_utils
import numpy as np
import tensorflow_datasets as tfds

from inatsounds_jax import input_pipeline
from inatsounds_jax import metrics as metrics_lib
from inatsounds_jax import plots
from inatsounds_jax.geo import prior as prior_lib


class FilePooler:
  """Accumulates window probabilities per recording (mean and max)."""

  def __init__(self, num_classes: int):
    self.num_classes = num_classes
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

  def scores(self) -> dict[str, np.ndarray]:
    counts = np.asarray(self._count, np.float64)[:, None]
    return {"mean": np.stack(self._sum) / counts, "max": np.stack(self._max)}


def evaluate_split(predict_logits: Callable, builder: tfds.core.DatasetBuilder,
                   split: str, window_config: input_pipeline.WindowConfig,
                   batch_size: int, prior: prior_lib.GeoPrior | None = None,
                   threshold: float = 0.1, groups=None) -> dict:
  """Metrics of one split, per pooling, with and without the prior.

  Args:
    predict_logits: waveform batch (int16 `[B, samples]`) -> logits `[B, C]`.
    prior: optional; its label list must be the classifier's.

  Returns:
    {"mean"|"max": {"no_prior"|"prior": metrics dict}, "num_windows",
     "files": {"labels", "scores"}} (the last for plots, not for JSON).
  """
  poolers = {"no_prior": None, "prior": None}
  num_windows = 0
  for batch in _in_step_with_other_processes(tfds.as_numpy(
      input_pipeline.eval_dataset(builder, split, batch_size, window_config))):
    logits = np.asarray(predict_logits(batch["waveform"]), np.float64)
    valid = batch["mask"]
    num_windows += int(valid.sum())
    views = {"no_prior": logits}
    if prior is not None:
      keep = prior.mask(batch["latitude"], batch["longitude"], threshold)
      views["prior"] = prior_lib.lowest_logit_mask(logits, keep)
    for name, view in views.items():
      if poolers[name] is None:
        poolers[name] = FilePooler(view.shape[1])
      poolers[name].add(np.asarray(jax.nn.softmax(view[valid], axis=-1)),
                        batch["recording_id"][valid], batch["label"][valid])
  result = {"num_windows": int(_sum_over_processes(num_windows))}
  for view, pooler in poolers.items():
    if pooler is None:
      continue
    labels, pooled = _files_of_all_processes(pooler)
    for pooling, scores in pooled.items():
      result.setdefault(pooling, {})[view] = metrics_lib.file_level_metrics(
          scores, labels, groups=groups)
    if view == "no_prior":
      result["files"] = {"labels": labels, "scores": pooled["mean"]}
  return result


# Multi-host: each process reads its own files (whole files, so pooling is
# local), but the jitted model runs on global batches, so every process must
# take part in every batch; pooled files are gathered before the metrics.

def _in_step_with_other_processes(batches):
  """Yields local batches; once one process runs out, it feeds masked ones
  until all have."""
  if jax.process_count() == 1:
    yield from batches
    return
  template = None
  for batch in batches:
    template = batch
    multihost_utils.process_allgather(np.ones((), np.int32))
    yield batch
  while True:
    others = multihost_utils.process_allgather(np.zeros((), np.int32))
    if not others.any():
      return
    if template is None:
      raise RuntimeError("a process has no evaluation files; use fewer "
                         "processes than files")
    yield {k: np.zeros_like(v) for k, v in template.items()}


def _sum_over_processes(value):
  if jax.process_count() == 1:
    return value
  return multihost_utils.process_allgather(np.asarray(value)).sum()


def _files_of_all_processes(pooler: FilePooler):
  """(labels, {pooling: scores}) of every process's files."""
  scores = pooler.scores()
  labels = np.asarray(pooler.labels)
  if jax.process_count() == 1:
    return labels, scores
  counts = multihost_utils.process_allgather(np.asarray(len(labels)))
  pad = int(counts.max()) - len(labels)

  def gather(x):
    x = np.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
    every = multihost_utils.process_allgather(x)
    return np.concatenate([every[i, :n] for i, n in enumerate(counts)])

  return gather(labels), {k: gather(v) for k, v in scores.items()}


def summary_for_json(result: dict) -> dict:
  """Drops arrays (per-class values, file scores) for `eval_results.json`."""
  out = {}
  for key, value in result.items():
    if key in ("files", "per_class"):
      continue
    out[key] = summary_for_json(value) if isinstance(value, dict) else value
  return out


def write_results(workdir: str, step: int, results: dict) -> str:
  path = os.path.join(workdir, "eval_results.json")
  payload = {"step": int(step),
             "splits": {s: summary_for_json(r) for s, r in results.items()}}
  with open(path, "w") as f:
    json.dump(payload, f, indent=1)
  return path


def plot_long_tail_and_confusions(path_prefix: str, result: dict,
                                  train_counts: np.ndarray,
                                  label_names: list[str], top: int = 15
                                  ) -> list[str]:
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
  predicted = result["files"]["scores"].argmax(axis=1)
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


def make_predict_fn(apply_logits: Callable, variables,
                    sharding: jax.sharding.NamedSharding
                    ) -> Callable[[np.ndarray], np.ndarray]:
  """Jitted, mesh-sharded `waveform -> logits` for this process's batches."""
  jitted = jax.jit(apply_logits, out_shardings=sharding)

  def predict(waveform: np.ndarray) -> np.ndarray:
    x = input_pipeline.shard_batch({"w": waveform}, sharding)["w"]
    logits = jitted(variables, x)
    if jax.process_count() > 1:  # Only this process's rows.
      logits = multihost_utils.global_array_to_host_local_array(
          logits, sharding.mesh, sharding.spec)
    return np.asarray(jax.device_get(logits))

  return predict

