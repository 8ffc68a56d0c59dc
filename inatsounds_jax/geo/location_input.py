"""The recording's location as an input of the classifier, during training.

The iNatSounds paper (Chasmai et al. 2025) applies its SINR geo prior only
after training (s.4, s.5.1) and names "incorporating geographic information
during training" as future work (s.6). `config.location_input` picks, by
name, how a classifier sees where a recording was made:

- `encoding`: SINR's location encoding (`sinr.encode`; Cole et al. 2023,
  s.3) through a small learned layer, joined to the backbone's pooled
  features before its linear head. Joining a vector `h` to the features
  `f` before a linear head `W [f; h] + b` equals adding `W_h h` to the
  backbone's logits `W_f f + b`, so the location's part is computed as
  that logit offset and no backbone changes.
- `prior_logits`: the geo prior's log-probabilities (`config.geo_prior`:
  a trained range model or the synthetic corpus's true ranges), floored at
  `location_options.floor`, added to the logits in training and in every
  evaluation, so the classifier learns what the prior leaves over.

A missing location is explicit: NaN latitude or longitude. `encoding` then
uses a learned "missing" embedding (and a known-flag of 0) in place of the
encoded location; `prior_logits` adds nothing (as do species the prior does
not cover), so such a recording is classified as without the option.

Contract shared by both: the host turns `(latitude [n], longitude [n])`
into float32 location features `[n, width]` (`LocationFeatures`); the
classifier's `LocationHead` maps features to logit offsets `[n, classes]`;
`LocationHead.missing(n)` are the features of `n` unknown locations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from inatsounds_jax import registry
from inatsounds_jax.geo import prior as prior_lib
from inatsounds_jax.geo import sinr

DEFAULT_ENCODING_WIDTH = 64
DEFAULT_PRIOR_FLOOR = 1e-3


class EncodedLocationHead(nn.Module):
  """Features `[n, 2]` (latitude, longitude; NaN: unknown) -> logit
  offsets: `W_h [where(known, ReLU(Dense(encode(lat, lon))), missing);
  known]`, `missing` a learned vector."""
  num_classes: int
  width: int = DEFAULT_ENCODING_WIDTH

  def missing(self, n: int) -> jnp.ndarray:
    return jnp.full((n, 2), jnp.nan, jnp.float32)

  @nn.compact
  def __call__(self, features):
    lat, lon = features[:, 0], features[:, 1]
    known = jnp.isfinite(lat) & jnp.isfinite(lon)
    encoded = sinr.encode(jnp.where(known, lat, 0.0),
                          jnp.where(known, lon, 0.0))
    embedding = nn.relu(nn.Dense(self.width, name="embed")(encoded))
    missing = self.param("missing_embedding", nn.initializers.zeros,
                         (self.width,))
    embedding = jnp.where(known[:, None], embedding, missing)
    joined = jnp.concatenate(
        [embedding, known[:, None].astype(embedding.dtype)], axis=-1)
    return nn.Dense(self.num_classes, use_bias=False, name="head")(joined)


class PriorLogitsHead(nn.Module):
  """Features `[n, classes]` (the prior's log-probabilities, 0 where
  unknown) -> the same, as logit offsets. No parameters."""
  num_classes: int

  def missing(self, n: int) -> jnp.ndarray:
    return jnp.zeros((n, self.num_classes), jnp.float32)

  def __call__(self, features):
    return features


@dataclasses.dataclass(frozen=True)
class LocationInput:
  """One way of giving the classifier the location.

  Attributes:
    head: `(num_classes, options) -> LocationHead` module.
    features: `(latitude [n], longitude [n], prior, options) -> float32
      [n, width]`, on the host (`prior` is None unless `needs_prior`).
    option_names: what `config.location_options` may set for it.
    needs_prior: the features come from `config.geo_prior`.
  """
  head: Callable[[int, dict], nn.Module]
  features: Callable[..., np.ndarray]
  option_names: tuple[str, ...]
  needs_prior: bool = False


def _coordinates(latitude, longitude, prior, options) -> np.ndarray:
  del prior, options
  return np.stack([np.asarray(latitude, np.float32).reshape(-1),
                   np.asarray(longitude, np.float32).reshape(-1)], axis=-1)


def _prior_log_probabilities(latitude, longitude,
                             prior: prior_lib.GeoPrior, options
                             ) -> np.ndarray:
  p = prior.probabilities(latitude, longitude)
  floor = float(options.get("floor", DEFAULT_PRIOR_FLOOR))
  logs = np.log(np.maximum(np.nan_to_num(p, nan=1.0), floor))
  return logs.astype(np.float32)  # log 1 = 0 where unknown: no prior term.


LOCATION_INPUTS: registry.Registry[LocationInput] = registry.Registry(
    "location_input")
LOCATION_INPUTS.add("encoding", LocationInput(
    head=lambda num_classes, options: EncodedLocationHead(
        num_classes, int(options.get("width", DEFAULT_ENCODING_WIDTH))),
    features=_coordinates, option_names=("width",)))
LOCATION_INPUTS.add("prior_logits", LocationInput(
    head=lambda num_classes, options: PriorLogitsHead(num_classes),
    features=_prior_log_probabilities, option_names=("floor",),
    needs_prior=True))

def check_options(name: str, options: dict) -> None:
  """Raises `ConfigError` for an unknown input or option (both named)."""
  allowed = LOCATION_INPUTS.get(name).option_names
  unknown = sorted(set(options) - set(allowed))
  if unknown:
    raise registry.ConfigError(
        f"location_options {unknown} do not apply to location_input "
        f"{name!r}; it takes {list(allowed)}")


@dataclasses.dataclass(frozen=True)
class LocationFeatures:
  """`(latitude, longitude) -> float32 [n, width]` for one model's input
  (NaN coordinates: unknown; None: all unknown, given `n`)."""
  location_input: LocationInput
  options: dict
  prior: prior_lib.GeoPrior | None = None

  def __call__(self, latitude, longitude, n: int | None = None
               ) -> np.ndarray:
    if latitude is None or longitude is None:
      latitude = longitude = np.full((n,), np.nan)
    return self.location_input.features(latitude, longitude, self.prior,
                                        self.options)


def from_config(config, load_prior: Callable[[str], prior_lib.GeoPrior],
                ) -> LocationFeatures | None:
  """The host features of `config.location_input` ("" : None).

  `load_prior(source)` builds the prior over the classifier's labels
  (needed only by `prior_logits`, from `config.geo_prior`).

  Raises:
    registry.ConfigError: an unknown input or option, or `prior_logits`
      without `geo_prior`.
  """
  name = config.get("location_input", "")
  if not name:
    return None
  options = dict(config.get("location_options", {}))
  check_options(name, options)
  location_input = LOCATION_INPUTS.get(name)
  prior = None
  if location_input.needs_prior:
    if not config.get("geo_prior"):
      raise registry.ConfigError(
          f"location_input {name!r} needs geo_prior: 'synthetic_truth' "
          "(synthetic corpus) or a range-model workdir (configs/sinr.py "
          "trains one; or set range_model)")
    prior = load_prior(config.geo_prior)
  return LocationFeatures(location_input, options, prior)


def head_for(name: str, num_classes: int, options: Sequence | dict
             ) -> nn.Module | None:
  """The classifier's location head for input `name` ("": None)."""
  if not name:
    return None
  return LOCATION_INPUTS.get(name).head(num_classes, dict(options))
