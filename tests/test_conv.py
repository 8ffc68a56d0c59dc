"""CPU paths of models/conv.py against the native XLA ops, and dispatch."""

import flax.linen as nn
import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from inatsounds_jax import compilation
from inatsounds_jax import models
from inatsounds_jax.models import conv

NHWC = ("NHWC", "HWIO", "NHWC")


def _native(x, kernel, strides, padding, dilation, groups=1):
  return lax.conv_general_dilated(x, kernel, strides, padding,
                                  rhs_dilation=dilation,
                                  dimension_numbers=NHWC,
                                  feature_group_count=groups)


def _assert_same_values_and_grads(fn, reference, *args, rtol=1e-5):
  """Outputs and input/kernel gradients agree (relative to their scale)."""
  want = reference(*args)
  cotangent = jax.random.normal(jax.random.PRNGKey(9), want.shape)
  # Compiled as the library compiles its programs.
  got, grads = compilation.jit(
      lambda *a: (fn(*a), jax.vjp(fn, *a)[1](cotangent)))(*args)
  want_grads = jax.vjp(reference, *args)[1](cotangent)
  for a, b in zip((got, *grads), (want, *want_grads)):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max())


# (batch, height, channels, kernel, stride, dilation, padding); width is
# height + 1 so that rows and columns cannot be swapped unnoticed.
SHAPES = [
    (3, 9, 3, 3, 1, 1, ((1, 1), (1, 1))),
    (2, 9, 3, 3, 2, 1, ((1, 1), (1, 1))),
    (17, 10, 3, 5, 2, 1, ((2, 2), (2, 2))),  # Batch over one grad block.
    (2, 11, 2, 3, 3, 2, ((2, 1), (0, 3))),  # Odd stride, asymmetric pads.
    (2, 8, 4, 5, 1, 2, ((4, 4), (4, 4))),
    (1, 7, 2, 5, 2, 1, "SAME"),
    (2, 7, 2, 3, 2, 1, "VALID"),
    (2, 8, 4, 1, 1, 1, ((0, 0), (0, 0))),
    (2, 8, 4, 1, 2, 1, ((0, 0), (0, 0))),
    (2, 8, 3, 2, 2, 1, "VALID"),  # Windows do not overlap.
    (2, 9, 3, 2, 2, 2, "VALID"),  # Kernel = stride, but dilated: overlap.
]


def _default_suite_runs(indices):
  """SHAPES as parameters, all but `indices` marked slow."""
  return [c if i in indices else pytest.param(*c, marks=pytest.mark.slow)
          for i, c in enumerate(SHAPES)]


# Depthwise: strides 1, 2 and 3, dilation, asymmetric and SAME pads in the
# default suite. Dense: the matrix-product cases (1x1 with stride, windows
# that do not overlap), the dilated look-alike and two native ones.
CASES = _default_suite_runs({0, 1, 2, 3})
DENSE_CASES = _default_suite_runs({0, 1, 8, 9, 10})


@pytest.mark.parametrize("batch, size, channels, k, stride, dilation, pad",
                         CASES)
def test_depthwise_matches_native_conv(batch, size, channels, k, stride,
                                       dilation, pad):
  x = jax.random.normal(jax.random.PRNGKey(0),
                        (batch, size, size + 1, channels))
  kernel = jax.random.normal(jax.random.PRNGKey(1), (k, k, 1, channels))
  strides, dilations = (stride, stride), (dilation, dilation)
  _assert_same_values_and_grads(
      lambda x, w: conv.conv_general_dilated(
          x, w, strides, pad, rhs_dilation=dilations,
          dimension_numbers=NHWC, feature_group_count=channels),
      lambda x, w: _native(x, w, strides, pad, dilations, channels),
      x, kernel)


@pytest.mark.parametrize("batch, size, channels, k, stride, dilation, pad",
                         DENSE_CASES)
def test_dense_matches_native_conv(batch, size, channels, k, stride,
                                   dilation, pad):
  x = jax.random.normal(jax.random.PRNGKey(0),
                        (batch, size, size + 1, channels))
  kernel = jax.random.normal(jax.random.PRNGKey(1), (k, k, channels, 5))
  strides, dilations = (stride, stride), (dilation, dilation)
  _assert_same_values_and_grads(
      lambda x, w: conv.conv_general_dilated(
          x, w, strides, pad, rhs_dilation=dilations,
          dimension_numbers=NHWC),
      lambda x, w: _native(x, w, strides, pad, dilations), x, kernel,
      rtol=2e-5)


def test_other_convolutions_stay_native():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 8, 9))  # NCHW.
  kernel = jax.random.normal(jax.random.PRNGKey(1), (6, 2, 3, 3))
  args = (x, kernel, (1, 1), "SAME")
  options = dict(dimension_numbers=("NCHW", "OIHW", "NCHW"),
                 feature_group_count=2)
  np.testing.assert_array_equal(
      conv.conv_general_dilated(*args, **options),
      lax.conv_general_dilated(*args, **options))


def test_low_precision_accumulates_in_float32():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 12, 12, 8))
  kernel = jax.random.normal(jax.random.PRNGKey(1), (5, 5, 1, 8))
  want = _native(x, kernel, (1, 1), "SAME", (1, 1), 8)
  got = jax.jit(conv.depthwise_conv)(x.astype(jnp.bfloat16),
                                     kernel.astype(jnp.bfloat16))
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(got.astype(jnp.float32), want, rtol=0.05,
                             atol=0.05 * np.abs(want).max())


@pytest.mark.parametrize("batch, size, channels, k, stride, pad", [
    (2, 12, 3, 3, 2, ((1, 1), (1, 1))),
    (3, 9, 2, 2, 2, ((0, 0), (0, 0))),
    (2, 10, 2, 3, 1, ((1, 1), (1, 1))),
])
def test_max_pool_matches_flax(batch, size, channels, k, stride, pad):
  x = jax.random.normal(jax.random.PRNGKey(0),
                        (batch, size, size + 1, channels))
  _assert_same_values_and_grads(
      lambda x: conv.max_pool(x, (k, k), (stride, stride), pad),
      lambda x: nn.max_pool(x, (k, k), strides=(stride, stride),
                            padding=pad), x)


def test_max_pool_gradient_goes_to_first_maximum_like_torch():
  torch = pytest.importorskip("torch")
  # ReLU outputs: many windows are all zeros, so ties are everywhere.
  x = np.maximum(np.random.default_rng(0).standard_normal((2, 4, 9, 10)),
                 0).astype(np.float32)
  g = np.random.default_rng(1).standard_normal((2, 4, 5, 5)).astype(
      np.float32)
  tx = torch.from_numpy(x).requires_grad_()
  torch.nn.functional.max_pool2d(tx, 3, 2, 1).backward(torch.from_numpy(g))
  def pool(x):
    return conv.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))

  _, vjp = jax.vjp(pool, jnp.asarray(x.transpose(0, 2, 3, 1)))
  got, = jax.jit(vjp)(jnp.asarray(g.transpose(0, 2, 3, 1)))
  np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2),
                             tx.grad.numpy(), rtol=1e-6, atol=1e-6)


def _lowered_text(fn, platform, *shapes):
  args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
  return jax.export.export(jax.jit(fn), platforms=[platform])(
      *args).mlir_module()


def _grad_of_a_small_network(x, depthwise, dense):
  def step(x, depthwise, dense):
    y = conv.depthwise_conv(x, depthwise, (2, 2), "SAME")
    y = conv.dense_conv(y, dense, (1, 1), "SAME")
    y = conv.max_pool(y, (3, 3), (2, 2), ((1, 1), (1, 1)))
    return jnp.sum(y ** 2)
  return jax.grad(step, argnums=(0, 1, 2))(x, depthwise, dense)


SMALL_NETWORK_SHAPES = ((2, 16, 16, 8), (3, 3, 1, 8), (3, 3, 8, 4))


def _native_ops_used(text):
  grouped = "feature_group_count = 8" in text
  pools = "reduce_window" in text or "select_and_scatter" in text
  assert grouped == pools, "both native or both CPU paths"
  return grouped


@pytest.mark.parametrize("platform", ["cpu", "cuda", "tpu"])
def test_native_ops_everywhere_but_cpu(platform):
  text = _lowered_text(_grad_of_a_small_network, platform,
                       *SMALL_NETWORK_SHAPES)
  assert _native_ops_used(text) == (platform != "cpu")


def test_native_ops_context_traces_native_ops_for_cpu_too():
  """What TFLite conversion relies on to get its own depthwise kernels."""
  def traced_fresh():  # A new function: jit reuses earlier traces.
    return _lowered_text(lambda *a: _grad_of_a_small_network(*a), "cpu",
                         *SMALL_NETWORK_SHAPES)

  with conv.native_ops():
    assert _native_ops_used(traced_fresh())
  assert not _native_ops_used(traced_fresh())


@pytest.mark.slow
def test_sharded_batch_norm_network_gradients_are_float32_accurate():
  """ResNet-18 in training mode (BatchNorm over the global batch, the CPU
  convolution and pooling paths) on 1 and 8 devices, against float64."""
  model = models.create("resnet18", 6)
  variables = models.init(model, jax.random.PRNGKey(0), (32, 64))
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 32, 64, 3))
  labels = jax.nn.one_hot(jnp.arange(8) % 6, 6)

  def loss(params, batch_stats, x, labels):
    logits, _ = model.apply({"params": params, "batch_stats": batch_stats},
                            x, train=True, mutable=["batch_stats"])
    return -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(logits), -1))

  grad = jax.jit(jax.grad(loss))
  args = (variables["params"], variables["batch_stats"], x, labels)
  mesh = Mesh(np.array(jax.devices()), ("data",))
  sharded = jax.device_put(args[2:], NamedSharding(mesh,
                                                   PartitionSpec("data")))
  one, eight = grad(*args), grad(*args[:2], *sharded)
  with jax.enable_x64(True):
    exact = jax.jit(jax.grad(loss))(*jax.tree.map(
        lambda a: np.asarray(a, np.float64), args))
  for got in (one, eight):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(exact)):
      np.testing.assert_allclose(a, b, atol=1e-4 * np.abs(b).max(), rtol=0)


@pytest.mark.parametrize("lhs_shape", [(5, 7), (2, 3, 7), (2, 3, 4, 7)])
def test_dense_layer_product_matches_native_dot(lhs_shape):
  x = jax.random.normal(jax.random.PRNGKey(0), lhs_shape)
  kernel = jax.random.normal(jax.random.PRNGKey(1), (7, 6))
  numbers = (((len(lhs_shape) - 1,), (0,)), ((), ()))
  _assert_same_values_and_grads(
      lambda x, k: conv.dot_general(x, k, numbers),
      lambda x, k: lax.dot_general(x, k, numbers), x, kernel)


def test_other_products_stay_native():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 5))
  numbers = (((2,), (2,)), ((0,), (0,)))  # A batched product.
  text = jax.jit(lambda x: conv.dot_general(x, x, numbers)).lower(
      x).as_text()
  assert "platform_index" not in text and "case" not in text


def test_flax_dense_with_it_equals_flax_dense():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 8))
  ours = nn.Dense(3, dot_general=conv.dot_general)
  theirs = nn.Dense(3)
  params = theirs.init(jax.random.PRNGKey(1), x)["params"]

  def apply(module):
    return lambda kernel, bias, x: module.apply(
        {"params": {"kernel": kernel, "bias": bias}}, x)

  _assert_same_values_and_grads(apply(ours), apply(theirs), params["kernel"],
                                params["bias"], x)


def test_bfloat16_dense_layer_gradients_keep_their_dtypes():
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 3, 8))
  kernel = jax.random.normal(jax.random.PRNGKey(1), (8, 5))
  numbers = (((2,), (0,)), ((), ()))

  def grads(product, dtype):
    return jax.grad(lambda x, k: jnp.sum(product(x, k, numbers).astype(
        jnp.float32) ** 2), argnums=(0, 1))(x.astype(dtype),
                                             kernel.astype(dtype))

  got = grads(conv.dot_general, jnp.bfloat16)
  want = grads(lax.dot_general, jnp.float32)
  for g, w in zip(got, want):
    assert g.dtype == jnp.bfloat16
    np.testing.assert_allclose(g.astype(jnp.float32), w, rtol=0.05,
                               atol=0.05 * np.abs(w).max())
