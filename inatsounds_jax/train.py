"""The training job: `train_and_evaluate(config, workdir)`.

What is trained is an objective chosen by `config.objective`
(`objectives/`: "classification", a species classifier, or
"masked_reconstruction", masked-autoencoder pretraining). An objective gives
the model, the per-batch loss and the check of its input; everything else
(the mesh, the optimizer, the NaN guard, checkpoints, resume, evaluations)
is this one loop. The model is built and loaded through `trained.py`, the
layer every job shares; nothing but `main.py` imports this module.

One jit-compiled step over a `jax.sharding.Mesh` (batch split over `data`;
parameters and optimizer state replicated, or sharded FSDP-style with
`config.shard_params`), in sections: optimizer, model and state, the step,
the run context (everything built and checked before the first step),
evaluation, and the loop. Evaluations are plug-ins (`evaluators/`, chosen by
`config.evals`); this module knows no metric or split name: it logs what
they return and keeps the best checkpoint by `config.best_metric`.

Deterministic for a seed: a run killed at any point and started again
resumes at its last checkpoint with the same data order and ends with the
same parameters. SIGTERM (how TPU VMs, Colab and Slurm announce preemption)
saves the current step before exiting.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import flax
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tensorflow_datasets as tfds

from inatsounds_jax import adaptation
from inatsounds_jax import augment
from inatsounds_jax import checkpoints
from inatsounds_jax import compilation
from inatsounds_jax import config_defaults
from inatsounds_jax import data
from inatsounds_jax import data_sources
from inatsounds_jax import input_pipeline
from inatsounds_jax import label_modes
from inatsounds_jax import losses
from inatsounds_jax import mean_teacher
from inatsounds_jax import objectives
from inatsounds_jax import processes
from inatsounds_jax import registry
from inatsounds_jax import scored_rows
from inatsounds_jax import storage
from inatsounds_jax import trained
from inatsounds_jax import workdir as workdir_lib
from inatsounds_jax.evaluators import common as evaluators
from inatsounds_jax.geo import location_input
from inatsounds_jax.geo import prior as prior_lib
from inatsounds_jax.geo import train_range
from inatsounds_jax.models import classifier as classifier_lib
from inatsounds_jax.models import convert


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any  # {} for models without batch norm.
  opt_state: Any
  ema_params: Any  # {} when EMA is off.
  loss_state: Any
  rng: jax.Array

  def variables(self, use_ema: bool = False) -> dict:
    out = {"params": self.ema_params if use_ema else self.params}
    if self.batch_stats:
      out["batch_stats"] = self.batch_stats
    return out


class NonFiniteUpdateError(FloatingPointError):
  """The loss, the gradients or the updated state became NaN or infinite."""


# ---------------------------------------------------------------------------
# Optimizer.
# ---------------------------------------------------------------------------

def learning_rate_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """Linear warm-up from `warmup_init_factor` x lr, cosine to `final_factor`."""
  lr = config.learning_rate
  warmup = int(config.warmup_epochs * steps_per_epoch)
  total = max(int(config.num_epochs * steps_per_epoch), warmup + 1)
  return optax.join_schedules([
      optax.linear_schedule(lr * config.warmup_init_factor, lr, max(warmup, 1)),
      optax.cosine_decay_schedule(lr, total - warmup,
                                  alpha=config.final_lr_factor)], [warmup])


OPTIMIZERS: registry.Registry[Callable] = registry.Registry("optimizer")
# Weight decay as L2 on the gradient, like torch's SGD and Adam.
OPTIMIZERS.add("sgd", lambda c, lr: optax.chain(
    optax.add_decayed_weights(c.weight_decay),
    optax.sgd(lr, momentum=c.momentum, nesterov=c.nesterov)))
OPTIMIZERS.add("adam", lambda c, lr: optax.chain(
    optax.add_decayed_weights(c.weight_decay), optax.adam(lr)))
OPTIMIZERS.add("adamw", lambda c, lr: optax.adamw(
    lr, *c.get("adam_betas", (0.9, 0.999)), weight_decay=c.weight_decay,
    mask=_matrices if c.get("decay_matrices_only", False) else None))


def _matrices(params):
  """Weight decay only on weights of rank >= 2 (not biases, norms, tokens'
  1-d scales), as the MAE recipes do (He et al. 2022, s. A.1)."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(config, schedule) -> optax.GradientTransformation:
  """Clipping and the named optimizer; with `freeze_blocks`, `linear_probe`
  or `layer_decay` set, wrapped by `adaptation.adapt_optimizer` (frozen
  parameters get no optimizer state)."""
  parts = []
  if config.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  parts.append(OPTIMIZERS.get(config.optimizer)(config, schedule))
  return adaptation.adapt_optimizer(optax.chain(*parts), config)


# ---------------------------------------------------------------------------
# Model and state.
# ---------------------------------------------------------------------------

def init_state(model: classifier_lib.Classifier, tx, loss: losses.Loss,
               rng: jax.Array, *, ema: bool) -> TrainState:
  """Fresh state (jitted by the caller; reads no file)."""
  init_rng, state_rng = jax.random.split(rng)
  variables = trained.init_variables(model, init_rng)
  params = variables["params"]
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      batch_stats=variables.get("batch_stats", {}),
      opt_state=tx.init(params), ema_params=params if ema else {},
      # A model without a head (the MAE) has no classes for its loss.
      loss_state=loss.init(getattr(model, "num_classes", 0)), rng=state_rng)


def load_pretrained(state: TrainState, path: str,
                    model: classifier_lib.Classifier, tx,
                    sharding: TrainState, source_grid=None,
                    time_major: bool = False) -> TrainState:
  """`state` with pretrained weights from `path` in place, resharded.

  `path` is a torchvision/timm file, the workdir of a masked-autoencoder
  pretraining run (its encoder; `adaptation.classifier_params_from_mae`),
  or a classifier's workdir or bundle of the same backbone (fine-tuning on
  other data: `adaptation.classifier_variables_from_classifier`; a head of
  another class count starts fresh).
  `source_grid` and `time_major` describe a ViT file's patch grid
  (`convert.from_torch`; e.g. AudioMAE's: (64, 8), time-major).
  Converted once on the host after the jitted init, as big_vision loads
  pretrained weights, so the file is read only when a run starts fresh and
  never becomes a constant of a compiled function.
  """
  try:
    if storage.resolve(path).is_dir():
      source = trained.load(path)
      fresh = {"params": jax.device_get(state.params),
               "batch_stats": jax.device_get(state.batch_stats)}
      if source.config.objective == "masked_reconstruction":
        loaded = {**fresh, "params": adaptation.classifier_params_from_mae(
            source, model, fresh["params"], path)}
      else:
        loaded, kept_fresh = adaptation.classifier_variables_from_classifier(
            source, model, fresh, path)
        if kept_fresh:
          logging.info("init_checkpoint %s: %s start fresh (they do not fit "
                       "this model)", path, ", ".join(kept_fresh))
    else:
      options = dict(model.backbone_options)
      loaded = classifier_lib.from_backbone_variables(convert.from_torch(
          model.backbone, path, num_classes=model.num_classes,
          in_channels=model.image.channels, image_size=model.image_size,
          head_bias_init=options.get("head_bias_init", 0.0),
          backbone_options={k: options[k] for k in convert.SHAPING_OPTIONS
                            if k in options},
          source_grid=source_grid, time_major=time_major))
  except (OSError, convert.ConversionError) as e:
    raise registry.ConfigError(f"init_checkpoint: {e}") from None

  def place(new, old, where):
    if jax.tree.structure(new) != jax.tree.structure(old):
      raise registry.ConfigError(
          f"init_checkpoint {path}: its {where} do not match model "
          f"{model.backbone!r}")
    return jax.tree.map(
        lambda n, o, s: jax.device_put(np.asarray(n, o.dtype), s),
        new, old, getattr(sharding, where))

  params = place(loaded["params"], state.params, "params")
  # Statistics the checkpoint lacks (a probe's head norm) start fresh.
  batch_stats = (place(loaded.get("batch_stats", state.batch_stats),
                       state.batch_stats, "batch_stats")
                 if state.batch_stats else {})
  return state.replace(
      params=params, batch_stats=batch_stats,
      opt_state=jax.jit(tx.init, out_shardings=sharding.opt_state)(params),
      ema_params=params if state.ema_params else {})


def state_sharding(abstract_state, mesh, shard_params: bool):
  """Replicated, or (FSDP) each array split along its largest divisible axis."""
  n = mesh.shape["data"]

  def spec(x):
    if shard_params and x.ndim:
      for axis in np.argsort(x.shape)[::-1]:
        if x.shape[axis] % n == 0 and x.shape[axis] >= n:
          parts = [None] * x.ndim
          parts[axis] = "data"
          return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
              *parts))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  out = jax.tree.map(spec, abstract_state)
  # Per-example loss state is split by row even when parameters are not.
  return out.replace(loss_state=jax.tree.map(
      lambda p: jax.sharding.NamedSharding(mesh, p),
      losses.state_specs(abstract_state.loss_state),
      is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)))


# ---------------------------------------------------------------------------
# The step.
# ---------------------------------------------------------------------------

def _all_finite(tree) -> jax.Array:
  leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.ones((), bool)


def train_step(state: TrainState, batch: dict, *, model, tx, loss,
               augment_config: augment.AugmentConfig, ema_decay: float,
               schedule, objective: objectives.Objective | None = None,
               teacher: mean_teacher.MeanTeacher | None = None
               ) -> tuple[TrainState, dict]:
  """One update of `objective` (default: classification, with the mean
  `teacher` if given). Unless the loss, the gradients and the updated state
  are all finite, the update is skipped (only the step count moves on) and
  the metrics say which of the three was not."""
  objective = objective or objectives.get("classification")
  step_rng = jax.random.fold_in(state.rng, state.step)
  options = {"teacher": teacher} if teacher is not None else {}
  (value, (extra, updates, loss_state)), grads = jax.value_and_grad(
      functools.partial(objective.loss, model=model, loss=loss,
                        augment_config=augment_config, **options),
      has_aux=True)(state.params, state, batch, step_rng)
  changes, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, changes)
  ema = state.ema_params
  if ema_decay:
    ema = optax.incremental_update(params, ema, 1.0 - ema_decay)
  new = state.replace(step=state.step + 1, params=params,
                      batch_stats=updates.get("batch_stats", state.batch_stats),
                      opt_state=opt_state, ema_params=ema,
                      loss_state=loss_state)
  finite = {"finite_loss": jnp.isfinite(value),
            "finite_gradients": _all_finite(grads),
            "finite_update": _all_finite(new)}
  ok = finite["finite_loss"] & finite["finite_gradients"] & finite[
      "finite_update"]
  # Keep the old state (but count the step) so nothing non-finite is saved.
  new = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new,
                     state.replace(step=state.step + 1))
  metrics = {"loss": value, **extra, "grad_norm": optax.global_norm(grads),
             "learning_rate": schedule(state.step), **finite}
  return new, metrics


def non_finite_message(step: int, metrics: dict, origin: str) -> str | None:
  """What went wrong at `step` (host metrics of that step), or None."""
  if metrics["finite_loss"] and metrics["finite_gradients"] and metrics[
      "finite_update"]:
    return None
  if not metrics["finite_loss"]:
    what = f"the loss became {float(metrics['loss'])}"
  elif not metrics["finite_gradients"]:
    what = (f"the gradients became non-finite (the loss was "
            f"{float(metrics['loss']):.4g})")
  else:
    what = "the updated parameters or optimizer state became non-finite"
  return (f"at step {step} {what}; the update was skipped and nothing "
          f"non-finite was saved. This run {origin}. Lower learning_rate, "
          "set grad_clip_norm, or check the data.")


# ---------------------------------------------------------------------------
# The run context: everything built and checked before the first step.
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RunContext:
  """What a classifier run is made of (built by `setup`)."""
  mesh: jax.sharding.Mesh
  data_sharding: jax.sharding.NamedSharding
  builder: tfds.core.DatasetBuilder
  train_sources: tuple[data_sources.Source, ...]  # What training reads.
  objective: objectives.Objective
  model: Any  # The objective's model (a `Classifier` for classification).
  windows: input_pipeline.WindowConfig
  loss: losses.Loss
  labels: label_modes.LabelObserver
  priors: prior_lib.Priors  # Every geographic prior of the run, by source.
  # Host features of the model's location input (None: it has none).
  location: location_input.LocationFeatures | None
  teacher: mean_teacher.MeanTeacher | None
  schedule: optax.Schedule
  tx: optax.GradientTransformation
  steps_per_epoch: int
  total_steps: int
  init: Callable[[], TrainState]  # Jitted, sharded fresh state.
  # Jitted (variables, waveform[, location]) -> the model's outputs, for
  # the evaluations: jitted once per run, so that it compiles once.
  apply_logits: Callable
  abstract_state: TrainState
  state_sharding: TrainState
  evaluators: tuple[evaluators.ScheduledEvaluator, ...]


def check_config(config, splits, num_devices: int, process_count: int
                 ) -> None:
  """Problems visible before any work, each named by its field.

  Raises:
    registry.ConfigError.
  """
  if config.train_split not in splits:
    raise registry.ConfigError(
        f"train_split {config.train_split!r} is not in the dataset; it has "
        f"{sorted(splits)}")
  for field in ("batch_size", "eval_batch_size"):
    value = config[field]
    for what, n in (("devices", num_devices), ("processes", process_count)):
      if value <= 0 or value % n:
        raise registry.ConfigError(
            f"{field}={value} must be a positive multiple of the {n} {what}")
  if config.num_epochs <= 0:
    raise registry.ConfigError(f"num_epochs={config.num_epochs} must be > 0")
  for name, options in config.evals.items():
    if not (options.get("every_epochs", 1.0) >= 0):
      raise registry.ConfigError(f"evals.{name}.every_epochs must be >= 0")


def _check_best_metric(best_metric: str,
                       scheduled: Sequence[evaluators.ScheduledEvaluator]
                       ) -> None:
  name, _, metric = best_metric.partition("/")
  periodic = {s.name: s for s in scheduled if s.every_epochs > 0}
  if name not in periodic:
    raise registry.ConfigError(
        f"best_metric {best_metric!r} names evaluation {name!r}; periodic "
        f"evaluations (every_epochs > 0): {sorted(periodic)}")
  known = periodic[name].evaluator.metric_names
  if metric not in known:
    raise registry.ConfigError(
        f"best_metric {best_metric!r}: evaluation {name!r} reports "
        f"{sorted(known)}")


def loss_context(builder: tfds.core.DatasetBuilder, train_split: str,
                 steps_per_epoch: int, mesh,
                 schedule: optax.Schedule | None = None
                 ) -> losses.LossContext:
  """What the loss needs from the data: per-example rows, expected
  positives (from strong labels, where the records have them), the train
  split's label counts; and from the run: its steps per epoch and learning
  rate `schedule`."""
  sources = data.label_sources(builder)
  counts = (data.label_counts(builder) or {}).get(train_split, ())
  return losses.LossContext(
      class_counts=tuple(float(n) for n in counts),
      num_examples=int(sources["example_index_size"].get(
          train_split, builder.info.splits[train_split].num_examples)),
      num_assets=int(sources["asset_index_size"].get(train_split, 0)),
      steps_per_epoch=steps_per_epoch, mesh=mesh, learning_rate=schedule,
      expected_positives=float(sources["mean_audible_species"].get(
          train_split, 0.0)))


def setup(config: ml_collections.ConfigDict, devices=None) -> RunContext:
  """Builds the run and checks the config; raises `ConfigError` early."""
  if config.get("distributed"):
    processes.initialize()
  input_pipeline.hide_gpus_from_tensorflow()
  devices = jax.devices() if devices is None else list(devices)
  losses.LOSSES.get(config.loss)  # An unknown name fails first, by name.
  mesh = jax.sharding.Mesh(np.array(devices), ("data",))
  builder = data.prepare_from_config(config)
  check_config(config, builder.info.splits, len(devices),
               jax.process_count())
  objective = objectives.get(config.objective)
  objective.check_input(config, builder)
  label_names = tuple(builder.info.features["label"].names)
  if config.get("pretrain_sources") and objective.uses_labels:
    raise registry.ConfigError(
        "pretrain_sources: only objectives that use no labels (e.g. "
        "masked_reconstruction) can read unlabelled sources")
  train_sources = tuple(data_sources.from_config(config, builder))
  steps_per_epoch = max(
      1, sum(s.num_examples for s in train_sources) // config.batch_size)
  schedule = learning_rate_schedule(config, steps_per_epoch)
  loss = losses.from_config(config, loss_context(
      builder, config.train_split, steps_per_epoch, mesh, schedule))
  losses.check_rows_fit(loss, len(label_names), len(devices))
  priors = prior_lib.Priors(label_names, data.true_ranges_path(builder))
  labels = label_modes.from_config(config, builder, label_names, priors)
  location = location_input.from_config(config, priors)
  if location is not None and not objective.uses_labels:
    raise registry.ConfigError(
        f"location_input {config.location_input!r} is for classifiers; "
        f"objective {config.get('objective')!r} has no logits to add it to")
  teacher = mean_teacher.from_config(config, steps_per_epoch, priors)
  model = objective.make_model(config, len(label_names), loss.multilabel)
  windows = trained.window_config(model, config.eval_stride_frames)

  def apply_logits(variables, inputs, *location):
    # `location` only for a model with a location input (not the MAE).
    return model.apply(variables, inputs,
                       **({"location": location[0]} if location else {}))

  tx = make_optimizer(config, schedule)
  init = functools.partial(init_state, model, tx, loss,
                           jax.random.PRNGKey(config.seed),
                           ema=bool(config.ema_decay))
  abstract = jax.eval_shape(init)
  sharding = state_sharding(abstract, mesh, config.get("shard_params", False))
  scheduled = tuple(evaluators.from_config(
      config.evals, evaluators.EvalContext(
          builder=builder, windows=windows, batch_size=config.eval_batch_size,
          label_names=label_names, priors=priors)))
  _check_best_metric(config.best_metric, scheduled)
  data_sharding = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec("data"))
  return RunContext(
      mesh=mesh, data_sharding=data_sharding,
      builder=builder, train_sources=train_sources, objective=objective,
      model=model, windows=windows, loss=loss, labels=labels,
      priors=priors, location=location, teacher=teacher, schedule=schedule,
      tx=tx, steps_per_epoch=steps_per_epoch,
      total_steps=int(config.num_epochs * steps_per_epoch),
      init=jax.jit(init, out_shardings=sharding),
      apply_logits=evaluators.jit_apply(apply_logits, data_sharding),
      abstract_state=abstract,
      state_sharding=sharding, evaluators=scheduled)


# ---------------------------------------------------------------------------
# Evaluation.
# ---------------------------------------------------------------------------

def run_evaluators(run: RunContext, state: TrainState, use_ema: bool,
                   scheduled: Sequence[evaluators.ScheduledEvaluator]
                   ) -> dict[str, evaluators.EvalOutput]:
  predict = evaluators.make_predict_fn(
      run.apply_logits, state.variables(use_ema), run.data_sharding,
      run.location)
  return {s.name: s.evaluator.run(predict) for s in scheduled}


def write_outputs(workdir: str, step: int,
                  outputs: dict[str, evaluators.EvalOutput],
                  final: Sequence[evaluators.ScheduledEvaluator] = ()
                  ) -> None:
  """`eval_results.json`, process 0; for the `final` evaluations also
  their artefacts and, with `save_rows`, their rows
  (`workdir.eval_rows_path`)."""
  if jax.process_index() != 0:
    return
  workdir = storage.resolve(workdir)
  storage.write_json(workdir / workdir_lib.EVAL_RESULTS_FILE,
                     {"step": int(step),
                      "evals": {name: o.summary
                                for name, o in outputs.items()}})
  for s in final:
    outputs[s.name].write_artefacts(os.fspath(workdir / s.name))
    if s.save_rows:
      scored_rows.write_rows(
          os.fspath(workdir_lib.eval_rows_path(workdir, s.name)),
          outputs[s.name].rows)


def write_label_table(workdir: str, builder: tfds.core.DatasetBuilder) -> None:
  """`WORKDIR/classes.json`: the model's labels in output order (species,
  common name, supercategory, taxonomy, category id where the dataset has
  them), so a workdir describes its outputs without the dataset."""
  if jax.process_index() != 0:
    return
  table = data.class_table(builder) or [
      {"species": name} for name in builder.info.features["label"].names]
  storage.write_json(workdir_lib.path(workdir, workdir_lib.LABELS_FILE), table)


def run_checkpoints(workdir: str, config) -> checkpoints.RunCheckpoints:
  return checkpoints.RunCheckpoints(workdir, config.keep_checkpoints,
                                    config.best_metric,
                                    config.get("best_mode", "max"))


def fresh_state(run: RunContext, config) -> tuple[TrainState, str]:
  """(the first state, where it came from): a random initialisation, with
  `config.init_checkpoint`'s weights in place when set.

  Raises:
    registry.ConfigError: init_checkpoint cannot be read or does not fit.
  """
  state = run.init()
  if not config.get("init_checkpoint"):
    return state, "started from a random initialisation"
  state = load_pretrained(
      state, config.init_checkpoint, run.model, run.tx, run.state_sharding,
      source_grid=tuple(config.get("init_checkpoint_grid", ())) or None,
      time_major=config.get("init_checkpoint_time_major", False))
  return state, f"started from init_checkpoint {config.init_checkpoint}"


def with_own_range_model(config: ml_collections.ConfigDict, workdir: str
                          ) -> ml_collections.ConfigDict:
  """`config`, or for a config with `range_model` a copy whose `geo_prior`
  (and so every evaluation's) is the range model trained for it first
  (`train_range.train_for_classifier`). The copy is what the workdir
  records, so a loaded model finds its prior there."""
  if not config.get("range_model"):
    return config
  folder = train_range.train_for_classifier(config, workdir)
  config = copy.deepcopy(config)  # Keeps the evaluations' references.
  config.geo_prior = folder
  return config


def format_results(outputs: dict[str, evaluators.EvalOutput]) -> str:
  return "\n".join(o.text for o in outputs.values())


def evaluate_checkpoint(config, workdir: str, devices=None
                        ) -> dict[str, evaluators.EvalOutput]:
  """`--mode=eval`: every evaluation of the best (else latest) checkpoint.

  Raises:
    FileNotFoundError: `workdir` has no checkpoint; found before any work
      (no range model trained, nothing written).
  """
  checkpoints.check_bucket_client(workdir)  # Before any work.
  if not any(workdir_lib.path(workdir, name).exists()
             for name in (workdir_lib.CHECKPOINTS_DIR, workdir_lib.BEST_DIR)):
    raise FileNotFoundError(f"no checkpoint in {workdir} to evaluate")
  config = with_own_range_model(config, workdir)
  run = setup(config, devices)
  ckpt = run_checkpoints(workdir, config)
  restored = (ckpt.restore_best(run.abstract_state, run.state_sharding) or
              ckpt.restore_latest(run.abstract_state, run.state_sharding))
  if restored is None:
    raise FileNotFoundError(f"no checkpoint in {workdir} to evaluate")
  state, step = restored
  outputs = run_evaluators(run, state, bool(config.ema_decay), run.evaluators)
  write_outputs(workdir, step, outputs, run.evaluators)
  return outputs


# ---------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------

class _SigtermFlag:
  """Set when SIGTERM arrives (main thread only; elsewhere never set)."""

  def __init__(self):
    self.event = threading.Event()
    self.previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self.previous = signal.signal(signal.SIGTERM,
                                    lambda *_: self.event.set())
    return self

  def __exit__(self, *exc):
    if self.previous is not None:
      signal.signal(signal.SIGTERM, self.previous)

  def is_set(self) -> bool:
    local = np.asarray(self.event.is_set(), np.int32)
    if jax.process_count() == 1:
      return bool(local)
    return bool(np.any(multihost_utils.process_allgather(local)))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices=None) -> dict[str, evaluators.EvalOutput]:
  """Trains with periodic evaluation; resumes from `workdir` if possible.

  `devices` (default: all) form the mesh; the global batch is split over
  them, so results do not depend on how many there are. With
  `config.range_model` set, the run first trains its own geographic prior.
  """
  checkpoints.check_bucket_client(workdir)  # Before any work.
  config = with_own_range_model(config, workdir)
  run = setup(config, devices)
  # A new run builds its first state (reading init_checkpoint) before it
  # writes anything, so a refusal at start-up leaves the workdir as it was.
  fresh = None
  if not workdir_lib.path(workdir, workdir_lib.CHECKPOINTS_DIR).exists():
    fresh = fresh_state(run, config)
  storage.resolve(workdir).mkdir(parents=True, exist_ok=True)
  ckpt = run_checkpoints(workdir, config)
  has_checkpoint = bool(ckpt.latest.all_steps())
  checkpoints.check_config_for_resume(workdir, config, has_checkpoint,
                                      defaults=config_defaults.classifier())
  write_label_table(workdir, run.builder)
  restored = ckpt.restore_latest(run.abstract_state, run.state_sharding)
  if restored is not None:
    state, start_step = restored
    origin = f"resumed from checkpoint step {start_step} in {workdir}"
    logging.info("Resumed from step %d", start_step)
  else:
    (state, origin), start_step = fresh or fresh_state(run, config), 0
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)
  step_fn = compilation.jit(
      functools.partial(
          train_step, model=run.model, tx=run.tx, loss=run.loss,
          augment_config=augment.AugmentConfig(**config.augment),
          ema_decay=config.ema_decay, schedule=run.schedule,
          objective=run.objective, teacher=run.teacher),
      in_shardings=(run.state_sharding, run.data_sharding),
      out_shardings=(run.state_sharding, None), donate_argnums=0)
  train_iter = iter(data_sources.train_dataset(
      run.train_sources, config.batch_size, run.windows, seed=config.seed,
      start_step=start_step, num_epochs=int(np.ceil(config.num_epochs)),
      shuffle_buffer=config.shuffle_buffer))
  report = periodic_actions.ReportProgress(num_train_steps=run.total_steps,
                                           writer=writer)
  periodic = [(s, max(1, int(s.every_epochs * run.steps_per_epoch)))
              for s in run.evaluators if s.every_epochs > 0]
  use_ema = bool(config.ema_decay)
  pending = []  # Device metrics of steps not yet checked on the host.

  def check_pending(step: int) -> dict:
    """Raises on a skipped update; means of the pending steps' metrics."""
    host = jax.device_get(pending)
    if not host:
      return {}
    first = step - len(host) + 1
    for i, m in enumerate(host):
      message = non_finite_message(first + i, m, origin)
      if message:
        raise NonFiniteUpdateError(message)
    pending.clear()
    return {k: float(np.mean([m[k] for m in host]))
            for k in host[0] if not k.startswith("finite_")}

  outputs, step = {}, start_step
  with _SigtermFlag() as sigterm:
    for step in range(start_step + 1, run.total_steps + 1):
      batch = {k: v.numpy() for k, v in next(train_iter).items()}
      batch = input_pipeline.shard_batch(
          {**{k: batch[k] for k in input_pipeline.TRAIN_KEYS if k in batch},
           **(run.labels(batch) if run.objective.uses_labels else {}),
           **({"location": run.location(batch["latitude"],
                                        batch["longitude"])}
              if run.location else {}),
           **(run.teacher.host_fields(batch) if run.teacher else {})},
          run.data_sharding)
      state, metrics = step_fn(state, batch)
      pending.append(metrics)
      report(step)
      last = step == run.total_steps
      if step % config.log_every_steps == 0 or last:
        writer.write_scalars(step, {f"train/{k}": v for k, v in
                                    check_pending(step).items()})
      due = [s for s, every in periodic if step % every == 0 or last]
      stopping = sigterm.is_set()
      if step % config.checkpoint_every_steps == 0 or last or stopping:
        check_pending(step)
        ckpt.save_latest(step, state)
      if stopping:
        ckpt.wait()
        raise checkpoints.Preempted(step, workdir)
      if due:
        check_pending(step)
        outputs = run_evaluators(run, state, use_ema, due)
        writer.write_scalars(step, {f"{name}/{k}": v
                                    for name, o in outputs.items()
                                    for k, v in o.metrics.items()})
        write_outputs(workdir, step, outputs)
        name, _, metric = config.best_metric.partition("/")
        if name in outputs:
          ckpt.save_best(step, state, outputs[name].metrics[metric])
  ckpt.wait()

  # -- Final evaluation of the best checkpoint -------------------------------
  restored = ckpt.restore_best(run.abstract_state, run.state_sharding)
  if restored is not None and restored[1] != int(state.step):
    state, step = restored
    outputs = {}
  # What already ran on this very state is reused.
  todo = [s for s in run.evaluators if s.name not in outputs]
  outputs.update(run_evaluators(run, state, use_ema, todo))
  outputs = {s.name: outputs[s.name] for s in run.evaluators}
  write_outputs(workdir, int(state.step), outputs, run.evaluators)
  writer.flush()
  return outputs
