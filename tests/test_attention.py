"""models/attention.py: the CPU path against jax.nn.dot_product_attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inatsounds_jax.models import attention
from inatsounds_jax.models import conv


def _native(qkv):
  return jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1],
                                      qkv[:, :, 2])


@pytest.mark.parametrize("shape", [(2, 7, 3, 3, 8), (1, 197, 3, 2, 16)])
def test_cpu_attention_and_its_gradient_equal_the_native_op(shape):
  qkv = jax.random.normal(jax.random.PRNGKey(0), shape) * 2
  want = _native(qkv)
  cotangent = jax.random.normal(jax.random.PRNGKey(1), want.shape)
  got, vjp = jax.vjp(jax.jit(attention.self_attention), qkv)
  [grad] = vjp(cotangent)
  [want_grad] = jax.vjp(_native, qkv)[1](cotangent)
  assert got.shape == want.shape and grad.shape == qkv.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-5,
                             atol=1e-5 * np.abs(want_grad).max())


def test_bfloat16_attention_stays_close_to_float32():
  qkv = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 3, 2, 8))
  got = attention.self_attention(qkv.astype(jnp.bfloat16))
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(got.astype(jnp.float32), _native(qkv),
                             atol=0.05)


def _gradient_text(platform):
  def loss_grad(qkv):  # A new function each time: jit reuses traces.
    return jax.grad(lambda q: jnp.sum(attention.self_attention(q) ** 2))(qkv)

  spec = jax.ShapeDtypeStruct((2, 5, 3, 2, 4), jnp.float32)
  return jax.export.export(jax.jit(loss_grad), platforms=[platform])(
      spec).mlir_module()


@pytest.mark.parametrize("platform", ["cpu", "cuda", "tpu"])
def test_hand_written_gradient_only_on_cpu(platform):
  # The CPU path writes the three gradients as one stacked array; autodiff
  # of the native op pads each slice's gradient instead.
  assert ("stablehlo.concatenate" in _gradient_text(platform)) == (
      platform == "cpu")


def test_native_ops_context_traces_the_native_attention_for_cpu_too():
  with conv.native_ops():
    assert "stablehlo.concatenate" not in _gradient_text("cpu")
