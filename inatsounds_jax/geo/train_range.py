"""The range-model job (`main.py --config=configs/sinr.py`).

Reads observations (the dataset's train split, or a CSV), trains SINR, saves
it to `WORKDIR/range_model`, draws range maps and writes
`range_results.json`: the training summary and, when the true ranges are
known (the synthetic corpus), the range quality against them.
"""

from __future__ import annotations

import os

from absl import logging
from clu import metric_writers
import jax
from jax.experimental import multihost_utils
import numpy as np

from inatsounds_jax import data
from inatsounds_jax import storage
from inatsounds_jax import workdir as workdir_lib
from inatsounds_jax.geo import range_model as range_lib

QUALITY_POINTS = 20_000  # Evenly over the sphere, ~160 km apart.


def _observations(config):
  """(observations, builder or None)."""
  if config.get("observations_csv"):
    return range_lib.observations_from_csv(config.observations_csv), None
  builder = data.prepare_from_config(config)
  return range_lib.observations_from_tfds(builder, "train"), builder


def evaluate(config, workdir: str, model: range_lib.RangeModel,
             observations: range_lib.Observations, builder) -> dict:
  """Quality against the true ranges (if known), maps, `range_results.json`."""
  counts = np.bincount(observations.located().species,
                       minlength=len(observations.species_names))
  results = {"num_species": len(model.species_names),
             "num_observations": int(len(observations.species)),
             "num_located": int(counts.sum())}
  truth_path = builder and data.true_ranges_path(builder)
  if truth_path:
    lat, lon = range_lib.sphere_points(QUALITY_POINTS)
    truth = range_lib.true_ranges(truth_path, model.species_names, lat, lon)
    results["quality"] = range_lib.quality(model.presence(lat, lon), truth,
                                           config.threshold)
    logging.info("Range quality against the true ranges: %s",
                 results["quality"])
  if config.get("map_species"):
    species = [s.strip() for s in config.map_species.split(",")]
  else:
    species = [model.species_names[i]
               for i in np.argsort(-counts, kind="stable")[:6]]
  results["maps"] = range_lib.plot_range_maps(
      model.presence, model.species_names, species,
      os.fspath(workdir_lib.path(workdir, workdir_lib.RANGE_MAPS_FILE)))
  storage.write_json(workdir_lib.path(workdir, workdir_lib.RANGE_RESULTS_FILE),
                     results)
  return results


def train_and_evaluate(config, workdir: str) -> dict:
  storage.resolve(workdir).mkdir(parents=True, exist_ok=True)
  observations, builder = _observations(config)
  writer = metric_writers.create_default_writer(workdir)

  def log(epoch, loss):
    writer.write_scalars(epoch, {"range/loss": loss})

  model = range_lib.train(
      observations, epochs=config.epochs, batch_size=config.batch_size,
      learning_rate=config.learning_rate,
      lr_decay_per_epoch=config.lr_decay_per_epoch, width=config.width,
      depth=config.depth, dropout=config.dropout,
      pos_weight=config.pos_weight, seed=config.seed, log=log)
  model.save(workdir_lib.path(workdir, workdir_lib.SAVED_RANGE_MODEL_DIR))
  writer.flush()
  return evaluate(config, workdir, model, observations, builder)


def train_for_classifier(config, workdir: str) -> str:
  """Trains `config.range_model` (a range-model job config) for a classifier.

  The range model learns from the classifier's own dataset (its train
  split) in `WORKDIR/range_model`, once: a resumed run or `--mode=eval`
  finds it there. With several processes, process 0 trains it; the others
  wait.

  Args:
    config: a classifier config with `range_model` set.
    workdir: the classifier run's workdir.

  Returns:
    The folder (the classifier's prior: the caller makes it `geo_prior`).
  """
  folder = workdir_lib.path(workdir, workdir_lib.RANGE_MODEL_DIR)
  if jax.process_index() == 0 and not (
      folder / workdir_lib.RANGE_RESULTS_FILE).exists():
    job = config.range_model.copy_and_resolve_references()
    job.update({field: config[field] for field in (
        "dataset", "data_dir", "manual_dir", "dataset_options")})
    logging.info("Training the range model for the geographic prior in %s",
                 folder)
    logging.info("%s", format_results(train_and_evaluate(job, folder)))
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("range model trained")
  return os.fspath(folder)


def evaluate_checkpoint(config, workdir: str) -> dict:
  observations, builder = _observations(config)
  return evaluate(config, workdir, range_lib.load(workdir), observations,
                  builder)


def format_results(results: dict) -> str:
  lines = [f"range model: {results['num_species']} species from "
           f"{results['num_located']} located observations"]
  if "quality" in results:
    q = results["quality"]
    lines.append(f"against the true ranges: mAP {q['map']:.3f}, true range "
                 f"kept {q['kept']:.3f}, outside masked "
                 f"{q['masked_outside']:.3f}")
  lines.append(f"maps: {results['maps']}")
  return "\n".join(lines)
