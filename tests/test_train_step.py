"""The training step, losses, registries and start-up checks, without data
or a training run (fast)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from inatsounds_jax import augment
from inatsounds_jax import config_defaults
from inatsounds_jax import losses
from inatsounds_jax import models
from inatsounds_jax import registry
from inatsounds_jax import train
from inatsounds_jax.models import classifier as classifier_lib
from inatsounds_jax.models import image as image_lib

NUM_CLASSES = 5


@functools.lru_cache(maxsize=None)
def tiny_model():
  return classifier_lib.Classifier(
      backbone="placeholder", num_classes=NUM_CLASSES,
      image=image_lib.ImageConfig(size=(32, 32), channels=1), window_frames=32)


def run_step(loss: losses.Loss):
  model = tiny_model()
  tx = optax.sgd(0.1)
  state = train.init_state(model, tx, loss, jax.random.PRNGKey(0), ema=False)
  rng = np.random.default_rng(0)
  batch = {"waveform": rng.integers(-3000, 3000, (2, model.window_samples),
                                    dtype=np.int16),
           "label": np.array([1, 3], np.int32)}
  no_augment = augment.AugmentConfig(freq_mask_max_width=0,
                                     time_mask_max_width=0)
  new, metrics = jax.jit(functools.partial(
      train.train_step, model=model, tx=tx, loss=loss,
      augment_config=no_augment, ema_decay=0.0,
      schedule=lambda step: 0.1))(state, batch)
  return state, new, jax.device_get(metrics)


def stateful(fn, multilabel=False):
  return losses.Loss(fn, multilabel=multilabel,
                     init=lambda num_classes: jnp.zeros(()))


def ce(logits, targets):
  return optax.softmax_cross_entropy(logits, targets).mean()


BAD_LOSSES = {
    "loss": stateful(lambda x, t, b, s: (ce(x, t) * jnp.nan, s)),
    # Finite value, NaN gradient (the where-gradient trap).
    "gradients": stateful(lambda x, t, b, s: (
        jnp.where(True, ce(x, t), jnp.sqrt(-1.0 - x).sum()), s)),
    # Finite value and gradients; the loss state becomes NaN.
    "update": stateful(lambda x, t, b, s: (ce(x, t), s + jnp.nan)),
}


@pytest.mark.parametrize("what", sorted(BAD_LOSSES))
def test_non_finite_step_is_skipped_and_says_what(what):
  old, new, metrics = run_step(BAD_LOSSES[what])
  flags = {k: bool(metrics[f"finite_{k}"])
           for k in ("loss", "gradients", "update")}
  assert not flags[what]
  assert int(new.step) == 1
  jax.tree.map(np.testing.assert_array_equal, old.params, new.params)
  jax.tree.map(np.testing.assert_array_equal, old.loss_state, new.loss_state)
  message = train.non_finite_message(7, metrics, "started from X")
  expected = {"loss": "the loss became nan",
              "gradients": "the gradients became non-finite",
              "update": "the updated parameters or optimizer state"}[what]
  assert message.startswith(f"at step 7 {expected}")
  assert "This run started from X" in message


def test_finite_step_updates_parameters():
  old, new, metrics = run_step(losses.LOSSES.get("softmax_ce"))
  assert train.non_finite_message(1, metrics, "") is None
  changed = jax.tree.leaves(jax.tree.map(
      lambda a, b: bool(np.any(a != b)), old.params, new.params))
  assert any(changed)


def test_softmax_ce_matches_a_hand_computed_value():
  logits = jnp.array([[2.0, 0.0, -1.0]])
  targets = jnp.array([[0.0, 1.0, 0.0]])
  value, _ = losses.LOSSES.get("softmax_ce")(logits, targets, {}, ())
  expected = -(0.0 - np.log(np.exp(2.0) + 1.0 + np.exp(-1.0)))
  np.testing.assert_allclose(value, expected, rtol=1e-6)


def test_assume_negative_bce_sums_classes_and_averages_examples():
  logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
  targets = jnp.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
  value, _ = losses.LOSSES.get("assume_negative_bce")(logits, targets, {}, ())
  def sig(x):
    return 1 / (1 + np.exp(-x))

  first = -(np.log(sig(2.0)) + np.log(1 - sig(0.0)) + np.log(1 - sig(-1.0)))
  second = -3 * np.log(0.5)
  np.testing.assert_allclose(value, (first + second) / 2, rtol=1e-6)
  assert losses.LOSSES.get("assume_negative_bce").multilabel
  assert not losses.LOSSES.get("softmax_ce").multilabel


def test_unknown_names_list_the_choices():
  with pytest.raises(registry.ConfigError,
                     match=r"unknown loss 'ce'; choose from \["):
    losses.LOSSES.get("ce")
  with pytest.raises(registry.ConfigError, match="unknown model 'resnet9'"):
    models.create("resnet9", 3)
  with pytest.raises(registry.ConfigError, match="unknown optimizer"):
    train.OPTIMIZERS.get("lamb")


def test_image_size_reaches_only_backbones_that_depend_on_it():
  assert models.create("vit_ti16", 3, image_size=(32, 64)).image_size == (
      32, 64)
  assert not hasattr(models.create("resnet18", 3, image_size=(32, 64)),
                     "image_size")


@pytest.mark.parametrize("field, value, message", [
    ("eval_batch_size", 12, "eval_batch_size=12 must be a positive multiple "
                            "of the 8 devices"),
    ("batch_size", 0, "batch_size=0"),
    ("num_epochs", 0.0, "num_epochs=0.0"),
    ("train_split", "training", "train_split 'training' is not in the "
                                "dataset; it has \\['train'\\]"),
])
def test_config_problems_are_reported_at_start_up(field, value, message):
  c = config_defaults.classifier()
  c[field] = value
  with pytest.raises(registry.ConfigError, match=message):
    train.check_config(c, {"train": None}, num_devices=8, process_count=1)
