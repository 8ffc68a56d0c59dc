"""Model throughput: this library's Flax backbones against PyTorch.

    python benchmarks/models.py [--models resnet18,...  --batch 16
                                 --steps 2 --rounds 5]
    python benchmarks/models.py --profile --models vit_ti16 [--top 15]

Per model, on the same batch and machine: inference (eval mode) and one SGD
training step (forward, softmax cross-entropy, backward, update) in examples
per second, for the Flax model under `compilation.jit` (`jax.jit` with the
CPU compiler options the library's training and prediction use) and the
same torchvision/timm model in PyTorch eager (`torch.compile` is not used:
eager is what most users run). After a warm-up (compilation), JAX and
PyTorch are timed in alternating rounds of `steps` calls each (after one
untimed call per round), so that load from other processes hits both
alike; the table gives each side's median rate and the median of the
per-round ratios (JAX / PyTorch).

Memory: by default the script restarts itself with glibc's malloc told
never to return freed memory to the system (`KEEP_FREED_MEMORY`), for both
frameworks. Both free and re-allocate tens of megabytes per step; with
glibc's defaults part of that goes back to the system and every step pays
page faults on it again: up to half of a small model's step, and how much
depends on what ran before in the process (PyTorch's MobileNet-V3 inference
measured 44 to 86 ex/s that way, 104 to 124 with the setting).
`--system-malloc` keeps glibc's defaults.

`--profile` prints, instead of the table, where the JAX side's time goes:
a `jax.profiler` trace of inference and of a training step, each compiled
op's time summed by layer (blocks folded together, forward and backward
apart) and by JAX primitive; the layer of an op is the Flax module path in
its name (ops outside modules are "(model)"). A fused op counts for the
layer of its root: XLA may fuse several layers into one op (the last
stage of a ResNet into its `fc` at inference, for example). XLA's own
(Eigen) convolutions and matrix products, which `compilation.jit` chooses
on CPU, run on its thread pool outside the traced ops: the trace shows only
their dispatch, and their time is in the gap between the ops' sum and the
wall time per call (to see them as ops, profile with plain `jax.jit`, whose
YNNPACK kernels are traced).

Other processes' load is measured, not guessed: the CPU time the whole
machine spent (/proc/stat) minus this process's own, as a share of all cores
over the timed rounds. Rows where it exceeds 10% are marked contended, and
the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import platform
import re
import statistics
import sys
import tempfile
import time

# glibc tunables, read at process start: no mmap()ed blocks, no trimming.
KEEP_FREED_MEMORY = {"MALLOC_MMAP_MAX_": "0",
                     "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}


def _restart_keeping_freed_memory():
  """Re-executes this script with `KEEP_FREED_MEMORY` in its environment."""
  if any(os.environ.get(k) != v for k, v in KEEP_FREED_MEMORY.items()):
    os.execve(sys.executable, [sys.executable] + sys.argv,
              {**os.environ, **KEEP_FREED_MEMORY})


if __name__ == "__main__" and "--system-malloc" not in sys.argv:
  _restart_keeping_freed_memory()  # Before the imports below allocate.

# torchvision loads Triton's native library, which crashes when it loads after
# XLA's; imported first, both coexist.
import timm  # pylint: disable=g-import-not-at-top
import torch  # pylint: disable=g-import-not-at-top
import torchvision  # pylint: disable=g-import-not-at-top

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import optax  # pylint: disable=g-import-not-at-top

from inatsounds_jax import compilation  # pylint: disable=g-import-not-at-top
from inatsounds_jax import models  # pylint: disable=g-import-not-at-top

TORCH_FACTORIES = {
    "resnet18": lambda c: torchvision.models.resnet18(num_classes=c),
    "resnet50": lambda c: torchvision.models.resnet50(num_classes=c),
    "mobilenet_v3_large": lambda c: torchvision.models.mobilenet_v3_large(
        num_classes=c),
    "mobilenet_v3_small": lambda c: torchvision.models.mobilenet_v3_small(
        num_classes=c),
    "vit_b16": lambda c: torchvision.models.vit_b_16(num_classes=c),
    "vit_ti16": lambda c: timm.create_model("vit_tiny_patch16_224",
                                            num_classes=c),
    "vit_s16": lambda c: timm.create_model("vit_small_patch16_224",
                                           num_classes=c),
}
DEFAULT_MODELS = ("resnet18,resnet50,mobilenet_v3_large,mobilenet_v3_small,"
                  "vit_ti16,vit_b16")
CONTENDED = 0.10  # Share of the machine used by others that marks a row.


class OthersLoad:
  """CPU share used by other processes between `start()` and `share()`."""

  def __init__(self):
    self._tick = os.sysconf("SC_CLK_TCK")
    self._busy = self._own = self._wall = 0.0

  def _machine_busy_s(self) -> float:
    with open("/proc/stat", encoding="ascii") as f:
      fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait.
    return (sum(fields[:8]) - idle) / self._tick  # Guest time is in user.

  def start(self):
    times = os.times()
    self._busy = self._machine_busy_s()
    self._own = times.user + times.system
    self._wall = time.perf_counter()

  def share(self) -> float:
    times = os.times()
    others = (self._machine_busy_s() - self._busy) - (
        times.user + times.system - self._own)
    wall = time.perf_counter() - self._wall
    return max(others, 0.0) / (wall * os.cpu_count())


def jax_steps(name, batch, num_classes=1000):
  """(infer, train_step) callables that run one blocking call each."""
  model = models.create(name, num_classes)
  variables = models.init(model, jax.random.PRNGKey(0), (224, 224))
  x = jax.random.normal(jax.random.PRNGKey(1), (batch, 224, 224, 3))
  y = jnp.arange(batch) % num_classes
  tx = optax.sgd(0.01, momentum=0.9, nesterov=True)
  params, extra = variables["params"], {k: v for k, v in variables.items()
                                        if k != "params"}
  opt_state = tx.init(params)

  infer = compilation.jit(lambda v, x: model.apply(v, x))

  @compilation.jit
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

  def run_infer():
    infer(variables, x).block_until_ready()

  # The compiled program's text, for `--profile` to name its ops.
  run_infer.hlo = lambda: infer.lower(variables, x).compile().as_text()
  step.hlo = lambda: train_step.lower(*state, x, y).compile().as_text()
  return run_infer, step


def torch_steps(name, batch, num_classes=1000):
  """(infer, train_step) callables for the PyTorch twin, eager."""
  model = TORCH_FACTORIES[name](num_classes)
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

  return infer, step


def paired_rates(jax_fn, torch_fn, batch, steps, rounds, load):
  """Median examples/s of each side and median per-round ratio."""
  for fn in (jax_fn, torch_fn):
    fn()
    fn()  # Compile / warm up.
  rates = {"jax": [], "torch": []}
  load.start()
  for _ in range(rounds):
    for side, fn in (("jax", jax_fn), ("torch", torch_fn)):
      # Untimed: the first call after the other framework's round re-touches
      # the memory and caches that one evicted (a training or prediction run
      # never switches); it cost JAX up to 30% of a 2-call round.
      fn()
      start = time.perf_counter()
      for _ in range(steps):
        fn()
      rates[side].append(batch * steps / (time.perf_counter() - start))
  ratio = statistics.median(j / t for j, t in zip(rates["jax"],
                                                   rates["torch"]))
  return (statistics.median(rates["jax"]), statistics.median(rates["torch"]),
          ratio, load.share())


def _layer_and_op(op_name: str) -> tuple[str, str]:
  """("layer (forward|backward)", primitive) of an HLO op's JAX name.

  `jit(f)/jvp(ResNet)/layer1_0_conv1/conv_general_dilated` ->
  ("layer1_*_conv1 (forward)", "conv_general_dilated"): transformation
  wrappers dropped, block indices folded so that a layer kind sums over
  its blocks; ops under `transpose(...)` are the backward pass.
  """
  backward = "transpose(" in op_name
  parts = []
  for part in op_name.split("/")[1:]:
    while (inner := re.fullmatch(r"\w+\((.*)\)", part)) and "," not in (
        inner.group(1)):
      part = inner.group(1)
    parts.append(part)
  layer = next((p for p in parts[1:-1] if re.search(r"_\d|^[a-z]", p)
                and p != "cond" and not re.fullmatch(r"branch_\d+_fun", p)),
               "(model)")
  layer = re.sub(r"(blocks|layer\d+|features)_\d+_", r"\1_*_", layer)
  return (f"{layer} ({'backward' if backward else 'forward'})",
          parts[-1] if parts else op_name)


def profile(fn, calls: int = 3):
  """(ms per call, {layer: ms per call}, {primitive: ms per call}) of
  `fn` (a `jax_steps` callable), from a `jax.profiler` trace: the time of
  each compiled op (XLA's CPU thunks), named by the JAX op it came from."""
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top

  names = {
      name: op_name for name, op_name in re.findall(
          r'%([\w.-]+) = [^\n]*?metadata=\{[^}]*?op_name="([^"]*)"',
          fn.hlo())
      # Control flow encloses the ops it runs, which count themselves.
      if not re.match(r"(while|conditional|call)\b", name)}
  fn()
  with tempfile.TemporaryDirectory() as trace_dir:
    start = time.perf_counter()
    with jax.profiler.trace(trace_dir):
      for _ in range(calls):
        fn()
    wall = (time.perf_counter() - start) / calls
    [path] = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
      space.ParseFromString(f.read())
  layers, ops = collections.Counter(), collections.Counter()
  for plane in space.planes:
    for line in plane.lines:
      for event in line.events:
        op_name = names.get(plane.event_metadata[event.metadata_id].name)
        if op_name:
          layer, op = _layer_and_op(op_name)
          ms = event.duration_ps / 1e9 / calls
          layers[layer] += ms
          ops[op] += ms
  if not layers:
    raise RuntimeError("the trace named none of the compiled program's ops: "
                       "has the profiler's event naming changed?")
  return wall * 1e3, layers, ops


def print_profile(name: str, mode: str, fn, top: int) -> None:
  wall_ms, layers, ops = profile(fn)
  total = sum(layers.values())
  print(f"\n### {name} {mode}: {wall_ms:.1f} ms per call; traced ops sum "
        f"to {total:.1f} ms on all threads (XLA's own convolutions and "
        "products are not traced)\n")
  for title, counter in (("layer", layers), ("JAX primitive", ops)):
    print(f"| {title} | ms | share |\n|---|---:|---:|")
    for key, ms in counter.most_common(top):
      print(f"| {key} | {ms:.1f} | {ms / total:.0%} |")
    print()


def _loadavg() -> str:
  return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default=DEFAULT_MODELS)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--steps", type=int, default=2,
                      help="calls per timed round")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--system-malloc", action="store_true",
                      help="keep glibc's default malloc settings")
  parser.add_argument("--profile", action="store_true",
                      help="instead of the table: where the JAX side's time "
                      "goes, by layer and by JAX primitive")
  parser.add_argument("--top", type=int, default=15,
                      help="rows of each --profile table")
  args = parser.parse_args()
  if args.profile:
    for name in args.models.split(","):
      infer, train = jax_steps(name, args.batch)
      print_profile(name, "inference", infer, args.top)
      print_profile(name, "training step", train, args.top)
    return
  malloc = ("glibc malloc defaults" if args.system_malloc else
            " ".join(f"{k}={v}" for k, v in KEEP_FREED_MEMORY.items()))
  print(f"# {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} of {os.cpu_count()} cores, jax "
        f"{jax.__version__} on "
        f"{jax.devices()[0].platform}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); batch {args.batch}, 224x224; "
        f"medians of {args.rounds} alternating rounds of {args.steps} calls; "
        f"{malloc}")
  print(f"# load average (1, 5, 15 min) at start: {_loadavg()}\n")
  print("| model | JAX infer ex/s | torch infer ex/s | ratio | "
        "JAX train ex/s | torch train ex/s | ratio | others' CPU share |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|")
  load = OthersLoad()
  contended = []
  for name in args.models.split(","):
    (j_infer, j_train), (t_infer, t_train) = (
        jax_steps(name, args.batch), torch_steps(name, args.batch))
    ji, ti, ri, si = paired_rates(j_infer, t_infer, args.batch, args.steps,
                                  args.rounds, load)
    jt, tt, rt, st = paired_rates(j_train, t_train, args.batch, args.steps,
                                  args.rounds, load)
    share = max(si, st)
    mark = " contended" if share > CONTENDED else ""
    if mark:
      contended.append(name)
    print(f"| {name} | {ji:.1f} | {ti:.1f} | {ri:.2f} | {jt:.1f} | "
          f"{tt:.1f} | {rt:.2f} | {share:.0%}{mark} |", flush=True)
  print(f"\n# load average at end: {_loadavg()}")
  if contended:
    print(f"# CONTENDED: other processes used more than {CONTENDED:.0%} of "
          f"the CPU while timing {', '.join(contended)}; those rows are "
          "noisy.")
  else:
    print(f"# not contended: other processes used at most {CONTENDED:.0%} of "
          "the CPU during every row.")


if __name__ == "__main__":
  main()
