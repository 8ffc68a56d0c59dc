"""Waveform classifier: frontend, image conversion and backbone in one module.

An exported `Classifier` takes int16 or float waveforms and returns logits
(or, with an image frontend, uint8 spectrogram images such as L48's clips),
so preprocessing cannot drift between training, evaluation and use. Training
runs the parts separately to augment in between:

    images = model.apply(v, waveform, method=Classifier.spectrogram)
    images, targets = augment.augment(rng, images, targets, aug_config)
    logits = model.apply(v, images, train=True, method=Classifier.classify)

Inference reads both of its outputs, the embedding and the logits, at once:

    out = model.apply(v, waveform, method=Classifier.infer)
    out.embedding, out.logits

A classifier with a `location_input` (`geo/location_input.py`) also takes
the recordings' location features `[batch, width]` (`location=`); without
them every location counts as unknown.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from inatsounds_jax import frontend as frontend_lib
from inatsounds_jax import models as models_lib
from inatsounds_jax.geo import location_input as location_lib
from inatsounds_jax.models import image as image_lib

# What a model takes (`WindowedModel.input_kind`): int16 or float waveform
# windows, or spectrogram images (an image frontend).
WAVEFORM = "waveform"
IMAGE = "image"


@flax.struct.dataclass
class ClassifierOutput:
  """What a classifier infers from a batch of windows.

  Attributes:
    embedding: `[batch, dim]` float32, the backbone's pooled features before
      its head (`layers.backbone_output`); a location head does not change
      it, so it describes the sound alone.
    logits: `[batch, num_classes]` float32, the head's, plus the location
      head's offsets when the model has one.
  """
  embedding: jax.Array
  logits: jax.Array


class WindowedModel:
  """What a model on waveform windows derives from its `frontend`,
  `window_frames` and `image` fields (shared by the classifier and the
  masked autoencoder)."""

  @property
  def input_kind(self) -> str:
    """`IMAGE` for an image frontend (`frontend.ImageInputConfig`: inputs
    are spectrogram images), else `WAVEFORM`. Callers that feed audio ask
    this instead of inspecting the frontend."""
    if isinstance(self.frontend, frontend_lib.ImageInputConfig):
      return IMAGE
    return WAVEFORM

  @property
  def window_samples(self) -> int:
    """Waveform samples of one window at the frontend's sample rate."""
    return self.frontend.num_samples(self.window_frames)

  @property
  def image_size(self) -> tuple[int, int]:
    """(H, W) of the backbone's input: the resize target, else the window's
    native spectrogram size (mel bands x frames), or the input image's."""
    if self.image.size:
      return tuple(self.image.size)
    if self.input_kind == IMAGE:
      return (self.frontend.height, self.frontend.width)
    return (self.frontend.num_mel_bins, self.window_frames)

  @property
  def example_input(self) -> jax.ShapeDtypeStruct:
    """One example of the model's input: an int16 waveform window, or a
    uint8 image for an image frontend (`frontend.ImageInputConfig`)."""
    if self.input_kind == IMAGE:
      return jax.ShapeDtypeStruct(self.frontend.example_shape, jnp.uint8)
    return jax.ShapeDtypeStruct((self.window_samples,), jnp.int16)


class Classifier(WindowedModel, nn.Module):
  """Waveforms `[batch, samples]` (or images `[batch, H, W, C]` with an
  image frontend) -> logits `[batch, num_classes]`."""
  backbone: str
  num_classes: int
  frontend: frontend_lib.FrontendConfig | frontend_lib.ImageInputConfig = (
      frontend_lib.INATSOUNDS)
  image: image_lib.ImageConfig = image_lib.ImageConfig()
  window_frames: int = 512  # The window the model classifies (~2.97 s).
  backbone_options: tuple[tuple[str, Any], ...] = ()
  # "" or a name in `location_input.LOCATION_INPUTS`, and its options.
  location_input: str = ""
  location_options: tuple[tuple[str, Any], ...] = ()

  def setup(self):
    self.net = models_lib.create(self.backbone, self.num_classes,
                                 image_size=self.image_size,
                                 **dict(self.backbone_options))
    self.spectrogram_frontend = frontend_lib.module(self.frontend)
    self.location_head = location_lib.head_for(
        self.location_input, self.num_classes, self.location_options)

  def spectrogram(self, waveform: jax.Array) -> jax.Array:
    """`[batch, mel, frames]` image, values 0..255 (of an image input: its
    one-channel `[batch, height, width]`)."""
    return self.spectrogram_frontend(waveform)

  def classify(self, images: jax.Array, train: bool = False,
               location: jax.Array | None = None) -> jax.Array:
    """Logits of spectrogram images (after any augmentation), plus the
    location head's offsets (`location`: features `[batch, width]`; None:
    unknown) when the model has a `location_input`."""
    return self._outputs(images, train, location).logits

  def __call__(self, waveform: jax.Array, train: bool = False,
               location: jax.Array | None = None) -> jax.Array:
    return self.classify(self.spectrogram(waveform), train=train,
                         location=location)

  def infer(self, inputs: jax.Array, location: jax.Array | None = None
            ) -> ClassifierOutput:
    """Embedding and logits of waveforms (images with an image frontend),
    in inference mode; `location` as for `classify`."""
    return self._outputs(self.spectrogram(inputs), False, location)

  def _outputs(self, images: jax.Array, train: bool,
               location: jax.Array | None) -> ClassifierOutput:
    embedding, logits = self.net(image_lib.to_model_image(images, self.image),
                                 train=train, with_embedding=True)
    if self.location_head is not None:
      if location is None:
        location = self.location_head.missing(images.shape[0])
      logits = logits + self.location_head(location)
    return ClassifierOutput(embedding=embedding, logits=logits)


def from_backbone_variables(backbone_variables: dict) -> dict:
  """Classifier variables from backbone ones (e.g. `convert.from_torch`)."""
  return {collection: {"net": tree}
          for collection, tree in backbone_variables.items()}
