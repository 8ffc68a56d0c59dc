"""Layer-wise learning-rate decay, frozen blocks and linear probing in the
optimizer (fast: parameter trees named like a ViT classifier's)."""

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from inatsounds_jax import adaptation
from inatsounds_jax import registry
from inatsounds_jax import train
from inatsounds_jax import trained

import model_workdir


def vit_like_params(depth=2):
  """A classifier's parameter names and kinds, small arrays."""
  net = {"patch_embed_proj": {"kernel": jnp.ones((2, 2, 1, 4)),
                              "bias": jnp.ones(4)},
         "cls_token": jnp.ones((1, 1, 4)), "pos_embed": jnp.ones((1, 3, 4)),
         "fc_norm": {"scale": jnp.ones(4), "bias": jnp.ones(4)},
         "head": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)}}
  for i in range(depth):
    net[f"blocks_{i}_attn_qkv"] = {"kernel": jnp.ones((4, 12)),
                                   "bias": jnp.ones(12)}
    net[f"blocks_{i}_norm1"] = {"scale": jnp.ones(4), "bias": jnp.ones(4)}
  return {"net": net}


def optimizer(**fields):
  c = ml_collections.ConfigDict(dict(
      model="vit_mu16", grad_clip_norm=0.0, optimizer="sgd", momentum=0.0,
      nesterov=False, weight_decay=0.0, layer_decay=0.0, freeze_blocks=0,
      linear_probe=False))
  c.update(fields)
  return train.make_optimizer(c, optax.constant_schedule(1.0))


def one_update(tx, params):
  grads = jax.tree.map(jnp.ones_like, params)
  state = tx.init(params)
  updates, _ = tx.update(grads, state, params)
  return state, updates


def test_layer_wise_decay_gives_each_layer_its_learning_rate():
  params = vit_like_params(depth=2)
  _, updates = one_update(optimizer(layer_decay=0.5), params)
  # SGD with learning rate 1 and gradient 1: the update is -lr scale.
  expected = {"patch_embed_proj": 0.5 ** 3, "cls_token": 0.5 ** 3,
              "pos_embed": 0.5 ** 3, "blocks_0_attn_qkv": 0.5 ** 2,
              "blocks_0_norm1": 0.5 ** 2, "blocks_1_attn_qkv": 0.5,
              "blocks_1_norm1": 0.5, "fc_norm": 1.0, "head": 1.0}
  for name, scale in expected.items():
    for leaf in jax.tree.leaves(updates["net"][name]):
      np.testing.assert_allclose(leaf, -scale, err_msg=name)


def test_frozen_blocks_get_no_update_and_no_optimizer_state():
  params = vit_like_params(depth=2)
  tx = optimizer(freeze_blocks=1, optimizer="adam")
  state, updates = one_update(tx, params)
  frozen = ("patch_embed_proj", "cls_token", "pos_embed",
            "blocks_0_attn_qkv", "blocks_0_norm1")
  for name, value in updates["net"].items():
    moved = any(np.abs(x).max() > 0 for x in jax.tree.leaves(value))
    assert moved == (name not in frozen), name
  trained = sum(np.size(x) for name, v in params["net"].items()
                if name not in frozen for x in jax.tree.leaves(v))
  state_size = sum(np.size(x) for x in jax.tree.leaves(state))
  # Adam's moments, its step count and the schedule's.
  assert state_size == 2 * trained + 2


def test_linear_probe_trains_only_the_head():
  params = vit_like_params(depth=2)
  state, updates = one_update(optimizer(linear_probe=True, optimizer="adam"),
                              params)
  for name, value in updates["net"].items():
    moved = any(np.abs(x).max() > 0 for x in jax.tree.leaves(value))
    assert moved == (name == "head"), name
  assert sum(np.size(x) for x in jax.tree.leaves(state)) == 2 * (4 * 3 + 3) + 2


def test_without_adaptation_settings_the_optimizer_is_unchanged():
  params = vit_like_params()
  _, updates = one_update(optimizer(), params)
  assert all(np.all(x == -1.0) for x in jax.tree.leaves(updates))


@pytest.mark.parametrize("fields,message", [
    ({"freeze_blocks": 3}, "freeze_blocks=3: model 'vit_mu16' has 2 blocks; "
     "choose 0..2"),
    ({"layer_decay": 1.5}, "layer_decay=1.5 must be in [0, 1]"),
])
def test_settings_the_model_cannot_take_are_refused(fields, message):
  with pytest.raises(registry.ConfigError) as e:
    optimizer(**fields).init(vit_like_params(depth=2))
  assert message in str(e.value)


def test_layer_settings_on_a_model_without_blocks_are_refused():
  params = {"net": {"conv1": {"kernel": jnp.ones((3, 3, 1, 4))},
                    "head": {"kernel": jnp.ones((4, 3))}}}
  with pytest.raises(registry.ConfigError, match="need a ViT model"):
    optimizer(layer_decay=0.75).init(params)


def test_a_classifier_starts_from_another_classifier_with_a_fresh_head(
    tmp_path):
  source = trained.load(model_workdir.make_workdir(
      str(tmp_path / "source"), num_classes=6, seed=1))
  model = trained.build_model(source.config, 4, multilabel=True)
  fresh = jax.device_get(trained.init_variables(model,
                                                jax.random.PRNGKey(2)))
  loaded, kept_fresh = adaptation.classifier_variables_from_classifier(
      source, model, fresh, "SOURCE")
  flat = flax.traverse_util.flatten_dict(loaded)
  given = flax.traverse_util.flatten_dict(jax.device_get(source.variables))
  fresh_flat = flax.traverse_util.flatten_dict(fresh)
  head = {key for key in flat if "/".join(map(str, key[1:])) in kept_fresh}
  # Only the head's kernel and bias (6 -> 4 classes) start fresh.
  assert len(kept_fresh) == len(head) == 2
  for key, value in flat.items():
    expected = fresh_flat[key] if key in head else given[key]
    np.testing.assert_array_equal(value, expected)


def test_a_classifier_of_another_backbone_is_refused(tmp_path):
  source = trained.load(model_workdir.make_workdir(str(tmp_path / "source")))
  config = source.config.copy_and_resolve_references()
  config.model = "vit_mu16"
  model = trained.build_model(config, 6, multilabel=False)
  with pytest.raises(registry.ConfigError,
                     match="init_checkpoint SOURCE: a 'placeholder' "
                           "classifier; this run's model is 'vit_mu16'"):
    adaptation.classifier_variables_from_classifier(source, model, {},
                                                    "SOURCE")
