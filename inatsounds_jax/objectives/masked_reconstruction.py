"""Masked-autoencoder pretraining as an objective of the training loop.

`config.objective = "masked_reconstruction"` (configs/mae_pretrain.py) trains
`models.mae.MaskedAutoencoder` through `train.py`'s loop: the encoder is the
ViT named by `config.model` (`vit_b16`, ...), the masking and decoder options
are `config.mae`, and labels are read but unused. The masking is the only
augmentation (AudioMAE pretrains without SpecAugment or mixup, Huang et al.
2022, s. 3.4). A window's curation score is its masked-patch loss on the
model's fixed evaluation masks (the MAE study on iNatSounds keeps the hard,
high-loss segments: Liu et al. 2026, s. 4.7).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from inatsounds_jax import frontend as frontend_lib
from inatsounds_jax import input_pipeline
from inatsounds_jax import models
from inatsounds_jax import objectives
from inatsounds_jax import registry
from inatsounds_jax.models import image as image_lib
from inatsounds_jax.models import mae as mae_lib
from inatsounds_jax.models import vit

if TYPE_CHECKING:  # Loading a model for prediction needs no TFDS.
  import tensorflow_datasets as tfds


def encoder_size(model_name: str) -> str:
  """The `vit.SIZES` key of a `vit_*16` backbone name.

  Raises:
    registry.ConfigError: the backbone is not a ViT.
  """
  factory = models.BACKBONES.get(model_name)
  if factory.func is not vit.ViT:
    vits = [n for n in models.BACKBONES.names() if n.startswith("vit_")]
    raise registry.ConfigError(
        f"model {model_name!r}: a masked autoencoder needs a ViT encoder; "
        f"choose one of {vits}")
  return factory.keywords["size"]


def make_model(config, num_classes: int, multilabel: bool
               ) -> mae_lib.MaskedAutoencoder:
  """The MAE of `config` (`model`, `mae`, `image`, `frontend_preset`,
  `window_frames`, `dtype`, `model_options.drop_path`)."""
  del num_classes, multilabel  # Labels are not used in pretraining.
  size = config.image.size
  try:
    return mae_lib.MaskedAutoencoder(
        size=encoder_size(config.model),
        frontend=frontend_lib.get_config(config.frontend_preset),
        image=image_lib.ImageConfig(size=tuple(size) if size else None,
                                  channels=config.image.channels),
        window_frames=config.window_frames,
        drop_path=config.model_options.get("drop_path", 0.0),
        dtype=(jnp.bfloat16 if config.get("dtype") == "bfloat16"
               else jnp.float32),
        **{k: tuple(v) if isinstance(v, list) else v
           for k, v in config.mae.items()})
  except TypeError as e:  # An unknown field in config.mae.
    raise registry.ConfigError(f"config.mae: {e}") from None


def loss(params, state, batch: dict, rng: jax.Array, *,
         model: mae_lib.MaskedAutoencoder, loss, augment_config):
  """Mean masked-patch MSE of the batch: (value, ({}, {}, loss state))."""
  del loss, augment_config  # The masking is the objective's augmentation.
  mask_rng, dropout_rng = jax.random.split(rng)
  images = model.apply({}, batch["waveform"],
                       method=mae_lib.MaskedAutoencoder.spectrogram)
  out = model.apply({"params": params}, images, train=True,
                    method=mae_lib.MaskedAutoencoder.reconstruct,
                    rngs={"mask": mask_rng, "dropout": dropout_rng})
  return out["loss"].mean(), ({}, {}, state.loss_state)


def check_input(config, builder: tfds.core.DatasetBuilder) -> None:
  """The autoencoder reconstructs the library's own spectrograms, so it
  needs audio records and an audio frontend.

  Raises:
    registry.ConfigError.
  """
  if input_pipeline.is_image_dataset(builder) or isinstance(
      frontend_lib.get_config(config.frontend_preset),
      frontend_lib.ImageInputConfig):
    raise registry.ConfigError(
        f"objective 'masked_reconstruction' reconstructs spectrograms of "
        f"audio; dataset {config.dataset!r} with frontend_preset "
        f"{config.frontend_preset!r} does not give it waveforms")


def reconstruction_scorer(trained):
  """`(variables, waveform, label) -> masked-patch loss` of each window."""
  model = trained.model
  return lambda variables, waveform, label: model.apply(
      variables, waveform)["loss"]


OBJECTIVE = objectives.Objective(
    make_model=make_model, loss=loss, check_input=check_input,
    window_score="reconstruction", scorer=reconstruction_scorer,
    uses_labels=False)
