"""SINR range model in Flax (Cole et al. 2023, "Spatial Implicit Neural
Representations for Global-Scale Species Mapping").

`p(species | lat, lon)` from a residual MLP over a sin/cos location encoding,
trained from presence-only observations with the "assume negative full"
loss: every observation is a positive for its species and a negative for all
others there, and a uniformly random point on the sphere is a negative for
every species. Pure functions over pytrees; the training driver lives in
`geo/train_range.py`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

# SINR's weight on the positive term of "an_full".
POS_WEIGHT = 2048.0


def encode(lat, lon) -> jax.Array:
  """`[n, 4]`: sin(pi x), cos(pi x) of x = [lon/180, lat/90].

  Order as in SINR: sin(lon), sin(lat), cos(lon), cos(lat).
  """
  x = jnp.stack([jnp.asarray(lon) / 180.0, jnp.asarray(lat) / 90.0], axis=-1)
  return jnp.concatenate([jnp.sin(jnp.pi * x), jnp.cos(jnp.pi * x)], axis=-1)


class ResidualBlock(nn.Module):
  """x + ReLU(W2 Dropout(ReLU(W1 x)))."""
  width: int
  dropout: float

  @nn.compact
  def __call__(self, x, train: bool):
    y = nn.relu(nn.Dense(self.width, name="w1")(x))
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    y = nn.relu(nn.Dense(self.width, name="w2")(y))
    return x + y


class SINR(nn.Module):
  """Encoded locations `[n, 4]` -> presence logits `[n, num_species]`."""
  num_species: int
  width: int = 256
  depth: int = 4
  dropout: float = 0.5

  @nn.compact
  def __call__(self, encoded, train: bool = False):
    x = nn.relu(nn.Dense(self.width, name="input")(encoded))
    for i in range(self.depth):
      x = ResidualBlock(self.width, self.dropout, name=f"block{i}")(x, train)
    return nn.Dense(self.num_species, use_bias=False, name="species")(x)


def random_locations(rng: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
  """(lat, lon) in degrees, uniform over the sphere's area."""
  lat_rng, lon_rng = jax.random.split(rng)
  lat = jnp.degrees(jnp.arcsin(jax.random.uniform(lat_rng, (n,), minval=-1.0,
                                                  maxval=1.0)))
  lon = jax.random.uniform(lon_rng, (n,), minval=-180.0, maxval=180.0)
  return lat, lon


def assume_negative_full_loss(logits_at_observations: jax.Array,
                              species: jax.Array,
                              logits_at_random: jax.Array,
                              pos_weight: float = POS_WEIGHT) -> jax.Array:
  """SINR's "an_full" loss.

  Mean over observations x species of -log(1 - p), with the observed
  species' entry replaced by -pos_weight * log(p), plus the mean of
  -log(1 - p) over all species at the random points. Written with
  log-sigmoids, so it stays finite where p saturates.
  """
  positive = jax.nn.one_hot(species, logits_at_observations.shape[-1],
                            dtype=logits_at_observations.dtype)
  neg_log_p = jax.nn.softplus(-logits_at_observations)  # -log p
  neg_log_not_p = jax.nn.softplus(logits_at_observations)  # -log(1 - p)
  at_observations = jnp.where(positive > 0, pos_weight * neg_log_p,
                              neg_log_not_p)
  at_random = jax.nn.softplus(logits_at_random)
  return at_observations.mean() + at_random.mean()
