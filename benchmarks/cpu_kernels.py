"""XLA:CPU's kernels against PyTorch's, one op at a time.

    python benchmarks/cpu_kernels.py
    taskset -c 0 python benchmarks/cpu_kernels.py  # One core, one thread.

What `benchmarks/models.py` cannot separate: the speed of the single
convolutions and matrix products the backbones are made of, in GFLOP/s on
float32, for

- `jax.jit`: XLA's default library choice (YNNPACK for convolutions and
  matrix products on this JAX),
- `compilation.jit`: the options the library compiles with
  (`compilation.CPU_COMPILER_OPTIONS`: XLA's own kernels),
- PyTorch eager (oneDNN; channels-last for convolutions), same threads,

and each op's forward, input gradient and kernel gradient (convolutions),
so that a JAX upgrade can be checked against the options (run it again and
compare the first two columns) and the remaining gap to PyTorch read per
kernel. Shapes: ResNet's 3x3 convolutions and stem at batch 16 and 224 x
224 input, ViT-Ti's dense and attention products at batch 16, and a whole
ViT-Ti attention (`models.attention.self_attention`: products, softmax and
the layout changes around them; PyTorch's `scaled_dot_product_attention`),
forward and forward + backward, rated by its products' FLOPs alone.
"""

from __future__ import annotations

import functools
import os
import statistics
import time

import torch  # Before XLA, as in models.py.

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from inatsounds_jax import compilation
from inatsounds_jax.models import attention

BATCH = 16
# (map size, in channels, out channels, kernel, stride) of ResNet's convs.
CONVS = [(224, 3, 64, 7, 2), (56, 64, 64, 3, 1), (56, 64, 128, 3, 2),
         (28, 128, 128, 3, 1), (14, 256, 256, 3, 1), (7, 512, 512, 3, 1)]
# (batch dims, m, k, n) of ViT-Ti's products: qkv, fc1, and attention's.
PRODUCTS = [((), BATCH * 197, 192, 576), ((), BATCH * 197, 192, 768),
            ((BATCH * 3,), 197, 64, 197), ((BATCH * 3,), 197, 197, 64)]
# (tokens, heads, head size) of ViT-Ti's attention.
ATTENTION = (197, 3, 64)


def gflops(gflop: float, fn, *args) -> float:
  """GFLOP/s of `fn(*args)`: median of 8 blocking calls after 2 warm-ups."""
  times = []
  for call in range(10):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    if call >= 2:
      times.append(time.perf_counter() - start)
  return gflop / statistics.median(times)


def _conv(x, w, stride, pad):
  return lax.conv_general_dilated(x, w, (stride, stride), [(pad, pad)] * 2,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _input_grad(x, w, g, stride, pad):
  return jax.vjp(lambda x: _conv(x, w, stride, pad), x)[1](g)[0]


def _kernel_grad(x, w, g, stride, pad):
  return jax.vjp(lambda w: _conv(x, w, stride, pad), w)[1](g)[0]


def conv_rows():
  rng = np.random.default_rng(0)
  for size, cin, cout, k, stride in CONVS:
    pad = k // 2
    out = (size + 2 * pad - k) // stride + 1
    x = rng.standard_normal((BATCH, size, size, cin), np.float32)
    w = rng.standard_normal((k, k, cin, cout), np.float32)
    g = rng.standard_normal((BATCH, out, out, cout), np.float32)
    gflop = 2 * BATCH * out * out * k * k * cin * cout / 1e9
    tx, tg = (torch.from_numpy(a).permute(0, 3, 1, 2).contiguous(
        memory_format=torch.channels_last) for a in (x, g))
    tw = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous()
    parts = [
        ("forward", _conv, (x, w), torch.nn.functional.conv2d,
         (tx, tw, None, stride, pad)),
        ("input grad", _input_grad, (x, w, g), torch.nn.grad.conv2d_input,
         (tx.shape, tw, tg, stride, pad)),
        ("kernel grad", _kernel_grad, (x, w, g), torch.nn.grad.conv2d_weight,
         (tx, tw.shape, tg, stride, pad)),
    ]
    for part, fn, args, torch_fn, torch_args in parts:
      op = functools.partial(fn, stride=stride, pad=pad)
      on_device = jax.device_put(args)
      rates = [gflops(gflop, jit(op), *on_device)
               for jit in (jax.jit, compilation.jit)]
      with torch.no_grad():
        rates.append(gflops(gflop, torch_fn, *torch_args))
      yield (f"conv {size}x{size}x{cin}->{cout} {k}x{k}/{stride} {part}",
             *rates)


def product_rows():
  rng = np.random.default_rng(0)
  for batch, m, k, n in PRODUCTS:
    a = rng.standard_normal((*batch, m, k), np.float32)
    b = rng.standard_normal((*batch, k, n), np.float32)
    gflop = 2 * int(np.prod(batch, dtype=int)) * m * k * n / 1e9
    on_device = jax.device_put((a, b))
    rates = [gflops(gflop, jit(jnp.matmul), *on_device)
             for jit in (jax.jit, compilation.jit)]
    rates.append(gflops(gflop, torch.matmul, torch.from_numpy(a),
                        torch.from_numpy(b)))
    name = f"product {m}x{k}x{n}" + (f", {batch[0]} of them" if batch
                                      else "")
    yield (name, *rates)


def attention_rows():
  """`self_attention` on a ViT-Ti block's qkv; the backward pass includes
  its forward, as a training step runs it (2 products forward, 4 back)."""
  tokens, heads, size = ATTENTION
  rng = np.random.default_rng(0)
  qkv = rng.standard_normal((BATCH, tokens, 3, heads, size), np.float32)
  grad = rng.standard_normal((BATCH, tokens, heads, size), np.float32)
  product_gflop = 2 * BATCH * heads * tokens * tokens * size / 1e9
  # PyTorch's layout: [3, batch, heads, tokens, size].
  tqkv = torch.from_numpy(qkv).permute(2, 0, 3, 1, 4).contiguous()
  tgrad = torch.from_numpy(grad).permute(0, 2, 1, 3).contiguous()
  sdpa = torch.nn.functional.scaled_dot_product_attention

  def torch_forward():
    with torch.no_grad():
      return sdpa(*tqkv)

  def torch_backward():
    leaf = tqkv.detach().requires_grad_()
    return torch.autograd.grad(sdpa(*leaf), leaf, tgrad)

  def backward(qkv, grad):
    return jax.vjp(attention.self_attention, qkv)[1](grad)[0]

  parts = [("forward", 2, attention.self_attention, (qkv,), torch_forward),
           ("forward + backward", 6, backward, (qkv, grad), torch_backward)]
  for part, products, fn, args, torch_fn in parts:
    gflop = products * product_gflop
    on_device = jax.device_put(args)
    rates = [gflops(gflop, jit(fn), *on_device)
             for jit in (jax.jit, compilation.jit)]
    rates.append(gflops(gflop, torch_fn))
    yield (f"attention {BATCH}x{heads} heads x {tokens} tokens {part}",
           *rates)


def main():
  cores = len(os.sched_getaffinity(0))  # What `taskset` leaves us.
  torch.set_num_threads(cores)
  print(f"# jax {jax.__version__} on {jax.default_backend()}, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), "
        f"{cores} cores; GFLOP/s, float32, median of 8 calls; "
        f"load average {os.getloadavg()[0]:.2f}\n")
  print("| op | jax.jit | compilation.jit | PyTorch "
        "| compilation.jit / PyTorch |")
  print("|---|---:|---:|---:|---:|")
  for name, default, ours, theirs in (*conv_rows(), *product_rows(),
                                         *attention_rows()):
    print(f"| {name} | {default:.0f} | {ours:.0f} | {theirs:.0f} | "
          f"{ours / theirs:.2f} |", flush=True)


if __name__ == "__main__":
  main()
