"""The command line reports a user's mistakes in a line, not a traceback."""

import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from inatsounds_jax import workdir_lock

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
      "'assume_negative_bce', 'balanced_softmax', 'em', 'epr', 'full_bce', "
      "'ll_cp', 'll_ct', 'll_r', 'logit_adjusted_ce', 'role', 'softmax_ce', "
      "'wan']")


def test_unknown_job_is_one_line(tmp_path):
  result = run_main(f"--config={REPO / 'configs' / 'sinr.py'}:tiny",
                    f"--workdir={tmp_path}", "--config.job=range_mdoel")
  assert "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(
      "error: unknown job 'range_mdoel'; choose from ['classifier',")


def _error_line(result):
  """The one line that ends a refused run; nothing like a traceback."""
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: "), result.stderr[-3000:]
  return last


def _tree(folder):
  """{relative path: bytes} of every file under `folder`."""
  return {p.relative_to(folder): p.read_bytes()
          for p in sorted(pathlib.Path(folder).rglob("*")) if p.is_file()}


QUICKSTART = f"--config={REPO / 'configs' / 'quickstart.py'}"


@pytest.mark.parametrize("override, message", [
    ("--config.num_epochs_typo=3",
     "error: --config.num_epochs_typo: the config has no field "
     "'num_epochs_typo'; did you mean --config.num_epochs?"),
    ("--config.model_options.dropoutt=0.1",
     "error: --config.model_options.dropoutt: the config has no field "
     "'dropoutt'; did you mean --config.model_options.dropout?"),
    ("--config.xyz=1",
     f"error: --config.xyz: the config has no field 'xyz'; see "
     f"{REPO / 'configs' / 'quickstart.py'} and "
     "inatsounds_jax/config_defaults.py for its fields"),
], ids=["did_you_mean", "nested", "no_such_field"])
def test_a_config_flag_naming_no_field_is_one_line(tmp_path, override,
                                                   message):
  result = run_main(QUICKSTART, f"--workdir={tmp_path / 'run'}", override)
  assert result.stderr.strip() == message  # That line only.
  assert result.returncode == 1
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("workdir, flags, error", [
    ("run", ["--config.num_epochs_typo=3"],
     "error: --config.num_epochs_typo: "),
    ("notes.txt/run", [], "error: cannot create "),
], ids=["at_flag_parsing", "in_the_run"])
def test_verbosity_1_prints_the_traceback_before_the_error_line(
    tmp_path, workdir, flags, error):
  (tmp_path / "notes.txt").write_text("mine")
  result = run_main(QUICKSTART, f"--workdir={tmp_path / workdir}", *flags,
                    "--verbosity=1")
  assert result.returncode == 1
  assert "Traceback" in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(error)


def test_a_workdir_that_cannot_be_made_is_one_line_naming_it(tmp_path):
  (tmp_path / "notes.txt").write_text("mine")
  workdir = tmp_path / "notes.txt" / "run"
  line = _error_line(run_main(QUICKSTART, f"--workdir={workdir}"))
  assert line == (f"error: cannot create {workdir} (Not a directory); give "
                  "a --workdir in a folder you can write")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_workdir_is_one_line_naming_it(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir(mode=0o555)
  line = _error_line(run_main(QUICKSTART, f"--workdir={workdir}"))
  assert line.startswith(f"error: cannot write in {workdir} (")


@pytest.mark.slow  # A subprocess start (~6 s): the default suite's budget.
def test_a_file_that_cannot_be_read_is_one_line_naming_it(tmp_path):
  missing = tmp_path / "observations.csv"
  line = _error_line(run_main(
      f"--config={REPO / 'configs' / 'sinr.py'}:tiny",
      f"--workdir={tmp_path / 'run'}",
      f"--config.observations_csv={missing}"))
  assert line == f"error: {missing}: No such file or directory"


def test_a_second_run_into_a_workdir_in_use_is_refused_and_writes_nothing(
    tmp_path):
  workdir = tmp_path / "run"
  with workdir_lock.hold(workdir, "training", "--workdir"):
    (workdir / "config.json").write_text("{}")
    before = _tree(workdir)
    line = _error_line(run_main(QUICKSTART, f"--workdir={workdir}"))
    assert _tree(workdir) == before
  assert line.startswith(f"error: {workdir} is in use by another run "
                         f"(training, pid {os.getpid()} on ")
  assert line.endswith("wait for it to end or stop it, or give another "
                       "--workdir")


def test_ctrl_c_says_whether_the_same_command_resumes(tmp_path):
  observations = tmp_path / "observations.csv"
  observations.write_text("latitude,longitude,species\n"
                          + "10,20,a\n-30,40,b\n" * 20)
  proc = subprocess.Popen(
      [sys.executable, "-m", "inatsounds_jax.main",
       f"--config={REPO / 'configs' / 'sinr.py'}:tiny",
       f"--workdir={tmp_path / 'run'}",
       f"--config.observations_csv={observations}",
       "--config.epochs=1000000"],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env=dict(os.environ, PYTHONPATH=str(REPO)))
  for line in proc.stderr:  # Logged once the job has started.
    if "] Config:" in line:
      break
  proc.send_signal(signal.SIGINT)
  stderr = proc.communicate(timeout=120)[1]
  assert proc.returncode == 130, stderr[-3000:]
  assert "Traceback" not in stderr
  assert stderr.strip().splitlines()[-1] == (
      "training interrupted (Ctrl-C) before its first checkpoint; run the "
      "same command again to start it over")


@pytest.mark.slow  # A subprocess start (~6 s): the default suite's budget.
def test_a_truncated_annotation_json_is_one_line_naming_it(small_corpus,
                                                           tmp_path):
  manual_dir = tmp_path / "release"
  shutil.copytree(small_corpus, manual_dir,
                  ignore=shutil.ignore_patterns("*.tar.gz"))
  annotations = manual_dir / "train.json"
  annotations.write_bytes(annotations.read_bytes()[:1000])
  line = _error_line(run_main(
      f"--config={REPO / 'configs' / 'sinr.py'}:tiny",
      f"--workdir={tmp_path / 'run'}", "--config.dataset=full",
      "--config.dataset_options={}", f"--config.manual_dir={manual_dir}",
      f"--config.data_dir={tmp_path / 'tfds'}"))
  assert re.fullmatch(
      rf"error: {re.escape(str(annotations))}: not valid JSON \(truncated\?\)"
      r": .* at line 1 column \d+; download or extract it again", line)


@pytest.mark.slow
def test_ctrl_c_names_the_last_checkpoint_and_the_same_command_resumes(
    data_dir, tmp_path):
  workdir = tmp_path / "run"
  args = [sys.executable, "-m", "inatsounds_jax.main",
          f"--config={REPO / 'configs' / 'resnet50.py'}:tiny",
          f"--workdir={workdir}", f"--config.data_dir={data_dir}",
          "--config.model=placeholder", "--config.image.size=(32, 64)",
          "--config.image.channels=1", "--config.num_epochs=10.0",
          "--config.evals.validation.every_epochs=10.0",
          "--config.checkpoint_every_steps=1", "--config.log_every_steps=1",
          f"--compilation_cache={tmp_path / 'cache'}"]
  env = dict(os.environ, PYTHONPATH=str(REPO))
  log = tmp_path / "stderr.txt"
  with open(log, "w") as stderr_file:
    proc = subprocess.Popen(args, cwd=REPO, env=env, stderr=stderr_file,
                            stdout=subprocess.DEVNULL)
    saved = workdir / "checkpoints"
    deadline = time.time() + 300
    while not (saved.exists() and any(p.name.isdigit()
                                      for p in saved.iterdir())):
      assert proc.poll() is None and time.time() < deadline
      time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=300)
  stderr = log.read_text()
  assert proc.returncode == 130, stderr[-3000:]
  # Training keeps its compiled programs in the folder given, for the
  # resumed run.
  assert os.listdir(tmp_path / "cache")
  assert "Traceback" not in stderr
  last = stderr.strip().splitlines()[-1]
  match = re.fullmatch(
      r"training interrupted \(Ctrl-C\); the last saved checkpoint \(step "
      rf"(\d+)\) is in {re.escape(str(workdir / 'checkpoints'))}: run the "
      "same command again to resume from it", last)
  assert match, last
  resumed = subprocess.run(args, cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"Resumed from step {match.group(1)}" in resumed.stderr
