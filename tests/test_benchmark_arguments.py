"""Benchmark scripts start: their command lines parse.

The scripts are run by hand, not by the suite; one whose command line is
built from another's (`spml.add_run_arguments`) can fail at start when the
two collide, and would otherwise go unnoticed.
"""

import pathlib
import subprocess
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"

_HELP_OF_EACH = """
import os, runpy, sys
sys.path.insert(0, os.path.dirname(sys.argv[1]))  # Scripts import siblings.
for script in sys.argv[1:]:
  sys.argv = [script, "--help"]
  try:
    runpy.run_path(script, run_name="__main__")
  except SystemExit as e:
    if e.code:
      raise SystemExit(f"{script} --help exited with {e.code}")
"""


@pytest.mark.slow  # One process importing JAX and TensorFlow.
def test_benchmarks_sharing_arguments_parse_their_help():
  scripts = [str(BENCHMARKS / f"{name}.py") for name in (
      "spml", "location", "soundscape_transfer", "mae", "input_scale")]
  done = subprocess.run([sys.executable, "-c", _HELP_OF_EACH, *scripts],
                        capture_output=True, text=True, timeout=300,
                        cwd=BENCHMARKS.parent, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.count("usage:") == len(scripts)
