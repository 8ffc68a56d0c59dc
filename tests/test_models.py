"""Backbones: shapes, options, and parity with torchvision / timm."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inatsounds_jax import models
from inatsounds_jax.models import classifier as classifier_lib
from inatsounds_jax.models import convert
from inatsounds_jax.models import layers
from inatsounds_jax.models import vit as vit_lib

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

TORCH_MODELS = {
    "resnet18": lambda c: torchvision.models.resnet18(num_classes=c),
    "resnet34": lambda c: torchvision.models.resnet34(num_classes=c),
    "resnet50": lambda c: torchvision.models.resnet50(num_classes=c),
    "resnet101": lambda c: torchvision.models.resnet101(num_classes=c),
    "mobilenet_v3_large": lambda c: torchvision.models.mobilenet_v3_large(
        num_classes=c),
    "mobilenet_v3_small": lambda c: torchvision.models.mobilenet_v3_small(
        num_classes=c),
    "vit_b16": lambda c: torchvision.models.vit_b_16(num_classes=c),
    "vit_ti16": lambda c: timm.create_model("vit_tiny_patch16_224",
                                            num_classes=c),
    "vit_s16": lambda c: timm.create_model("vit_small_patch16_224",
                                           num_classes=c),
    "vit_l16": lambda c: timm.create_model("vit_large_patch16_224",
                                           num_classes=c),
}


def _random_torch_model(name, num_classes=11):
  torch.manual_seed(0)
  model = TORCH_MODELS[name](num_classes).eval()
  with torch.no_grad():
    for module in model.modules():  # Non-trivial running stats and heads.
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.normal_(0, 0.1)
        module.running_var.uniform_(0.5, 1.5)
        module.weight.normal_(1, 0.1)
        module.bias.normal_(0, 0.1)
      elif isinstance(module, torch.nn.Linear):
        module.weight.normal_(0, 0.02)
        module.bias.normal_(0, 0.02)
  return model


def _flax_logits(name, variables, x_nchw, num_classes, **options):
  model = models.create(name, num_classes, **options)
  x = jnp.asarray(x_nchw.transpose(0, 2, 3, 1))
  return np.asarray(jax.jit(lambda v, x: model.apply(v, x))(variables, x))


# The two largest take most of a minute each on 2 cores: end-to-end class.
# One model per family in the default suite; every model with the slow tests.
FAST_MODELS = ("resnet18", "mobilenet_v3_small", "vit_ti16")


@pytest.mark.parametrize("name", [
    n if n in FAST_MODELS else pytest.param(n, marks=pytest.mark.slow)
    for n in sorted(TORCH_MODELS)])
def test_parity_with_torch_in_eval_mode(name):
  tm = _random_torch_model(name)
  x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(
      np.float32)
  with torch.no_grad():
    want = tm(torch.from_numpy(x)).numpy()
  variables = convert.from_torch(name, tm.state_dict())
  got = _flax_logits(name, variables, x, 11)
  assert np.abs(got - want).max() / np.abs(want).max() < 1e-4
  assert sum(a.size for a in jax.tree.leaves(variables["params"])) == sum(
      p.numel() for p in tm.parameters())


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small",
                                  "vit_ti16"])
def test_parameter_count_of_fresh_models_matches_torch(name):
  model = models.create(name, 1000)
  variables = jax.eval_shape(lambda: models.init(model, jax.random.PRNGKey(0),
                                                 (224, 224)))
  assert sum(a.size for a in jax.tree.leaves(variables["params"])) == sum(
      p.numel() for p in TORCH_MODELS[name](1000).parameters())


# Compiling full-size backbones takes tens of seconds each on 2 cores.
@pytest.mark.slow
@pytest.mark.parametrize("name, options", [
    ("resnet18", {}), ("mobilenet_v3_small", {}),
    ("vit_ti16", {"image_size": (128, 512)})])
def test_shapes_for_both_input_layouts(name, options):
  model = models.create(name, 5, **options)
  for shape, channels in (((128, 512), 1), ((224, 224), 3)):
    if name.startswith("vit") and shape != options["image_size"]:
      continue
    v = models.init(model, jax.random.PRNGKey(0), shape, channels)
    out = jax.jit(model.apply)(v, jnp.zeros((2,) + shape + (channels,)))
    assert out.shape == (2, 5) and out.dtype == jnp.float32


def test_one_channel_stem_equals_repeated_grey_input():
  tm = _random_torch_model("resnet18")
  x = np.random.default_rng(1).standard_normal((2, 1, 96, 96)).astype(
      np.float32)
  three = convert.from_torch("resnet18", tm.state_dict())
  one = convert.from_torch("resnet18", tm.state_dict(), in_channels=1)
  np.testing.assert_allclose(
      _flax_logits("resnet18", one, x, 11),
      _flax_logits("resnet18", three, np.repeat(x, 3, axis=1), 11),
      rtol=1e-4, atol=1e-4)


def test_head_keep_replace_and_select():
  state = _random_torch_model("resnet18").state_dict()
  replaced = convert.from_torch("resnet18", state, num_classes=4,
                                head_bias_init=-1.5)
  np.testing.assert_array_equal(replaced["params"]["fc"]["kernel"], 0.0)
  np.testing.assert_array_equal(replaced["params"]["fc"]["bias"], -1.5)
  picked = convert.from_torch("resnet18", state, head_classes=[3, 0])
  np.testing.assert_array_equal(picked["params"]["fc"]["bias"],
                                state["fc.bias"].numpy()[[3, 0]])
  assert picked["params"]["fc"]["kernel"].shape == (512, 2)


def test_vit_position_embeddings_resample():
  tm = _random_torch_model("vit_ti16")
  x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(
      np.float32)
  same = convert.from_torch("vit_ti16", tm.state_dict(),
                            image_size=(224, 224))
  np.testing.assert_array_equal(same["params"]["pos_embed"],
                                tm.state_dict()["pos_embed"].numpy())
  with torch.no_grad():
    want = tm(torch.from_numpy(x)).numpy()
  np.testing.assert_allclose(_flax_logits("vit_ti16", same, x, 11), want,
                             rtol=1e-4, atol=1e-5)
  wide = convert.from_torch("vit_ti16", tm.state_dict(),
                            image_size=(128, 512))
  assert wide["params"]["pos_embed"].shape == (1, 1 + 8 * 32, 192)
  logits = _flax_logits("vit_ti16", wide,
                        np.zeros((1, 3, 128, 512), np.float32), 11,
                        image_size=(128, 512))
  assert logits.shape == (1, 11) and np.isfinite(logits).all()
  grid = np.random.default_rng(0).standard_normal((1, 1 + 4 * 4, 3))
  up = vit_lib.resample_pos_embed(grid, (4, 4), (8, 8))
  np.testing.assert_array_equal(up[:, 0], grid[:, 0])  # Class token kept.


@pytest.mark.slow
def test_bf16_forward_is_close_to_float32():
  model32 = models.create("resnet18", 10)
  model16 = models.create("resnet18", 10, dtype=jnp.bfloat16)
  v = models.init(model32, jax.random.PRNGKey(0), (64, 64))
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 64, 64, 3))
  a, b = jax.jit(model32.apply)(v, x), jax.jit(model16.apply)(v, x)
  assert b.dtype == jnp.float32
  assert jnp.abs(a - b).max() / jnp.abs(a).max() < 0.05


@pytest.mark.slow
def test_train_mode_updates_batch_stats_and_eval_uses_them():
  model = models.create("resnet18", 3)
  v = models.init(model, jax.random.PRNGKey(0), (32, 32))
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3)) * 3 + 1
  _, updates = jax.jit(functools.partial(
      model.apply, train=True, mutable=["batch_stats"]))(v, x)
  old = jax.tree.leaves(v["batch_stats"])
  new = jax.tree.leaves(updates["batch_stats"])
  assert any(not np.allclose(a, b) for a, b in zip(old, new))
  # Eval mode ignores the batch: one example gives the same logits alone.
  apply = jax.jit(model.apply)
  full = apply(v, x)
  np.testing.assert_allclose(apply(v, x[:1]), full[:1], rtol=1e-5,
                             atol=1e-5)


def test_safetensors_without_torch_and_bad_state_dicts(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  state = {k: v.numpy() for k, v in
           _random_torch_model("mobilenet_v3_small").state_dict().items()}
  path = str(tmp_path / "m.safetensors")
  save_file(state, path)
  a = convert.from_torch("mobilenet_v3_small", path)
  b = convert.from_torch("mobilenet_v3_small", state)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  with pytest.raises(convert.ConversionError, match="model leaves not in"):
    convert.from_torch("mobilenet_v3_large", state)
  del state["features.1.block.0.1.weight"]
  with pytest.raises(convert.ConversionError,
                     match="features_1_block_0_1/scale"):
    convert.from_torch("mobilenet_v3_small", state)
  with pytest.raises(ValueError, match="unknown model"):
    models.create("resnet9000", 3)


@pytest.mark.slow
def test_classifier_takes_waveforms():
  clf = classifier_lib.Classifier("resnet18", 6)
  wave = jnp.zeros((2, 65920), jnp.int16)
  v = clf.init(jax.random.PRNGKey(0), wave)
  assert clf.apply(v, wave).shape == (2, 6)
  tm = _random_torch_model("resnet18", 6)
  v = classifier_lib.from_backbone_variables(
      convert.from_torch("resnet18", tm.state_dict()))
  images = clf.apply(v, wave, method=classifier_lib.Classifier.spectrogram)
  assert images.shape == (2, 128, 512)
  np.testing.assert_allclose(
      clf.apply(v, images, method=classifier_lib.Classifier.classify),
      clf.apply(v, wave), rtol=1e-6)


@pytest.mark.parametrize("train", [False, True])
def test_batch_norm_matches_flax(train):
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 6, 5, 3)) * 2 + 1
  ours = layers.BatchNorm(use_running_average=not train, momentum=0.9,
                          epsilon=1e-3)
  flax_bn = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                         epsilon=1e-3)
  variables = flax_bn.init(jax.random.PRNGKey(0), x)
  assert jax.tree.structure(variables) == jax.tree.structure(
      ours.init(jax.random.PRNGKey(0), x))
  variables = jax.tree.map(  # Non-trivial parameters and statistics.
      lambda v: v + jax.random.uniform(jax.random.PRNGKey(1), v.shape),
      variables)

  def loss(module, params, x):
    y, updates = module.apply({**variables, "params": params}, x,
                              mutable=["batch_stats"])
    return jnp.sum(jnp.sin(y) * x), (y, updates)

  results = [jax.jit(jax.grad(functools.partial(loss, module), (0, 1),
                              has_aux=True))(variables["params"], x)
             for module in (ours, flax_bn)]
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5,
                                 atol=1e-5), *results)
