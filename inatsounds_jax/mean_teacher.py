"""The mean teacher (iNatSounds paper, Chasmai et al. 2025, s.4; Tarvainen
and Valpola 2017): the student also matches the outputs of a teacher whose
parameters are an exponential moving average of its own.

The teacher is the train state's EMA parameters (`config.ema_decay`, e.g.
0.999, updated after every step), so it is checkpointed with the run and
evaluation uses it (evaluations read the EMA parameters whenever
`ema_decay` is set). Options, `config.mean_teacher`:

- `weight` (0 = off) times a ramp-up exp(-5 (1 - t / T)^2) over
  `rampup_epochs` T (0: none, the iNatSounds authors' code);
- `consistency`: `pred_mse` (MSE of probabilities), `logit_mse`, or `bce`
  (the student's sigmoid BCE against the teacher's probabilities); averaged
  over batch x classes;
- `teacher_erasing`: the teacher sees the batch with one random rectangle
  (area 10-33 % of the image) erased, the student the plain batch;
- `geo_mask`: the teacher's outputs outside the geographic prior
  (`config.geo_prior`) are set to the batch's lowest logit ("pseudo geo").
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from inatsounds_jax import registry
from inatsounds_jax.geo import prior as prior_lib

CONSISTENCY = registry.Registry("mean_teacher consistency")
CONSISTENCY.add("pred_mse", lambda s, t: jnp.mean(
    (jax.nn.sigmoid(s) - jax.nn.sigmoid(t)) ** 2))
CONSISTENCY.add("logit_mse", lambda s, t: jnp.mean((s - t) ** 2))
CONSISTENCY.add("bce", lambda s, t: jnp.mean(
    optax.sigmoid_binary_cross_entropy(s, jax.nn.sigmoid(t))))


@dataclasses.dataclass(frozen=True)
class MeanTeacher:
  """The consistency term; `prior` is set when the teacher is geo-masked."""
  weight: float
  consistency: str
  rampup_steps: int
  teacher_erasing: bool
  prior: object | None = None
  geo_threshold: float = 0.1

  def ramp(self, step: jax.Array) -> jax.Array:
    if not self.rampup_steps:
      return jnp.ones(())
    x = jnp.clip(step / self.rampup_steps, 0.0, 1.0)
    return jnp.exp(-5.0 * (1.0 - x) ** 2)

  def teacher_view(self, rng: jax.Array, images: jax.Array) -> jax.Array:
    return random_erasing(rng, images) if self.teacher_erasing else images

  def loss(self, student_logits: jax.Array, teacher_logits: jax.Array,
           step: jax.Array, keep: jax.Array | None) -> jax.Array:
    """weight x ramp x consistency; `keep` [B, C] the prior's species."""
    teacher_logits = jax.lax.stop_gradient(teacher_logits)
    if keep is not None:
      teacher_logits = jnp.where(keep > 0, teacher_logits,
                                 teacher_logits.min())
    return self.weight * self.ramp(step) * CONSISTENCY.get(self.consistency)(
        student_logits, teacher_logits)

  def host_fields(self, batch: dict) -> dict[str, np.ndarray]:
    """`teacher_keep` [B, C] for a geo-masked teacher (else nothing)."""
    if self.prior is None:
      return {}
    return {"teacher_keep": self.prior.mask(
        batch["latitude"], batch["longitude"],
        self.geo_threshold).astype(np.float32)}


def random_erasing(rng: jax.Array, images: jax.Array,
                   area: tuple[float, float] = (0.1, 0.33)) -> jax.Array:
  """One rectangle per image, of a random share of its area and aspect ratio
  in (1/3, 3), filled with 0 (always applied)."""
  batch, height, width = images.shape[:3]
  keys = jax.random.split(rng, 4)
  share = jax.random.uniform(keys[0], (batch,), minval=area[0],
                             maxval=area[1])
  log_ratio = jax.random.uniform(keys[1], (batch,), minval=-np.log(3),
                                 maxval=np.log(3))
  h = jnp.clip(jnp.sqrt(share * height * width * jnp.exp(log_ratio)), 1,
               height)
  w = jnp.clip(share * height * width / h, 1, width)
  top = jax.random.uniform(keys[2], (batch,)) * (height - h)
  left = jax.random.uniform(keys[3], (batch,)) * (width - w)
  rows = jnp.arange(height)[None, :]
  cols = jnp.arange(width)[None, :]
  inside = (((rows >= top[:, None]) & (rows < (top + h)[:, None]))[:, :, None]
            & ((cols >= left[:, None]) & (cols < (left + w)[:, None]))[
                :, None, :])
  inside = inside.reshape(inside.shape + (1,) * (images.ndim - 3))
  return jnp.where(inside, jnp.zeros_like(images), images)


def from_config(config, steps_per_epoch: int, priors: prior_lib.Priors
                ) -> MeanTeacher | None:
  """`config.mean_teacher` (None when its weight is 0); a geo mask takes
  `config.geo_prior` from the run's `priors`.

  Raises:
    registry.ConfigError: no EMA to be the teacher, an unknown consistency,
      or a geo mask without a prior.
  """
  options = dict(config.get("mean_teacher", {}) or {})
  if not options.get("weight"):
    return None
  if not config.ema_decay:
    raise registry.ConfigError(
        "mean_teacher needs ema_decay > 0 (the teacher is the EMA of the "
        "parameters; the iNatSounds paper uses 0.999)")
  name = options.get("consistency", "pred_mse")
  CONSISTENCY.get(name)
  prior = None
  if options.get("geo_mask"):
    if not config.get("geo_prior"):
      raise registry.ConfigError(
          "mean_teacher.geo_mask needs geo_prior ('synthetic_truth' or a "
          "range-model workdir)")
    prior = priors(config.geo_prior)
  return MeanTeacher(
      weight=float(options["weight"]), consistency=name,
      rampup_steps=int(float(options.get("rampup_epochs", 0.0)) *
                       steps_per_epoch),
      teacher_erasing=bool(options.get("teacher_erasing", False)),
      prior=prior, geo_threshold=float(config.get("geo_threshold", 0.1)))
