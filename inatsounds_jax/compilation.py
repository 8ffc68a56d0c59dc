"""How the library compiles its model programs: `jit` and its CPU options.

XLA:CPU hands float32 convolutions and matrix products to the YNNPACK
library by default, which runs convolutions on large maps on one thread.
XLA's own (Eigen) convolutions and matrix products use every core, so on
CPU they are faster forward and backward (`BENCHMARKS.md` has the numbers).
`CPU_COMPILER_OPTIONS` keeps YNNPACK for reductions only: without it XLA
splits batch norm's statistics into slow windowed reductions.

`jit` applies them; the library's training step, evaluators, prediction and
curation are jitted with it (pass them as `jax.jit(...,
compiler_options=CPU_COMPILER_OPTIONS)` to get the same from your own code,
e.g. to run an exported model). This module imports nothing but JAX, so
code that only compiles need not import the kernels of `models/conv.py`.
"""

from __future__ import annotations

import jax

# YNNPACK for reductions only: see the module docstring. The value is a
# comma-separated list of `DebugOptions.LibraryFusionType` names.
CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE",
}


def jit(fun, **kwargs):
  """`jax.jit(fun, **kwargs)`, with `CPU_COMPILER_OPTIONS` when JAX's
  default backend is the CPU (other backends do not know them).

  `compiler_options` given by the caller are merged over them.
  """
  if jax.default_backend() == "cpu":
    kwargs["compiler_options"] = {**CPU_COMPILER_OPTIONS,
                                  **(kwargs.get("compiler_options") or {})}
  return jax.jit(fun, **kwargs)
