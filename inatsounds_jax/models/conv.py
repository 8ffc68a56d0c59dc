"""Convolutions, max pooling and dense layers' products: fast CPU paths,
native elsewhere.

XLA's CPU backend is slow on four things the backbones need, so on CPU
this module computes them differently (same values up to float rounding,
same gradients), and leaves GPU and TPU on the native ops, which their
compilers and cuDNN already run well:

- Depthwise convolution (`feature_group_count` = channels): XLA:CPU has no
  fast kernel for it, forward or backward. Here it is a sum of shifted,
  per-channel-scaled slices of the input, which XLA fuses into one
  vectorised loop, with hand-written gradients of the same form (autodiff
  of the sum would scatter into padded copies).
- Dense convolutions whose windows do not overlap (1x1, patch
  embeddings): plain matrix products, all three ways (XLA's convolution
  is slower there), and their kernel gradient's operands are
  materialised before the product (`_rows_product`): fused into the
  transpose XLA made for it, a batch norm's gradient was read with a
  row's stride, costing more than the product itself. Other dense
  convolutions stay XLA's own, forward and both gradients, compiled with
  `compilation.CPU_COMPILER_OPTIONS`.
- Max pooling's gradient: JAX's generic rule tracks argmax positions with
  four index arrays through a variadic reduce-window, costing far more
  than the pooling. Here the forward also records which window tap won
  (the first maximum, as PyTorch picks) and the gradient is routed by
  that index.
- Dense layers' products `[..., k] @ [k, o]`: the kernel gradient's
  operands are materialised first, as for the convolutions above.

`conv_general_dilated` is a drop-in for `lax.conv_general_dilated` (give
it to Flax as `nn.Conv(conv_general_dilated=...)`): NHWC / HWIO 2-D
convolutions take these paths, anything else goes to the native op;
`dot_general` likewise for `nn.Dense(dot_general=...)`. The choice of path
is made per platform when the function is lowered (`by_platform`, which
`attention.py` uses too), so one traced function runs each backend's best
path, also when exported for several platforms. Code that converts
the model for another runtime whose own kernels are better (TFLite's
DEPTHWISE_CONV_2D over XNNPACK, where jax2tf would turn the CPU path into
hundreds of slices and multiplies) traces inside `native_ops()`.

How these programs are compiled on CPU (XLA's own convolutions and
products rather than YNNPACK's) is `inatsounds_jax.compilation`'s.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Iterator, Sequence

import jax
from jax import lax
import jax.numpy as jnp


Pads = tuple[tuple[int, int], tuple[int, int]]
# Examples whose products are summed inside the depthwise kernel-gradient
# loop before the final reduction: the partial sums are (taps / 16) of the
# output gradient's size and the fused loop has taps x 16 slices.
_DEPTHWISE_GRAD_BLOCK = 16
_NATIVE_ONLY = contextvars.ContextVar("native_only", default=False)


@contextlib.contextmanager
def native_ops() -> Iterator[None]:
  """Functions traced inside use the native ops on every platform.

  Only new traces: a jitted function traced before keeps its cached trace.
  """
  token = _NATIVE_ONLY.set(True)
  try:
    yield
  finally:
    _NATIVE_ONLY.reset(token)



def by_platform(*args, cpu, default):
  """`lax.platform_dependent`, or `default` alone inside `native_ops()`."""
  if _NATIVE_ONLY.get():
    return default(*args)
  return lax.platform_dependent(*args, cpu=cpu, default=default)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated`; NHWC / HWIO 2-D convolutions routed here."""
  if _is_nhwc_2d(lhs, rhs, lhs_dilation, dimension_numbers,
                 batch_group_count):
    channels = lhs.shape[-1]
    args = (lhs, rhs, window_strides, padding, rhs_dilation or (1, 1),
            precision, preferred_element_type)
    if feature_group_count == channels > 1 and rhs.shape[2] == 1 and (
        rhs.shape[3] == channels):
      return depthwise_conv(*args)
    if feature_group_count == 1:
      return dense_conv(*args)
  return lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count,
      batch_group_count=batch_group_count, precision=precision,
      preferred_element_type=preferred_element_type)


def _is_nhwc_2d(lhs, rhs, lhs_dilation, dimension_numbers,
                batch_group_count) -> bool:
  if lhs.ndim != 4 or batch_group_count != 1 or any(
      d != 1 for d in (lhs_dilation or ())):
    return False
  return lax.conv_dimension_numbers(
      lhs.shape, rhs.shape, dimension_numbers) == lax.conv_dimension_numbers(
          lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))


def depthwise_conv(x: jax.Array, kernel: jax.Array,
                   strides: Sequence[int] = (1, 1), padding="SAME",
                   dilation: Sequence[int] = (1, 1), precision=None,
                   preferred_element_type=None) -> jax.Array:
  """Depthwise 2-D convolution: NHWC `x`, HWIO `kernel` [kh, kw, 1, C].

  Equal to `lax.conv_general_dilated(x, kernel, strides, padding,
  rhs_dilation=dilation, feature_group_count=C)` with NHWC / HWIO / NHWC
  dimension numbers; `padding` is "SAME", "VALID" or two (low, high) pairs.
  """
  strides, pads, dilation = _canonical(x, kernel, strides, padding, dilation)
  return by_platform(
      x, kernel,
      cpu=_on_cpu(_shifted_sum_conv, strides, pads, dilation,
                  preferred_element_type),
      default=_native(strides, pads, dilation, x.shape[-1], precision,
                      preferred_element_type))


def dense_conv(x: jax.Array, kernel: jax.Array,
               strides: Sequence[int] = (1, 1), padding="SAME",
               dilation: Sequence[int] = (1, 1), precision=None,
               preferred_element_type=None) -> jax.Array:
  """Ungrouped 2-D convolution, NHWC `x`, HWIO `kernel` [kh, kw, I, O].

  Equal to `lax.conv_general_dilated` with NHWC / HWIO / NHWC dimension
  numbers. On CPU a convolution whose windows do not overlap (1x1 kernels,
  patch embeddings with stride = kernel) is a matrix product over the
  channels of (rearranged) `x`, faster than XLA's convolution either way
  (BENCHMARKS.md); other kernels are XLA's convolution everywhere.
  """
  strides, pads, dilation = _canonical(x, kernel, strides, padding, dilation)
  native = _native(strides, pads, dilation, 1, precision,
                   preferred_element_type)
  windows_overlap = kernel.shape[:2] != (1, 1) and (
      kernel.shape[:2] != strides or dilation != (1, 1) or any(
          lo or hi for lo, hi in pads))
  if windows_overlap:
    return native(x, kernel)

  def on_cpu(x, kernel):
    dtype = preferred_element_type or jnp.result_type(x, kernel)
    return _matmul_conv(x, kernel, strides, pads, precision, dtype)

  return by_platform(x, kernel, cpu=on_cpu, default=native)


def _canonical(x, kernel, strides, padding, dilation):
  """Tuples of ints: strides, explicit (low, high) pads, dilation."""
  strides, dilation = tuple(strides), tuple(dilation)
  if isinstance(padding, str):
    dilated = [(k - 1) * d + 1 for k, d in zip(kernel.shape[:2], dilation)]
    padding = lax.padtype_to_pads(x.shape[1:3], dilated, strides, padding)
  return strides, tuple((int(lo), int(hi)) for lo, hi in padding), dilation


def _native(strides, pads, dilation, groups, precision,
            preferred_element_type):
  def conv(x, kernel):
    return lax.conv_general_dilated(
        x, kernel, strides, pads, rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups, precision=precision,
        preferred_element_type=preferred_element_type)
  return conv


def _on_cpu(fn, strides, pads, dilation, preferred_element_type):
  """`fn` computing in float32 (or wider), as native kernels accumulate."""
  def run(x, kernel):
    dtype = preferred_element_type or jnp.result_type(x, kernel)
    compute = jnp.promote_types(dtype, jnp.float32)
    return fn(x.astype(compute), kernel.astype(compute), strides, pads,
              dilation).astype(dtype)
  return run


# Windows: the slices every CPU path here is made of.


def _output_size(size, kernel_size, strides, pads, dilation):
  return tuple((n + lo + hi - d * (k - 1) - 1) // s + 1 for n, k, s, (lo, hi), d
               in zip(size, kernel_size, strides, pads, dilation))


def _tap_offsets(kernel_size, pads, dilation):
  """Input offset of each kernel tap, row-major over the taps."""
  return [(dilation[0] * a - pads[0][0], dilation[1] * b - pads[1][0])
          for a in range(kernel_size[0]) for b in range(kernel_size[1])]


def _pad_for(src, offsets, strides, out_size, value=0.0):
  """`src` padded so that every window below lies inside; offsets into it.

  A window at offset (oi, oj) is src[..., s0*i + oi, s1*j + oj, :] for
  i, j < out_size (rows and columns are the 3rd- and 2nd-last axes), and
  reads `value` outside `src`. Padding once and slicing vectorises; padding
  fused into every window costs a bounds check per element.
  """
  pads = []
  for axis, (s, n) in enumerate(zip(strides, out_size)):
    low = max(0, -min(o[axis] for o in offsets))
    high = max(0, s * (n - 1) + max(o[axis] for o in offsets) + 1
               - src.shape[axis - 3])
    pads.append((low, high, 0))
  padded = lax.pad(src, jnp.asarray(value, src.dtype),
                   ((0, 0, 0),) * (src.ndim - 3) + (*pads, (0, 0, 0)))
  return padded, [(i + pads[0][0], j + pads[1][0]) for i, j in offsets]


def _window(padded, offset, strides, out_size, examples=(0, 1)):
  """One window of a `_pad_for` result; `examples`: (first, step) on axis 0.

  The window takes every step-th example from `first`, a free slice.
  """
  first, step = examples
  lead = padded.ndim - 3
  start = (first,) + (0,) * (lead - 1) + (*offset, 0)
  limit = padded.shape[:lead] + tuple(
      o + s * (n - 1) + 1 for o, s, n in zip(offset, strides, out_size)) + (
          padded.shape[-1],)
  return lax.slice(padded, start, limit, (step,) + (1,) * (lead - 1) + (
      *strides, 1))


def _windows(src, offsets, strides, out_size):
  padded, offsets = _pad_for(src, offsets, strides, out_size)
  return [_window(padded, o, strides, out_size) for o in offsets]


def _weighted_sum(parts, weights):
  total = parts[0] * weights[0]
  for part, weight in zip(parts[1:], weights[1:]):
    total = total + part * weight
  return total


def _phase_taps(kernel_size, stride, low, dilation, phase):
  """(tap, offset) pairs reaching input rows `stride * u + phase`.

  Output row i reads input row stride*i + dilation*a - low, so input row
  t = stride*u + phase gets the gradient of output rows
  u + (phase + low - dilation*a) / stride, for the taps a that divide.
  """
  return [(a, (phase + low - dilation * a) // stride)
          for a in range(kernel_size)
          if (phase + low - dilation * a) % stride == 0]


def _transpose_windows(phase_sum, like, size, kernel_size, strides, pads,
                       dilation):
  """The input-shaped transpose of taking windows, one stride phase at once.

  With stride s, input rows s*u + r (phase r) receive only the taps
  congruent to r, each from output row u + offset: a stride-1 sum of
  windows, `phase_sum(taps, phase_size)` with taps [((a, b), (oi, oj))].
  The s*s phases are then interleaved. Stride 1 is one phase with all
  taps. `like` [n, ., ., c] gives the batch, channels and dtype.
  """
  n, c = like.shape[0], like.shape[-1]
  phase_size = tuple(-(-size[i] // strides[i]) for i in range(2))
  rows = []
  for r in range(strides[0]):
    cols = []
    for q in range(strides[1]):
      taps = [((a, b), (oi, oj))
              for a, oi in _phase_taps(kernel_size[0], strides[0],
                                       pads[0][0], dilation[0], r)
              for b, oj in _phase_taps(kernel_size[1], strides[1],
                                       pads[1][0], dilation[1], q)]
      cols.append(phase_sum(taps, phase_size) if taps else
                  jnp.zeros((n, *phase_size, c), like.dtype))
    rows.append(jnp.stack(cols, axis=3))
  phases = jnp.stack(rows, axis=2)  # [n, u, r, v, q, c]
  full = phases.reshape(n, phase_size[0] * strides[0],
                        phase_size[1] * strides[1], c)
  return full[:, :size[0], :size[1]]


# Depthwise convolution on CPU.


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _shifted_sum_conv(x, kernel, strides, pads, dilation):
  """sum over taps (a, b) of window(x, tap offset) * kernel[a, b, 0]."""
  return _depthwise_forward(x, kernel, strides, pads, dilation)


def _depthwise_forward(x, kernel, strides, pads, dilation):
  kernel_size = kernel.shape[:2]
  out = _output_size(x.shape[1:3], kernel_size, strides, pads, dilation)
  return _weighted_sum(
      _windows(x, _tap_offsets(kernel_size, pads, dilation), strides, out),
      kernel.reshape((-1, kernel.shape[-1])))


def _depthwise_fwd(x, kernel, strides, pads, dilation):
  return _depthwise_forward(x, kernel, strides, pads, dilation), (x, kernel)


def _depthwise_bwd(strides, pads, dilation, residuals, grad):
  x, kernel = residuals
  kernel_size = kernel.shape[:2]

  def phase_sum(taps, phase_size):
    return _weighted_sum(
        _windows(grad, [o for _, o in taps], (1, 1), phase_size),
        [kernel[a, b, 0] for (a, b), _ in taps])

  dx = _transpose_windows(phase_sum, grad, x.shape[1:3], kernel_size,
                          strides, pads, dilation)
  return dx, _depthwise_kernel_grad(x, grad, kernel.shape, strides, pads,
                                    dilation)


_shifted_sum_conv.defvjp(_depthwise_fwd, _depthwise_bwd)


def _depthwise_kernel_grad(x, grad, kernel_shape, strides, pads, dilation):
  """Per tap, the sum over examples and positions of window(x) * grad.

  Reducing each tap's product directly is slower: XLA first copies one
  window of `x` per tap. Instead, per tap, a fused loop sums the products
  over blocks of `_DEPTHWISE_GRAD_BLOCK` examples (a window taking every
  block-th example is a slice), writing partial sums 16x smaller than
  `grad`; one plain reduction over all taps' partial sums finishes.
  """
  n, oh, ow, c = grad.shape
  block = min(n, _DEPTHWISE_GRAD_BLOCK)
  blocks = -(-n // block)
  if blocks * block != n:  # Zero examples add nothing to the gradient.
    extra = ((0, blocks * block - n), (0, 0), (0, 0), (0, 0))
    x, grad = jnp.pad(x, extra), jnp.pad(grad, extra)
  padded, offsets = _pad_for(x, _tap_offsets(kernel_shape[:2], pads,
                                             dilation), strides, (oh, ow))
  per_example = [lax.slice_in_dim(grad, e, None, block) for e in range(block)]
  partial = jnp.stack(
      [_weighted_sum([_window(padded, o, strides, (oh, ow), (e, block))
                      for e in range(block)], per_example) for o in offsets],
      axis=3)  # [blocks, oh, ow, taps, c]
  return partial.reshape(-1, len(offsets), c).sum(0).reshape(kernel_shape)


# Dense convolution on CPU.


def _matmul_conv(x, kernel, strides, pads, precision, dtype):
  """A convolution without overlapping windows, as one matrix product.

  1x1 kernel: (strided) window of `x` times kernel[0, 0]. Kernel = stride,
  no padding: each output position's patch is a block of `x`, so reshaping
  `x` to [n, rows, cols, kh * kw * I] gives the patch matrix. Both
  gradients are matrix products (`_kernel_product`).
  """
  kh, kw, in_channels = kernel.shape[:3]
  out = _output_size(x.shape[1:3], (kh, kw), strides, pads, (1, 1))
  if (kh, kw) == (1, 1):
    patches, = _windows(x, [(-pads[0][0], -pads[1][0])], strides, out)
  else:
    blocks = x[:, :out[0] * kh, :out[1] * kw].reshape(
        x.shape[0], out[0], kh, out[1], kw, in_channels)
    patches = blocks.transpose(0, 1, 3, 2, 4, 5).reshape(
        x.shape[0], *out, kh * kw * in_channels)
  return _kernel_product(patches, kernel.reshape(-1, kernel.shape[-1]),
                        precision, dtype)


def dot_general(lhs, rhs, dimension_numbers, precision=None,
                preferred_element_type=None):
  """`lax.dot_general`; a dense layer's `[..., k] @ [k, o]` routed here
  (give it to Flax as `nn.Dense(dot_general=...)`): on CPU its kernel
  gradient is `_rows_product`, elsewhere it is the native op."""

  def native(lhs, rhs):
    return lax.dot_general(lhs, rhs, dimension_numbers, precision,
                           preferred_element_type=preferred_element_type)

  (lhs_contract, rhs_contract), batch = dimension_numbers
  if (rhs.ndim != 2 or tuple(lhs_contract) != (lhs.ndim - 1,) or
      tuple(rhs_contract) != (0,) or any(batch)):
    return native(lhs, rhs)
  dtype = jax.eval_shape(native, lhs, rhs).dtype  # lax's own rule.
  return by_platform(
      lhs, rhs, cpu=lambda lhs, rhs: _kernel_product(lhs, rhs, precision,
                                                     dtype),
      default=native)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _kernel_product(patches, kernel, precision, dtype):
  """patches [..., k] @ kernel [k, o] -> [..., o] (a 1x1 or patch
  convolution's patches, or a dense layer's inputs); the kernel gradient is
  `_rows_product`."""
  return lax.dot_general(patches, kernel, (((patches.ndim - 1,), (0,)),
                                           ((), ())),
                         precision, preferred_element_type=dtype)


def _kernel_product_fwd(patches, kernel, precision, dtype):
  return _kernel_product(patches, kernel, precision, dtype), (patches, kernel)


def _kernel_product_bwd(precision, dtype, residuals, grad):
  patches, kernel = residuals
  dpatches = lax.dot_general(grad, kernel, (((grad.ndim - 1,), (1,)),
                                            ((), ())),
                             precision, preferred_element_type=dtype)
  return (dpatches.astype(patches.dtype),
          _rows_product(patches, grad, precision).astype(kernel.dtype))


_kernel_product.defvjp(_kernel_product_fwd, _kernel_product_bwd)


def _rows_product(a, b, precision):
  """a^T b over all leading axes: [..., k] x [..., o] -> [k, o].

  As one product of the two operands made 2-D: XLA writes each operand
  once and contracts over its rows. Autodiff's product over the leading
  axes instead had XLA fuse the elementwise ops that made an operand (a
  batch norm's gradient, say) into a transpose that read them a row
  apart, costing more than the product itself on large maps
  (BENCHMARKS.md).
  """
  a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
  return lax.dot_general(a, b, (((0,), (0,)), ((), ())), precision,
                         preferred_element_type=jnp.promote_types(
                             b.dtype, jnp.float32))


# Max pooling.


def max_pool(x: jax.Array, window: Sequence[int], strides: Sequence[int],
             padding: Pads) -> jax.Array:
  """`flax.linen.max_pool` on NHWC `x` with explicit (low, high) pads.

  Padding never wins. The gradient goes to the first maximum of each
  window in row-major order (PyTorch's choice; the native rule may pick
  another of equal values).
  """
  window, strides = tuple(window), tuple(strides)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)

  def native(x):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1),
                             (1, *strides, 1), ((0, 0), *pads, (0, 0)))

  def on_cpu(x):
    return _max_pool_cpu(x, window, strides, pads)

  return by_platform(x, cpu=on_cpu, default=native)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_cpu(x, window, strides, pads):
  return _max_pool_forward(x, window, strides, pads)[0]


def _max_pool_forward(x, window, strides, pads):
  """Pooled `x` and the row-major index of the tap that won (first max)."""
  out = _output_size(x.shape[1:3], window, strides, pads, (1, 1))
  offsets = _tap_offsets(window, pads, (1, 1))
  padded, offsets = _pad_for(x, offsets, strides, out, -jnp.inf)
  best = _window(padded, offsets[0], strides, out)
  index = jnp.zeros(best.shape, jnp.int8 if len(offsets) < 128 else jnp.int32)
  for tap, offset in enumerate(offsets[1:], start=1):
    candidate = _window(padded, offset, strides, out)
    # NaN wins once, as in lax.max; a later equal value does not.
    wins = (candidate > best) | (jnp.isnan(candidate) & ~jnp.isnan(best))
    best = jnp.where(wins, candidate, best)
    index = jnp.where(wins, jnp.asarray(tap, index.dtype), index)
  return best, index


def _max_pool_fwd(x, window, strides, pads):
  best, index = _max_pool_forward(x, window, strides, pads)
  return best, (index, x.shape[1:3])


def _max_pool_bwd(window, strides, pads, residuals, grad):
  index, size = residuals

  def phase_sum(taps, phase_size):
    offsets = [o for _, o in taps]
    padded_grad, grad_offsets = _pad_for(grad, offsets, (1, 1), phase_size)
    padded_index, index_offsets = _pad_for(index, offsets, (1, 1),
                                           phase_size, -1)
    total = None
    for ((a, b), _), go, io in zip(taps, grad_offsets, index_offsets):
      won = _window(padded_index, io, (1, 1), phase_size) == a * window[1] + b
      part = jnp.where(won, _window(padded_grad, go, (1, 1), phase_size), 0)
      total = part if total is None else total + part
    return total

  return (_transpose_windows(phase_sum, grad, size, window, strides, pads,
                             (1, 1)),)


_max_pool_cpu.defvjp(_max_pool_fwd, _max_pool_bwd)
