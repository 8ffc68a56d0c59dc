"""The code passes the linter configured in pyproject.toml (ruff)."""

import pathlib
import shutil
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed")
def test_ruff_finds_nothing():
  result = subprocess.run(["ruff", "check", "--output-format=concise", "."],
                          cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stdout[-3000:]
