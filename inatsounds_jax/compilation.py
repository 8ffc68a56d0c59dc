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

`use_persistent_cache` turns on JAX's persistent compilation cache, so a
command run again on the same model (predict, evaluate, export) loads its
compiled programs from disk instead of compiling them again. The commands
call it at start with their --compilation_cache flag (`cli.start_command`).
One folder serves every library and JAX version: JAX keys each entry by
the program itself (so a library version that builds another program
makes another key), the jaxlib version, the backend and its version, the
XLA flags and the compile options (`CPU_COMPILER_OPTIONS` included), and
XLA:CPU refuses (and compiles again) an executable built for CPU features
the host lacks, so a folder shared between machines is safe too.
"""

from __future__ import annotations

import os

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


# Where the commands cache compiled programs unless told otherwise.
CACHE_ENV = "INATSOUNDS_JAX_COMPILATION_CACHE"
NO_CACHE = "none"


def default_cache_folder() -> str:
  """The user cache folder: $XDG_CACHE_HOME/inatsounds_jax/jax_cache
  (XDG_CACHE_HOME defaults to ~/.cache)."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
      os.path.expanduser("~"), ".cache")
  return os.path.join(base, "inatsounds_jax", "jax_cache")


def use_persistent_cache(folder: str | None = None) -> str | None:
  """Caches every program this process compiles from now on in `folder`.

  Call it before the process compiles anything: JAX opens its cache once.

  Args:
    folder: a folder (created when first written), "none" (any case) for
      no cache, or None: $INATSOUNDS_JAX_COMPILATION_CACHE (a folder or
      "none"), else a folder already given to JAX
      (JAX_COMPILATION_CACHE_DIR), else `default_cache_folder()`.

  Returns:
    The folder in use, or None when caching is off.

  Every program is cached, however small and however fast it compiled
  (JAX's defaults skip those compiled in under a second, which are most of
  a small model's).
  """
  if folder is None:
    folder = (os.environ.get(CACHE_ENV) or jax.config.jax_compilation_cache_dir
              or default_cache_folder())
  if folder.lower() == NO_CACHE:
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", folder)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  # -1: no minimum size (0 would let JAX pick one for the file system).
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  return folder
