"""The compile settings of the library's programs (compilation.py)."""

import re
import subprocess
import sys

import jax
from jax import lax
import jax.numpy as jnp
import pytest

from inatsounds_jax import compilation


def _compiled_ops(fn, *shapes, jit=compilation.jit):
  """Compiled HLO text of `fn` on float32 arrays of `shapes`."""
  args = [jnp.ones(s, jnp.float32) for s in shapes]
  return jit(fn).lower(*args).compile().as_text()


def _library_fused(text, opcode):
  """Whether an `opcode` op is inside one of XLA's YNNPACK fusions."""
  bodies = re.findall(r"\n(%\S+) [^\n]*\{\n(.*?)\n\}", text, re.S)
  library = set(re.findall(
      r"%ynn_fusion[\w.-]* = [^\n]*kind=kCustom, calls=(%[\w.-]+)", text))
  return any(name in library and f" {opcode}(" in body
             for name, body in bodies)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU only")
def test_cpu_jit_leaves_products_to_xla_and_reductions_to_the_library():
  """`compilation.jit` hands convolutions and dots to XLA's own
  (multithreaded) kernels, which plain `jax.jit` gives to YNNPACK, and keeps
  YNNPACK's reductions; if a JAX upgrade changes what XLA does by default,
  this says so (and the options need a new look)."""
  def convolve(x, kernel):
    return lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  shapes = ((4, 32, 32, 32), (3, 3, 32, 32))
  assert _library_fused(_compiled_ops(convolve, *shapes, jit=jax.jit),
                        "convolution")
  assert not _library_fused(_compiled_ops(convolve, *shapes), "convolution")
  square = ((256, 256), (256, 256))
  assert _library_fused(_compiled_ops(jnp.dot, *square, jit=jax.jit), "dot")
  assert not _library_fused(_compiled_ops(jnp.dot, *square), "dot")
  assert _library_fused(
      _compiled_ops(lambda x: x.sum((0, 1, 2)), (16, 32, 32, 64)), "reduce")


def test_cpu_jit_adds_options_only_on_cpu(monkeypatch):
  seen = {}
  monkeypatch.setattr(jax, "jit", lambda fun, **kw: seen.update(kw))
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  compilation.jit(jnp.sin, donate_argnums=0)
  assert seen == {"donate_argnums": 0}
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  compilation.jit(jnp.sin,
                  compiler_options={"xla_cpu_enable_fast_math": False})
  assert seen["compiler_options"] == {**compilation.CPU_COMPILER_OPTIONS,
                                      "xla_cpu_enable_fast_math": False}
  compilation.jit(jnp.sin, compiler_options=None)  # jax.jit's own default.
  assert seen["compiler_options"] == compilation.CPU_COMPILER_OPTIONS


def test_importing_it_loads_no_model_code():
  """Code that only compiles (evaluators, prediction) imports no kernels,
  Flax or TensorFlow through it."""
  loaded = set(subprocess.run(
      [sys.executable, "-c", "import sys, inatsounds_jax.compilation; "
       "print(' '.join(sys.modules))"],
      capture_output=True, text=True, check=True).stdout.split())
  assert not {m.split(".")[0] for m in loaded} & {"flax", "tensorflow"}
  assert "inatsounds_jax.models" not in loaded


@pytest.fixture
def jax_cache_settings():
  """Restores JAX's cache settings that `use_persistent_cache` changes (this
  process compiles nothing in between, so no cache is opened)."""
  names = ("jax_enable_compilation_cache", "jax_compilation_cache_dir",
           "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  saved = {name: getattr(jax.config, name) for name in names}
  yield
  for name, value in saved.items():
    jax.config.update(name, value)


def test_the_cache_folder_is_the_flag_else_the_variable_else_the_user_cache(
    monkeypatch, tmp_path, jax_cache_settings):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  monkeypatch.delenv(compilation.CACHE_ENV, raising=False)
  jax.config.update("jax_compilation_cache_dir", None)  # Restored after.
  user = str(tmp_path / "xdg" / "inatsounds_jax" / "jax_cache")
  assert compilation.default_cache_folder() == user
  assert compilation.use_persistent_cache() == user
  assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
  monkeypatch.setenv(compilation.CACHE_ENV, str(tmp_path / "env"))
  assert compilation.use_persistent_cache() == str(tmp_path / "env")
  assert compilation.use_persistent_cache(str(tmp_path / "flag")) == str(
      tmp_path / "flag")
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / "flag")
  assert jax.config.jax_enable_compilation_cache
  monkeypatch.setenv(compilation.CACHE_ENV, "none")
  assert compilation.use_persistent_cache() is None
  assert not jax.config.jax_enable_compilation_cache
  assert compilation.use_persistent_cache("None") is None
