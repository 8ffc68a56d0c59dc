"""Multi-head self-attention from a fused qkv projection, fast on CPU.

`self_attention(qkv)` equals `jax.nn.dot_product_attention(q, k, v)` on
the three slices of `qkv` (softmax of q k^T / sqrt(head_dim) in float32,
times v) up to float rounding (q is scaled before its product here). On
GPU and TPU it is that call. On CPU, where that call's training step
spends much of a ViT's time around attention's products (the softmax, its
gradient, the slices of qkv and their gradients as padded copies added
together, layout copies), it is computed heads-major with a hand-written
gradient:

  s = q k^T / sqrt(d), p = softmax(s), o = p v;
  dv = p^T do, dp = do v^T, ds = p (dp - rowsum(do o)),
  dq = ds k / sqrt(d), dk = ds^T q / sqrt(d)

(the rowsum of do o equals that of p dp, over d entries instead of n), and
dqkv is written as one array. `p` is kept for the gradient: `[batch,
heads, n, n]`, 7.5 MB a block for ViT-Ti at batch 16.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from inatsounds_jax.models import conv


def self_attention(qkv: jax.Array) -> jax.Array:
  """`[batch, n, 3, heads, head_dim]` -> `[batch, n, heads, head_dim]`."""

  def native(qkv):
    return jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1],
                                        qkv[:, :, 2])

  return conv.by_platform(qkv, cpu=_attention_cpu, default=native)


def _heads_major(qkv):
  """[b, n, 3, h, d] -> q, k, v, each [b, h, n, d]."""
  return tuple(jnp.moveaxis(qkv, (2, 3), (0, 2)))


def _scale(q):
  """1 / sqrt(head_dim) in q's dtype."""
  return np.float32(1 / np.sqrt(q.shape[-1])).astype(q.dtype)


def _forward(qkv):
  q, k, v = _heads_major(qkv)
  scale = _scale(q)
  logits = jnp.einsum("bhqd,bhkd->bhqk", q * scale, k,
                      preferred_element_type=jnp.float32)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum("bhqk,bhkd->bhqd", probs, v)
  return jnp.moveaxis(out, 1, 2), probs


@jax.custom_vjp
def _attention_cpu(qkv):
  return _forward(qkv)[0]


def _attention_fwd(qkv):
  out, probs = _forward(qkv)
  return out, (qkv, out, probs)


def _attention_bwd(residuals, grad):
  qkv, out, probs = residuals
  q, k, v = _heads_major(qkv)
  scale = _scale(q)
  grad_heads = jnp.moveaxis(grad, 2, 1)  # [b, h, n, d]
  dv = jnp.einsum("bhqk,bhqd->bhkd", probs, grad_heads)
  dprobs = jnp.einsum("bhqd,bhkd->bhqk", grad_heads, v,
                      preferred_element_type=jnp.float32)
  row = jnp.sum(grad.astype(jnp.float32) * out.astype(jnp.float32),
                axis=-1)  # [b, n, h]
  dlogits = (probs * (dprobs - jnp.moveaxis(row, 1, 2)[..., None])).astype(
      q.dtype) * scale
  dq = jnp.einsum("bhqk,bhkd->bhqd", dlogits, k)
  dk = jnp.einsum("bhqk,bhqd->bhkd", dlogits, q)
  return (jnp.moveaxis(jnp.stack([dq, dk, dv]), (0, 2), (2, 3)),)


_attention_cpu.defvjp(_attention_fwd, _attention_bwd)
