"""Adapting a pretrained ViT encoder to species classification.

The MAE study on iNatSounds (Liu et al. 2026, s. 3 and 4.3-4.5) adapts its
encoders three ways, all through the classifier job with a `vit_*16` model:

- fine-tuning: every parameter trained, the learning rate of layer i scaled
  by `layer_decay ** (depth + 1 - i)` (layer 0 the embeddings, i the i-th
  block, depth + 1 the norm and head; BEiT/MAE's layer-wise decay, 0.75);
- partial fine-tuning: the embeddings and the first `freeze_blocks` blocks
  frozen;
- linear probing (`linear_probe`): everything but the head frozen (with
  `model_options.head_batchnorm`, MAE's non-affine batch norm before it).

Frozen parameters get no optimizer state (`optax.multi_transform` with
`set_to_zero`), so a probe of ViT-B keeps Adam moments for the head only.
`classifier_params_from_mae` puts an MAE workdir's encoder into a fresh
classifier (the decoder is dropped); `classifier_variables_from_classifier`
starts a classifier from another classifier of the same backbone (a
workdir or a bundle: fine-tuning on other data), its head kept where the
class count agrees.
"""

from __future__ import annotations

import flax
import jax
import numpy as np
import optax

from inatsounds_jax import registry
from inatsounds_jax.models import vit

FROZEN, TRAINED = "frozen", "trained"
# Leaves of a module (kernel, bias, scale, ...) are named after the module;
# the parameters that are arrays themselves (pos_embed) after themselves.
_LEAF_NAMES = ("kernel", "bias", "scale", "embedding")


def _module_name(path) -> str:
  keys = [getattr(k, "key", str(k)) for k in path]
  return keys[-2] if keys[-1] in _LEAF_NAMES and len(keys) > 1 else keys[-1]


def vit_depth(params) -> int:
  """Number of `blocks_i_*` in a ViT parameter tree (0: not a ViT)."""
  blocks = {vit.block_index(_module_name(p))
            for p, _ in jax.tree_util.tree_leaves_with_path(params)}
  blocks.discard(None)
  return len(blocks)


def layer_ids(params):
  """Per parameter, its `vit.layer_index` (same tree structure)."""
  depth = vit_depth(params)
  return jax.tree_util.tree_map_with_path(
      lambda p, _: vit.layer_index(_module_name(p), depth), params)


def layer_scales(params, decay: float):
  """Per parameter, the factor of its learning rate: decay ** (depth + 1 -
  layer)."""
  depth = vit_depth(params)
  return jax.tree.map(lambda i: float(decay ** (depth + 1 - i)),
                      layer_ids(params))


def trained_or_frozen(params, freeze_blocks: int, linear_probe: bool):
  """Per parameter, `FROZEN` or `TRAINED`. A linear probe trains the head
  and the location input's layers (`Classifier.location_head`: they join
  the head, so they are new to the pretrained backbone too)."""
  if linear_probe:
    return jax.tree_util.tree_map_with_path(
        lambda p, _: TRAINED if _module_name(p) == "head" or any(
            getattr(k, "key", None) == "location_head" for k in p)
        else FROZEN, params)
  return jax.tree.map(
      lambda i: FROZEN if freeze_blocks and i <= freeze_blocks else TRAINED,
      layer_ids(params))


def _scale_updates(scales_of):
  """Multiplies each update by its factor (stateless). After AdamW this is
  the same as scaling that parameter's learning rate."""
  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, s: u * s, updates, scales_of(updates)), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(),
                                      update)


def check_adaptation(config, depth: int) -> None:
  """Raises `registry.ConfigError` for settings the model cannot take."""
  decay = config.get("layer_decay", 0.0)
  freeze = config.get("freeze_blocks", 0)
  if not depth:
    raise registry.ConfigError(
        f"layer_decay={decay}, freeze_blocks={freeze}, linear_probe="
        f"{config.get('linear_probe', False)}: these need a ViT model "
        f"(vit_*16); model {config.model!r} has no transformer blocks")
  if not 0 <= freeze <= depth:
    raise registry.ConfigError(
        f"freeze_blocks={freeze}: model {config.model!r} has {depth} blocks; "
        f"choose 0..{depth}")
  if not 0.0 <= decay <= 1.0:
    raise registry.ConfigError(f"layer_decay={decay} must be in [0, 1] "
                               "(0: off)")


def adapt_optimizer(tx: optax.GradientTransformation, config
                    ) -> optax.GradientTransformation:
  """`tx` for the trained parameters only, with layer-wise decay; `tx`
  itself when `layer_decay`, `freeze_blocks` and `linear_probe` are unset.

  The parameter groups are found from the parameter names when the
  optimizer is initialised (at start-up, before the first step), where a
  setting the model cannot take raises `registry.ConfigError`.
  """
  decay = config.get("layer_decay", 0.0)
  freeze = config.get("freeze_blocks", 0)
  probe = config.get("linear_probe", False)
  if not (decay or freeze or probe):
    return tx

  def labels(params):
    check_adaptation(config, vit_depth(params))
    return trained_or_frozen(params, freeze, probe)

  tx = optax.multi_transform({TRAINED: tx, FROZEN: optax.set_to_zero()},
                             labels)
  if decay:
    tx = optax.chain(tx, _scale_updates(lambda u: layer_scales(u, decay)))
  return tx


def classifier_params_from_mae(source, classifier, params, path: str) -> dict:
  """`params` (a fresh classifier's) with the encoder of MAE `source` (a
  `trained.TrainedModel` of a pretraining workdir) in place.

  The position embeddings become the MAE's fixed sin-cos ones (zero for the
  class token); the head, its norm and anything else the encoder lacks
  keep their fresh values. With average pooling the encoder's final norm is
  dropped (the pooled tokens get their own `fc_norm`, as in AudioMAE).

  Raises:
    registry.ConfigError: `source` is not an MAE, or its encoder does not
      fit the classifier (size, patch size, input shape), saying what was
      found and what was expected.
  """
  objective = source.config.objective
  if objective != "masked_reconstruction":
    raise registry.ConfigError(
        f"init_checkpoint {path}: a workdir of a {objective!r} run (model "
        f"{source.config.model!r}); expected a masked-autoencoder "
        "pretraining workdir (objective 'masked_reconstruction')")
  mae, encoder = source.model, source.variables["params"]
  found, expected = tuple(mae.image_size), tuple(classifier.image_size)
  if found != expected or mae.image.channels != classifier.image.channels:
    raise registry.ConfigError(
        f"init_checkpoint {path}: the MAE was pretrained on "
        f"{mae.image.channels} x {found[0]} x {found[1]} inputs; this model "
        f"takes {classifier.image.channels} x {expected[0]} x {expected[1]} "
        "(set image.size / image.channels / window_frames to match)")
  net = dict(params["net"])
  for name, value in encoder.items():
    if name.startswith("decoder_") or name == "mask_token":
      continue
    if name == "norm" and "norm" not in net:
      continue  # Average pooling has its own fc_norm (as in AudioMAE).
    if name not in net:
      raise registry.ConfigError(
          f"init_checkpoint {path}: the MAE encoder has {name!r}, which "
          f"model {classifier.backbone!r} lacks (MAE encoder size "
          f"{mae.size!r})")
    shapes = (jax.tree.map(np.shape, value), jax.tree.map(np.shape, net[name]))
    if shapes[0] != shapes[1]:
      raise registry.ConfigError(
          f"init_checkpoint {path}: {name} has shapes {shapes[0]} in the MAE "
          f"(encoder size {mae.size!r}, patch {vit.PATCH}); model "
          f"{classifier.backbone!r} expects {shapes[1]}")
    net[name] = value
  width = np.shape(net["pos_embed"])[-1]
  net["pos_embed"] = np.concatenate(
      [np.zeros((1, width), np.float32),
       vit.sincos_pos_embed(width, vit.grid_size(expected))])[None]
  return {**params, "net": net}


def classifier_variables_from_classifier(source, classifier, variables: dict,
                                         path: str
                                         ) -> tuple[dict, list[str]]:
  """`variables` (a fresh classifier's `params` and `batch_stats`) with those
  of classifier `source` (a `trained.TrainedModel`) in place.

  Every variable whose name and shape agree is taken from `source`; the
  others (the head when the class count differs, a location head the source
  lacks) keep their fresh values, and their names are returned.

  Raises:
    registry.ConfigError: `source` has another backbone, or more than the
      head's variables disagree, saying which.
  """
  found, wanted = source.config.model, classifier.backbone
  if found != wanted:
    raise registry.ConfigError(
        f"init_checkpoint {path}: a {found!r} classifier; this run's model "
        f"is {wanted!r} (a classifier starts only from one of its backbone)")
  given = flax.traverse_util.flatten_dict(jax.device_get(source.variables))
  out, fresh = {}, []
  for collection in ("params", "batch_stats"):
    mine = flax.traverse_util.flatten_dict(variables.get(collection) or {})
    for key, value in mine.items():
      theirs = given.get((collection, *key))
      if theirs is not None and np.shape(theirs) == np.shape(value):
        mine[key] = theirs
      else:
        fresh.append("/".join(map(str, key)))
    out[collection] = flax.traverse_util.unflatten_dict(mine) if mine else {}
  leaves = len(jax.tree.leaves(variables))
  if len(fresh) > max(4, leaves // 10):
    raise registry.ConfigError(
        f"init_checkpoint {path}: {len(fresh)} of {leaves} variables do not "
        f"fit model {wanted!r} (e.g. {', '.join(fresh[:3])}): its options "
        "differ from this run's")
  return out, fresh

