"""Model throughput: this library's Flax backbones against PyTorch.

    python benchmarks/models.py [--models resnet18,mobilenet_v3_large,vit_ti16
                                 --batch 16 --steps 5]

Per model, on the same batch and machine: inference (eval mode) and one SGD
training step (forward, softmax cross-entropy, backward, update) in examples
per second, for the Flax model under `jax.jit` and the same torchvision/timm
model in PyTorch (eager, and `torch.compile` is not used: it is what most
users run). Prints a table with the JAX / PyTorch ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
import optax

from inatsounds_jax import models

TORCH_FACTORIES = {
    "resnet18": ("torchvision", "resnet18"),
    "resnet50": ("torchvision", "resnet50"),
    "mobilenet_v3_large": ("torchvision", "mobilenet_v3_large"),
    "mobilenet_v3_small": ("torchvision", "mobilenet_v3_small"),
    "vit_b16": ("torchvision", "vit_b_16"),
    "vit_ti16": ("timm", "vit_tiny_patch16_224"),
    "vit_s16": ("timm", "vit_small_patch16_224"),
}


def _rate(fn, batch: int, steps: int) -> float:
  fn()
  fn()  # Compile / warm up.
  start = time.perf_counter()
  for _ in range(steps):
    fn()
  return batch * steps / (time.perf_counter() - start)


def jax_rates(name, batch, steps, num_classes=1000):
  model = models.create(name, num_classes)
  variables = models.init(model, jax.random.PRNGKey(0), (224, 224))
  x = jax.random.normal(jax.random.PRNGKey(1), (batch, 224, 224, 3))
  y = jnp.arange(batch) % num_classes
  tx = optax.sgd(0.01, momentum=0.9, nesterov=True)
  params, extra = variables["params"], {k: v for k, v in variables.items()
                                        if k != "params"}
  opt_state = tx.init(params)

  infer = jax.jit(lambda v, x: model.apply(v, x))

  @jax.jit
  def train_step(params, extra, opt_state, x, y):
    def loss_fn(p):
      logits, updates = model.apply(
          {"params": p, **extra}, x, train=True, mutable=list(extra),
          rngs={"dropout": jax.random.PRNGKey(0)})
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, updates
    (_, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    changes, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, changes), updates, opt_state

  state = [params, extra, opt_state]

  def step():
    state[0], state[1], state[2] = train_step(*state, x, y)
    jax.block_until_ready(state[0])

  return (_rate(lambda: infer(variables, x).block_until_ready(), batch, steps),
          _rate(step, batch, steps))


def torch_rates(name, batch, steps, num_classes=1000):
  import torch  # pylint: disable=import-outside-toplevel
  lib, ctor = TORCH_FACTORIES[name]
  if lib == "torchvision":
    import torchvision  # pylint: disable=import-outside-toplevel
    model = getattr(torchvision.models, ctor)(num_classes=num_classes)
  else:
    import timm  # pylint: disable=import-outside-toplevel
    model = timm.create_model(ctor, num_classes=num_classes)
  x = torch.randn(batch, 3, 224, 224)
  y = torch.arange(batch) % num_classes
  opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9,
                        nesterov=True)

  def infer():
    model.eval()
    with torch.no_grad():
      model(x)

  def step():
    model.train()
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()

  return _rate(infer, batch, steps), _rate(step, batch, steps)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models",
                      default="resnet18,mobilenet_v3_large,vit_ti16")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--steps", type=int, default=5)
  args = parser.parse_args()
  import torch  # pylint: disable=import-outside-toplevel
  print(f"# {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
        f"{os.cpu_count()} cores, jax {jax.__version__} on "
        f"{jax.devices()[0].platform}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); batch {args.batch}, 224x224\n")
  print("| model | JAX infer ex/s | torch infer ex/s | ratio | "
        "JAX train ex/s | torch train ex/s | ratio |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  for name in args.models.split(","):
    ji, jt = jax_rates(name, args.batch, args.steps)
    ti, tt = torch_rates(name, args.batch, args.steps)
    print(f"| {name} | {ji:.1f} | {ti:.1f} | {ji / ti:.2f} | {jt:.1f} | "
          f"{tt:.1f} | {jt / tt:.2f} |")


if __name__ == "__main__":
  main()
