"""Commands that start in seconds: prediction and export import only what
they use, and a second run on the same model compiles nothing.

Each command runs in a fresh interpreter (as users start it), wrapped so
that it reports the modules it imported and JAX's compilation-cache events.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from inatsounds_jax import compilation

import model_workdir

# Each test starts whole command processes (end to end).
pytestmark = pytest.mark.slow

# Runs `python -m MODULE ARGS...` and prints, as its last line, the modules
# the command imported and the compilation-cache events JAX recorded.
_WRAPPER = textwrap.dedent("""
    import json, runpy, sys
    import jax.monitoring
    events = []
    jax.monitoring.register_event_listener(
        lambda name, **_: events.append(name))
    sys.argv = sys.argv[1:]
    try:
      runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    except SystemExit as e:
      if e.code:
        raise
    print(json.dumps({"modules": sorted(sys.modules), "events": events}))
""")
# What a command that does not train must not load (seconds of imports).
TRAINING_STACK = ("tensorflow", "tensorflow_datasets", "clu", "keras",
                  "inatsounds_jax.train")


def run_command(module: str, *args: str, env: dict | None = None) -> dict:
  """{"modules", "events"} of `python -m module args` in a fresh process."""
  result = subprocess.run(
      [sys.executable, "-c", _WRAPPER, module, *args], capture_output=True,
      text=True, timeout=300, check=False,
      env=dict(os.environ, **(env or {})))
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.splitlines()[-1])


def training_stack_in(modules: list[str]) -> list[str]:
  return sorted(m for m in modules
                if m in TRAINING_STACK or m.split(".")[0] in TRAINING_STACK)


def cache_events(report: dict, kind: str) -> int:
  return report["events"].count(f"/jax/compilation_cache/{kind}")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return model_workdir.make_workdir(str(tmp_path_factory.mktemp("model")))


@pytest.fixture(scope="module")
def two_predictions(workdir, tmp_path_factory):
  """The same prediction twice, each in a fresh process, one cache folder
  (given by flag, then by environment variable); and the user cache
  folder the runs were pointed at."""
  folder = tmp_path_factory.mktemp("runs")
  cache, user_cache = str(folder / "cache"), str(folder / "user_cache")
  args = (f"--model={workdir}", f"--input={model_workdir.bird_wav()}")
  env = {"XDG_CACHE_HOME": user_cache, compilation.CACHE_ENV: ""}
  first = run_command("inatsounds_jax.predict", *args,
                      f"--output={folder / 'first'}",
                      f"--compilation_cache={cache}", env=env)
  files_after_first = sorted(os.listdir(cache))
  second = run_command("inatsounds_jax.predict", *args,
                       f"--output={folder / 'second'}",
                       env=dict(env, **{compilation.CACHE_ENV: cache}))
  return first, second, files_after_first, sorted(os.listdir(cache)), (
      user_cache)


def test_prediction_imports_neither_tensorflow_nor_the_training_job(
    two_predictions):
  first, second, *_ = two_predictions
  assert "inatsounds_jax.inference" in first["modules"]
  assert not training_stack_in(first["modules"])
  assert not training_stack_in(second["modules"])


def test_a_second_run_on_the_same_model_compiles_nothing(two_predictions):
  first, second, files_first, files_second, user_cache = two_predictions
  compiled = cache_events(first, "cache_misses")
  assert compiled and not cache_events(first, "cache_hits")
  assert len(files_first) >= compiled  # Every program was written.
  assert cache_events(second, "cache_misses") == 0
  assert cache_events(second, "cache_hits") == compiled
  assert files_second == files_first
  assert not os.path.exists(user_cache)  # The folder given was used.


def test_export_without_tflite_imports_no_tensorflow(workdir, tmp_path):
  report = run_command("inatsounds_jax.export", f"--workdir={workdir}",
                       f"--out={tmp_path / 'bundle'}",
                       "--compilation_cache=none",
                       env={"XDG_CACHE_HOME": str(tmp_path / "user_cache")})
  assert "inatsounds_jax.trained" in report["modules"]
  assert not training_stack_in(report["modules"])
  assert not cache_events(report, "compile_requests_use_cache")
  assert not os.path.exists(tmp_path / "user_cache")
