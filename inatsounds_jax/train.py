"""The training loop: `train_and_evaluate(config, workdir)`.

One jit-compiled step over a `jax.sharding.Mesh` (batch split over `data`;
parameters and optimizer state replicated, or sharded FSDP-style with
`config.shard_params`), in sections: mesh, data, model, optimizer, state and
sharding, checkpoints, step, loop with periodic evaluation. Deterministic for
a seed: a run killed at any point and started again resumes at its last
checkpoint with the same data order and ends with the same parameters.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from inatsounds_jax import augment
from inatsounds_jax import data
from inatsounds_jax import evaluate
from inatsounds_jax import frontend as frontend_lib
from inatsounds_jax import input_pipeline
from inatsounds_jax import losses
from inatsounds_jax import models
from inatsounds_jax import synthetic
from inatsounds_jax.geo import prior as prior_lib
from inatsounds_jax.geo import range_model as range_lib
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


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite."""


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


OPTIMIZERS = {
    # Weight decay as L2 on the gradient, like torch's SGD and Adam.
    "sgd": lambda c, lr: optax.chain(
        optax.add_decayed_weights(c.weight_decay),
        optax.sgd(lr, momentum=c.momentum, nesterov=c.nesterov)),
    "adam": lambda c, lr: optax.chain(optax.add_decayed_weights(c.weight_decay),
                                      optax.adam(lr)),
    "adamw": lambda c, lr: optax.adamw(lr, weight_decay=c.weight_decay),
}


def make_optimizer(config, schedule) -> optax.GradientTransformation:
  if config.optimizer not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {config.optimizer!r}; choose from "
                     f"{sorted(OPTIMIZERS)}")
  parts = []
  if config.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  parts.append(OPTIMIZERS[config.optimizer](config, schedule))
  return optax.chain(*parts)


# ---------------------------------------------------------------------------
# Model and state.
# ---------------------------------------------------------------------------

def make_model(config, num_classes: int) -> classifier_lib.Classifier:
  options = dict(config.get("model_options", {}))
  if config.get("dtype", "float32") == "bfloat16":
    options["dtype"] = jnp.bfloat16
  if losses.is_multilabel(config.loss):
    options.setdefault("head_bias_init", models.head_bias_for_bce(num_classes))
  size = config.image.size
  return classifier_lib.Classifier(
      backbone=config.model, num_classes=num_classes,
      frontend=frontend_lib.get_config(config.frontend_preset),
      image=augment.ImageConfig(size=tuple(size) if size else None,
                                channels=config.image.channels),
      backbone_options=tuple(sorted(options.items())))


def window_config(config) -> input_pipeline.WindowConfig:
  return input_pipeline.WindowConfig(
      window_frames=config.window_frames,
      eval_stride_frames=config.eval_stride_frames,
      frontend=frontend_lib.get_config(config.frontend_preset))


def init_state(config, model, tx, rng, num_classes: int) -> TrainState:
  wc = window_config(config)
  init_rng, state_rng = jax.random.split(rng)
  variables = model.init({"params": init_rng, "dropout": init_rng},
                         jnp.zeros((1, wc.window_samples), jnp.int16))
  if config.get("init_checkpoint"):
    image = model.image
    native = (wc.frontend.num_mel_bins, config.window_frames)
    backbone = convert.from_torch(
        config.model, config.init_checkpoint, num_classes=num_classes,
        in_channels=image.channels,
        image_size=tuple(image.size) if image.size else native,
        head_bias_init=dict(model.backbone_options).get("head_bias_init", 0.0))
    variables = classifier_lib.from_backbone_variables(backbone)
  params = variables["params"]
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params,
      batch_stats=variables.get("batch_stats", {}),
      opt_state=tx.init(params),
      ema_params=params if config.ema_decay else {},
      loss_state=losses.get(config.loss).init(num_classes),
      rng=state_rng)


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

  return jax.tree.map(spec, abstract_state)


# ---------------------------------------------------------------------------
# The step.
# ---------------------------------------------------------------------------

def train_step(state: TrainState, batch: dict, *, model, tx, loss, config,
               schedule) -> tuple[TrainState, dict]:
  """One update; a non-finite loss leaves the state unchanged."""
  step_rng = jax.random.fold_in(state.rng, state.step)
  aug_rng, dropout_rng = jax.random.split(step_rng)
  images = model.apply({}, batch["waveform"],
                       method=classifier_lib.Classifier.spectrogram)
  targets = jax.nn.one_hot(batch["label"], model.num_classes)
  images, targets = augment.augment(
      aug_rng, images, targets, augment.AugmentConfig(**config.augment),
      model.frontend)
  mutable = ["batch_stats"] if state.batch_stats else False

  def loss_fn(params):
    variables = {"params": params}
    if state.batch_stats:
      variables["batch_stats"] = state.batch_stats
    out = model.apply(variables, images, train=True,
                      method=classifier_lib.Classifier.classify,
                      mutable=mutable, rngs={"dropout": dropout_rng})
    logits, updates = out if mutable else (out, {})
    value, loss_state = loss(logits, targets, batch, state.loss_state)
    return value, (logits, updates, loss_state)

  (value, (logits, updates, loss_state)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  changes, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, changes)
  ema = state.ema_params
  if config.ema_decay:
    ema = optax.incremental_update(params, ema, 1.0 - config.ema_decay)
  new = state.replace(step=state.step + 1, params=params,
                      batch_stats=updates.get("batch_stats", state.batch_stats),
                      opt_state=opt_state, ema_params=ema,
                      loss_state=loss_state)
  finite = jnp.isfinite(value)
  # Keep the old state (but count the step) so nothing non-finite is saved.
  new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new,
                     state.replace(step=state.step + 1))
  metrics = {"loss": value, "finite": finite,
             "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
             "grad_norm": optax.global_norm(grads),
             "learning_rate": schedule(state.step)}
  return new, metrics


# ---------------------------------------------------------------------------
# Loop.
# ---------------------------------------------------------------------------

def _checkpoint_managers(workdir: str, config):
  latest = ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=config.keep_checkpoints, create=True,
          enable_async_checkpointing=False))
  best = ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "best"),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=1, create=True, best_fn=lambda m: m["val_map"],
          best_mode="max", enable_async_checkpointing=False))
  return latest, best


def label_names(builder) -> list[str]:
  return list(builder.info.features["label"].names)


def load_prior(config, builder) -> prior_lib.GeoPrior | None:
  """The configured geographic prior over this dataset's labels, or None."""
  source = config.get("geo_prior", "")
  if not source:
    return None
  if source == "synthetic_truth":
    path = data.true_ranges_path(builder)
    if path is None:
      raise FileNotFoundError(
          f"no {synthetic.RANGES_FILE} in {builder.data_path}: "
          "'synthetic_truth' needs a synthetic dataset")
    return prior_lib.from_range_circles(path, label_names(builder))
  return range_lib.load(source).prior(label_names(builder))


def run_evaluation(config, workdir, s: dict, state, splits, write_plots: bool,
                   known: dict | None = None) -> dict:
  """Evaluates `splits` (except those in `known`, results of this state).

  `s` is `_setup(...)`'s mesh, model, builder, prior and class groups.
  """
  builder, model = s["builder"], s["model"]
  data_sharding = jax.sharding.NamedSharding(
      s["mesh"], jax.sharding.PartitionSpec("data"))
  predict = evaluate.make_predict_fn(
      lambda v, w: model.apply(v, w), state.variables(bool(config.ema_decay)),
      data_sharding)
  results = {}
  for split in splits:
    if known and split in known:
      results[split] = known[split]
      continue
    results[split] = evaluate.evaluate_split(
        predict, builder, split, window_config(config), config.eval_batch_size,
        prior=s["prior"], threshold=config.get("geo_threshold", 0.1),
        groups=s["supercategories"])
  if jax.process_index() == 0:
    evaluate.write_results(workdir, int(state.step), results)
    if write_plots:
      counts = _train_label_counts(builder)
      for split, result in results.items():
        evaluate.plot_long_tail_and_confusions(
            os.path.join(workdir, f"{split}"), result, counts,
            label_names(builder))
  return results


def _train_label_counts(builder) -> np.ndarray:
  counts = data.label_counts(builder)
  if counts is None or "train" not in counts:
    return np.ones(len(label_names(builder)))  # Built with Beam: unknown.
  return np.asarray(counts["train"])


def _restore(manager, step, abstract, sharding):
  return manager.restore(step, args=ocp.args.StandardRestore(
      jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                     sharding=s),
                   abstract, sharding)))


def _setup(config, workdir, devices=None):
  """Mesh, prepared data, prior, model, optimizer and the abstract state."""
  if config.get("distributed") and not jax.distributed.is_initialized():
    jax.distributed.initialize()
  input_pipeline.hide_gpus_from_tensorflow()
  os.makedirs(workdir, exist_ok=True)
  devices = jax.devices() if devices is None else list(devices)
  mesh = jax.sharding.Mesh(np.array(devices), ("data",))
  if config.batch_size % len(devices):
    raise ValueError(f"batch_size {config.batch_size} must be divisible by "
                     f"the {len(devices)} devices")
  builder = data.prepare_from_config(config)
  num_classes = len(label_names(builder))
  steps_per_epoch = max(
      1, builder.info.splits["train"].num_examples // config.batch_size)
  model = make_model(config, num_classes)
  schedule = learning_rate_schedule(config, steps_per_epoch)
  tx = make_optimizer(config, schedule)
  init = functools.partial(init_state, config, model, tx,
                           num_classes=num_classes)
  rng = jax.random.PRNGKey(config.seed)
  abstract = jax.eval_shape(init, rng)
  sharding = state_sharding(abstract, mesh, config.get("shard_params", False))
  classes = data.class_table(builder)
  return dict(mesh=mesh, builder=builder, steps_per_epoch=steps_per_epoch,
              model=model, schedule=schedule, tx=tx, init=init, rng=rng,
              abstract=abstract, sharding=sharding,
              prior=load_prior(config, builder),
              supercategories=(None if classes is None else
                               [row["supercategory"] for row in classes]))


def evaluate_checkpoint(config, workdir: str, which: str = "best",
                        devices=None) -> dict:
  """`--mode=eval`: validation and test of the best (or latest) checkpoint."""
  s = _setup(config, workdir, devices)
  latest, best = _checkpoint_managers(workdir, config)
  manager = best if which == "best" and best.best_step() is not None else latest
  step = manager.best_step() if manager is best else manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {workdir} to evaluate")
  state = _restore(manager, step, s["abstract"], s["sharding"])
  return run_evaluation(config, workdir, s, state, ["validation", "test"],
                        write_plots=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices=None) -> dict:
  """Trains with periodic evaluation; resumes from `workdir` if possible.

  `devices` (default: all) form the mesh; the global batch is split over
  them, so results do not depend on how many there are.
  """
  s = _setup(config, workdir, devices)
  mesh, builder, model, tx = s["mesh"], s["builder"], s["model"], s["tx"]
  schedule, sharding = s["schedule"], s["sharding"]
  steps_per_epoch = s["steps_per_epoch"]
  total_steps = int(config.num_epochs * steps_per_epoch)
  data_sharding = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec("data"))
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)
  latest, best = _checkpoint_managers(workdir, config)
  if latest.latest_step() is not None:
    state = _restore(latest, latest.latest_step(), s["abstract"], sharding)
    logging.info("Resumed from step %d", int(state.step))
  else:
    state = jax.jit(s["init"], out_shardings=sharding)(s["rng"])
  start_step = int(state.step)

  step_fn = jax.jit(
      functools.partial(train_step, model=model, tx=tx,
                        loss=losses.get(config.loss), config=config,
                        schedule=schedule),
      in_shardings=(sharding, data_sharding), out_shardings=(sharding, None),
      donate_argnums=0)

  # -- Loop ----------------------------------------------------------------
  train_ds = input_pipeline.train_dataset(
      builder, "train", config.batch_size, window_config(config),
      seed=config.seed, start_step=start_step,
      num_epochs=int(np.ceil(config.num_epochs)),
      shuffle_buffer=config.shuffle_buffer)
  train_iter = iter(train_ds)
  report = periodic_actions.ReportProgress(num_train_steps=total_steps,
                                           writer=writer)
  eval_every = max(1, int(config.eval_every_epochs * steps_per_epoch))
  pending = []
  results = {}
  for step in range(start_step + 1, total_steps + 1):
    batch = next(train_iter)
    batch = input_pipeline.shard_batch(
        {k: batch[k].numpy() for k in ("waveform", "label")}, data_sharding)
    state, metrics = step_fn(state, batch)
    pending.append(metrics)
    report(step)
    if step % config.log_every_steps == 0 or step == total_steps:
      host = jax.device_get(pending)
      pending = []
      if not all(m["finite"] for m in host):
        bad = next(start for start, m in enumerate(host) if not m["finite"])
        raise NonFiniteLossError(
            f"loss became {host[bad]['loss']} at step "
            f"{step - len(host) + bad + 1}; the update was skipped and the "
            "last checkpoint is clean. Lower learning_rate, set "
            "grad_clip_norm, or check the data.")
      writer.write_scalars(step, {
          f"train/{k}": float(np.mean([m[k] for m in host]))
          for k in ("loss", "accuracy", "grad_norm", "learning_rate")})
    if step % config.checkpoint_every_steps == 0 or step == total_steps:
      latest.save(step, args=ocp.args.StandardSave(state))
    if step % eval_every == 0 or step == total_steps:
      results = run_evaluation(config, workdir, s, state, ["validation"],
                               write_plots=False)
      val = results["validation"]["mean"]["no_prior"]
      writer.write_scalars(step, {f"val/{k}": val[k]
                                  for k in ("top1", "top5", "map", "mf1")})
      best.save(step, args=ocp.args.StandardSave(state),
                metrics={"val_map": val["map"]})
  latest.wait_until_finished()
  best.wait_until_finished()

  # -- Final evaluation of the best checkpoint ---------------------------------
  # The last validation is reused when the best step is the last step.
  best_step = best.best_step()
  reuse = ({"validation": results["validation"]}
           if best_step == int(state.step) and results else {})
  if best_step is not None and best_step != int(state.step):
    state = _restore(best, best_step, s["abstract"], sharding)
  results = run_evaluation(config, workdir, s, state, ["validation", "test"],
                           write_plots=True, known=reuse)
  writer.flush()
  return results



def format_results(results: dict) -> str:
  """One line per split, pooling and prior view."""
  lines = []
  for split, result in results.items():
    for pooling in ("mean", "max"):
      for view, m in result[pooling].items():
        lines.append(f"{split:10s} {pooling:4s} {view:8s} top1 {m['top1']:.3f} "
                     f"top5 {m['top5']:.3f} mAP {m['map']:.3f} "
                     f"mF1 {m['mf1']:.3f}")
  return "\n".join(lines)
