"""The command line reports a user's mistakes in a line, not a traceback."""

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_main(*flags):
  return subprocess.run(
      [sys.executable, "-m", "inatsounds_jax.main", *flags],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_unknown_loss_is_one_line_listing_the_choices(tmp_path):
  result = run_main(f"--config={REPO / 'configs' / 'resnet50.py'}:tiny",
                    f"--workdir={tmp_path}", "--config.loss=ce")
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      "error: unknown loss 'ce'; choose from ['an', 'an_ls', "
      "'assume_negative_bce', 'em', 'epr', 'full_bce', 'll_cp', 'll_ct', "
      "'ll_r', 'role', 'softmax_ce', 'wan']")


def test_unknown_job_is_one_line(tmp_path):
  result = run_main(f"--config={REPO / 'configs' / 'sinr.py'}:tiny",
                    f"--workdir={tmp_path}", "--config.job=range_mdoel")
  assert "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(
      "error: unknown job 'range_mdoel'; choose from ['classifier',")
