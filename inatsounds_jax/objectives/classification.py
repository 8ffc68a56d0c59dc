"""A species classifier: the default objective (`config.objective`).

The model is `models.classifier.Classifier` (frontend, image, backbone and
an optional location head); the loss is the configured `losses.Loss` of its
logits against the batch's targets (`label_modes.py`), after SpecAugment
and mixup on the spectrogram (`augment.py`), plus the mean teacher's
consistency term when there is one (`mean_teacher.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from inatsounds_jax import augment
from inatsounds_jax import frontend as frontend_lib
from inatsounds_jax import input_pipeline
from inatsounds_jax import mean_teacher
from inatsounds_jax import models
from inatsounds_jax import objectives
from inatsounds_jax import registry
from inatsounds_jax.geo import location_input
from inatsounds_jax.models import classifier as classifier_lib
from inatsounds_jax.models import image as image_lib

if TYPE_CHECKING:  # Loading a model for prediction needs no TFDS.
  import tensorflow_datasets as tfds


def make_model(config, num_classes: int, multilabel: bool
               ) -> classifier_lib.Classifier:
  """The classifier of `config` (`model`, `model_options`, `dtype`,
  `frontend_preset`, `image`, `window_frames`, `location_input`); a
  multilabel loss starts its head's bias at the BCE prior."""
  options = dict(config.get("model_options", {}))
  if config.get("dtype", "float32") == "bfloat16":
    options["dtype"] = jnp.bfloat16
  if multilabel:
    options.setdefault("head_bias_init", models.head_bias_for_bce(num_classes))
  models.BACKBONES.get(config.model)  # An unknown name fails here, by name.
  location_options = dict(config.get("location_options", {}))
  if config.get("location_input"):
    location_input.check_options(config.location_input, location_options)
  size = config.image.size
  # Normalisation of the 0..1 image: one value or one per channel (the
  # image dict's optional mean/std; ImageNet's for L48).
  norm = {k: (tuple(v) if isinstance(v, (list, tuple)) else float(v))
          for k, v in config.image.items() if k in ("mean", "std")}
  return classifier_lib.Classifier(
      backbone=config.model, num_classes=num_classes,
      frontend=frontend_lib.get_config(config.frontend_preset),
      image=image_lib.ImageConfig(size=tuple(size) if size else None,
                                channels=config.image.channels, **norm),
      window_frames=config.window_frames,
      backbone_options=tuple(sorted(options.items())),
      location_input=config.get("location_input", ""),
      location_options=tuple(sorted(location_options.items())))


def loss(params, state, batch: dict, rng: jax.Array, *, model, loss,
         augment_config: augment.AugmentConfig,
         teacher: mean_teacher.MeanTeacher | None = None):
  """The classifier's loss of a batch: (value, (metrics, variable updates,
  loss state)). The spectrogram and its augmentation do not depend on
  `params`, so no gradient flows through them; nor does any through the
  `teacher` (the EMA parameters), whose outputs are a consistency target.
  A model with a location input reads the batch's `location` features
  (`geo/location_input.py`; with mixup, each mixed example keeps its own
  recording's location)."""
  aug_rng, dropout_rng = jax.random.split(rng)
  images = model.apply({}, input_pipeline.model_input(batch),
                       method=classifier_lib.Classifier.spectrogram)
  # Observed targets and known entries (label_modes.py); one-hot without.
  targets = batch.get("targets",
                      jax.nn.one_hot(batch["label"], model.num_classes))
  loss_batch = dict(batch, step=state.step)
  images, targets = augment.augment(aug_rng, images, targets, augment_config,
                                    model.frontend)
  if augment_config.mixup and "label_mask" in batch:
    # Mixup pairs each example with the previous one: an entry stays known
    # where both know it, and every mixed-in positive is known.
    loss_batch["label_mask"] = jnp.maximum(
        batch["label_mask"] * jnp.roll(batch["label_mask"], 1, axis=0),
        (targets > 0).astype(targets.dtype))
  mutable = ["batch_stats"] if state.batch_stats else False
  if teacher is not None:  # The EMA parameters, in inference mode.
    teacher_logits = jax.lax.stop_gradient(model.apply(
        state.variables(use_ema=True),
        teacher.teacher_view(jax.random.fold_in(rng, 1), images),
        train=False, location=batch.get("location"),
        method=classifier_lib.Classifier.classify))
  out = model.apply(state.variables() | {"params": params}, images,
                    train=True, location=batch.get("location"),
                    method=classifier_lib.Classifier.classify,
                    mutable=mutable, rngs={"dropout": dropout_rng})
  logits, updates = out if mutable else (out, {})
  value, loss_state = loss(logits, targets, loss_batch, state.loss_state)
  if teacher is not None:
    value = value + teacher.loss(logits, teacher_logits, state.step,
                                 batch.get("teacher_keep"))
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
  return value, ({"accuracy": accuracy}, updates, loss_state)


def check_input(config, builder: tfds.core.DatasetBuilder) -> None:
  """The frontend must fit the records: audio, or images (L48) with the
  "image" frontend, which has no dB scale for mixup and whose spectrograms
  (dark calls on white) SpecAugment's zero fill would mark as loud. Images
  have no recording location for a range prior or a location input.

  Raises:
    registry.ConfigError.
  """
  images = input_pipeline.is_image_dataset(builder)
  image_frontend = isinstance(frontend_lib.get_config(config.frontend_preset),
                              frontend_lib.ImageInputConfig)
  if images != image_frontend:
    raise registry.ConfigError(
        f"frontend_preset {config.frontend_preset!r} takes "
        f"{'images' if image_frontend else 'waveforms'}, and dataset "
        f"{config.dataset!r} holds {'images' if images else 'audio'}"
        + ("; use frontend_preset='image'" if images else ""))
  located = {field: config.get(field) for field in
             ("geo_prior", "geo_ceiling_prior", "range_model",
              "location_input")}
  located = [f"{field}={value!r}" for field, value in located.items()
             if value]
  if images and located:
    raise registry.ConfigError(
        f"{', '.join(located)}: dataset {config.dataset!r} holds spectrogram "
        "images without recording locations, so neither a range prior nor "
        "a location input applies (leave them empty); its geo label mode "
        "reads the range negatives from the data")
  augment_config = config.augment
  if image_frontend and (augment_config.mixup or
                         augment_config.freq_mask_max_width or
                         augment_config.time_mask_max_width):
    raise registry.ConfigError(
        "augment: mixup and SpecAugment work on the library's own "
        "spectrograms; with frontend_preset='image' set augment.mixup=False "
        "and augment.freq_mask_max_width=augment.time_mask_max_width=0")


def confidence_scorer(trained):
  """`(variables, inputs, label) -> probability of the labelled species`
  (softmax, or sigmoid for a multilabel model); empty windows score low.

  Raises:
    registry.ConfigError: the model has a location input, which window
      scoring does not pass (it would score another classifier than the one
      trained).
  """
  if trained.config.get("location_input"):
    raise registry.ConfigError(
        f"the model was trained with location_input "
        f"{trained.config.location_input!r}, which window scoring does not "
        "pass (it scores waveforms only)")
  model = trained.model
  activation = jax.nn.sigmoid if trained.multilabel else jax.nn.softmax

  def confidence(variables, inputs, label):
    probabilities = activation(model.apply(variables, inputs))
    return jnp.take_along_axis(probabilities, label[:, None], 1)[:, 0]
  return confidence


OBJECTIVE = objectives.Objective(
    make_model=make_model, loss=loss, check_input=check_input,
    window_score="confidence", scorer=confidence_scorer)
