"""The mean teacher's consistency term, ramp-up, views and config."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from inatsounds_jax import mean_teacher
from inatsounds_jax import registry
from inatsounds_jax.geo import prior as prior_lib

STUDENT = np.array([[0.5, -1.0, 2.0], [0.0, 1.0, -0.5]], np.float32)
TEACHER = np.array([[1.0, -2.0, 0.5], [0.3, 0.2, -1.5]], np.float32)


def sigmoid(z):
  return 1 / (1 + np.exp(-np.asarray(z, np.float64)))


def teacher(**fields):
  base = dict(weight=2.0, consistency="pred_mse", rampup_steps=0,
              teacher_erasing=False)
  base.update(fields)
  return mean_teacher.MeanTeacher(**base)


@pytest.mark.parametrize("name,expected", [
    ("pred_mse", ((sigmoid(STUDENT) - sigmoid(TEACHER)) ** 2).mean()),
    ("logit_mse", ((STUDENT - TEACHER) ** 2).mean()),
    ("bce", (-(sigmoid(TEACHER) * np.log(sigmoid(STUDENT)) +
               (1 - sigmoid(TEACHER)) * np.log(1 - sigmoid(STUDENT)))
             ).mean())])
def test_consistency_terms_match_numpy(name, expected):
  value = teacher(consistency=name).loss(STUDENT, TEACHER, jnp.asarray(5),
                                         None)
  assert float(value) == pytest.approx(2.0 * expected, rel=1e-5)


def test_ramp_up_rises_from_exp_minus_five_to_one():
  t = teacher(rampup_steps=10)
  assert float(t.ramp(jnp.asarray(0))) == pytest.approx(np.exp(-5.0))
  assert float(t.ramp(jnp.asarray(5))) == pytest.approx(np.exp(-1.25))
  assert float(t.ramp(jnp.asarray(30))) == pytest.approx(1.0)


def test_geo_mask_sets_absent_species_to_the_batch_minimum():
  keep = np.array([[1, 0, 1], [1, 1, 0]], np.float32)
  masked = np.where(keep > 0, TEACHER, TEACHER.min())
  value = teacher(consistency="logit_mse").loss(STUDENT, TEACHER,
                                                jnp.asarray(0), keep)
  assert float(value) == pytest.approx(
      2.0 * ((STUDENT - masked) ** 2).mean(), rel=1e-5)


def test_no_gradient_flows_into_the_teacher():
  grad = jax.grad(lambda t: teacher().loss(STUDENT, t, jnp.asarray(0),
                                           None))(jnp.asarray(TEACHER))
  assert not np.asarray(grad).any()


def test_random_erasing_blanks_one_rectangle_of_a_tenth_to_a_third():
  images = jnp.ones((64, 40, 60))
  erased = np.asarray(mean_teacher.random_erasing(jax.random.PRNGKey(0),
                                                  images))
  share = (erased == 0).mean(axis=(1, 2))
  assert (share > 0.05).all() and (share < 0.4).all()
  for image in erased:  # One rectangle: its rows and columns agree.
    rows, cols = np.nonzero(image == 0)
    assert len(rows) == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)


def config(**fields):
  c = ml_collections.ConfigDict({
      "ema_decay": 0.999, "geo_prior": "", "geo_threshold": 0.1,
      "mean_teacher": {"weight": 1.0, "consistency": "pred_mse",
                       "rampup_epochs": 2.0, "teacher_erasing": True,
                       "geo_mask": False}})
  c.update(fields)
  return c


def test_from_config_is_off_at_weight_zero_and_converts_epochs():
  assert mean_teacher.from_config(
      config(mean_teacher={"weight": 0.0}), 10, prior_lib.Priors(())) is None
  t = mean_teacher.from_config(config(), 10, prior_lib.Priors(()))
  assert t.rampup_steps == 20 and t.teacher_erasing


@pytest.mark.parametrize("fields,message", [
    ({"ema_decay": 0.0}, "ema_decay"),
    ({"mean_teacher": {"weight": 1.0, "consistency": "mse"}}, "choose from"),
    ({"mean_teacher": {"weight": 1.0, "geo_mask": True}}, "geo_prior")])
def test_from_config_names_what_is_wrong(fields, message):
  with pytest.raises(registry.ConfigError, match=message):
    mean_teacher.from_config(config(**fields), 10, prior_lib.Priors(()))
