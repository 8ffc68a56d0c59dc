"""The training loop end to end on a tiny synthetic set (CPU, 8 fake devices).

These runs take tens of seconds each, so they are marked slow.
"""

import importlib.util
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from inatsounds_jax import config_defaults
from inatsounds_jax import losses
from inatsounds_jax import jobs
from inatsounds_jax import scored_rows
from inatsounds_jax import train
from inatsounds_jax.models import convert
from tests import l48_fake

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.stem for p in (REPO / "configs").glob("*.py"))
pytestmark = pytest.mark.slow
# The tests sharing `straight_run` run in one test process (`pytest --dist
# loadgroup`), so it is trained once.
ONE_PROCESS = pytest.mark.xdist_group("straight_run")


def load_config(name, *args):
  spec = importlib.util.spec_from_file_location(
      name, REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


def tiny_config(data_dir, **overrides):
  """The loop's test run: the placeholder backbone (it has BatchNorm
  statistics, like the CNNs); the real backbones train in
  `test_every_shipped_config_runs_a_step` and the torchvision-weights test."""
  c = config_defaults.tiny(config_defaults.classifier())
  c.model = "placeholder"
  c.image.size = (32, 64)
  c.image.channels = 1
  c.optimizer = "adam"
  c.learning_rate = 1e-3
  c.data_dir = data_dir
  c.update(overrides)
  return c


def final_params(workdir, collection="params"):
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  restored = manager.restore(manager.latest_step())
  return manager.latest_step(), restored[collection]


def checkpoint_started(directory, step):
  return directory.exists() and any(
      p.name.split(".")[0] == str(step) for p in directory.iterdir())


def assert_trees_close(a, b, **tolerances):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **tolerances),
               a, b)


def test_tiny_run_trains_evaluates_and_writes_results(data_dir, tmp_path,
                                                      caplog):
  c = tiny_config(data_dir, geo_prior="synthetic_truth", num_epochs=2.0)
  with jax.log_compiles(), caplog.at_level(logging.WARNING):
    results = train.train_and_evaluate(c, str(tmp_path))
  # Validation after each epoch, then the test split: windows of one shape,
  # so one program, traced and compiled once for the whole run.
  assert len([r for r in caplog.records if r.getMessage().startswith(
      "Compiling jit(apply_logits)")]) == 1
  with open(tmp_path / "eval_results.json") as f:
    saved = json.load(f)
  assert saved["step"] >= 1
  for split in ("validation", "test"):
    for pooling in ("mean", "max"):
      for view in ("no_prior", "prior"):
        m = saved["evals"][split][pooling][view]
        assert 0.0 <= m["top1"] <= m["top5"] <= 1.0
        assert m["num_files"] > 0
        for grouping in ("supercategory", "training_recordings"):
          assert sum(g["num_classes"] for g in
                     m["groups"][grouping].values()) == m["num_classes"]
    assert results[split].metrics["mean/no_prior/top1"] == (
        saved["evals"][split]["mean"]["no_prior"]["top1"])
    for plot in ("long_tail", "confusions"):
      assert (tmp_path / f"{split}_{plot}.png").stat().st_size > 1000
  assert list((tmp_path).glob("events.out.tfevents.*"))
  # --mode=eval on the same workdir reproduces the final numbers.
  again = train.evaluate_checkpoint(c, str(tmp_path))
  assert ({k: o.summary for k, o in again.items()} ==
          {k: o.summary for k, o in results.items()})


def parameters_only(c):
  """`c` for a test that compares trained parameters only: one evaluation
  at the end (the loop needs the best metric's), a checkpoint at the end."""
  del c.evals["test"]
  c.evals.validation.every_epochs = c.num_epochs
  c.checkpoint_every_steps = 100_000
  return c


def _one_and_eight_devices(data_dir, tmp_path, collection="params",
                           **overrides):
  # SGD: Adam's m / sqrt(v) would magnify float noise in near-zero gradients.
  # The unquantised frontend: float noise between partitionings can flip the
  # rounding of a pixel in the paper's 8-bit image, a real input change.
  c = parameters_only(tiny_config(data_dir, optimizer="sgd",
                                  learning_rate=0.01,
                                  frontend_preset="inatsounds_float",
                                  **overrides))
  train.train_and_evaluate(c, str(tmp_path / "one"), devices=jax.devices()[:1])
  train.train_and_evaluate(c, str(tmp_path / "eight"), devices=jax.devices())
  step_one, one = final_params(str(tmp_path / "one"), collection)
  step_eight, eight = final_params(str(tmp_path / "eight"), collection)
  assert step_one == step_eight
  return step_one, one, eight


def test_one_device_and_eight_devices_agree_on_batch_norm_statistics(
    data_dir, tmp_path):
  # Batch statistics over the global batch, all-reduced across devices: the
  # running statistics after one step average the first forward pass, a
  # well-conditioned function of the data, so they must agree closely.
  # Per-device statistics would differ from the global ones by the spread of
  # the per-device means. (ResNet-18's sharded BatchNorm gradients are
  # checked against float64 in tests/test_conv.py.)
  _, one, eight = _one_and_eight_devices(data_dir, tmp_path, num_epochs=0.5,
                                         collection="batch_stats")
  assert_trees_close(one, eight, rtol=1e-5, atol=1e-6)


def test_one_device_and_eight_devices_agree_over_an_epoch(data_dir, tmp_path):
  # A model without BatchNorm stays well conditioned over many steps.
  steps, one, eight = _one_and_eight_devices(
      data_dir, tmp_path, num_epochs=2.0, model="vit_mu16")
  assert steps >= 4
  assert_trees_close(one, eight, rtol=2e-4, atol=2e-5)


def test_parameter_sharding_matches_replicated(data_dir, tmp_path):
  c = parameters_only(tiny_config(data_dir, model="vit_mu16", num_epochs=1.0,
                                  optimizer="sgd", learning_rate=0.01))
  train.train_and_evaluate(c, str(tmp_path / "replicated"))
  c.shard_params = True
  train.train_and_evaluate(c, str(tmp_path / "sharded"))
  assert_trees_close(final_params(str(tmp_path / "replicated"))[1],
                     final_params(str(tmp_path / "sharded"))[1],
                     rtol=2e-4, atol=2e-5)


RESUME_OVERRIDES = dict(num_epochs=4.0, checkpoint_every_steps=1)


@pytest.fixture(scope="module")
def straight_run(data_dir, tmp_path_factory):
  """(steps, final parameters) of the uninterrupted resume-test run."""
  workdir = str(tmp_path_factory.mktemp("straight"))
  train.train_and_evaluate(tiny_config(data_dir, **RESUME_OVERRIDES), workdir)
  return final_params(workdir)


def command_line_run(workdir, data_dir, *extra):
  """The resume-test config through `python -m inatsounds_jax.main`."""
  args = [sys.executable, "-m", "inatsounds_jax.main",
          f"--config={REPO / 'configs' / 'resnet50.py'}:tiny",
          f"--workdir={workdir}", f"--config.data_dir={data_dir}",
          "--config.model=placeholder", "--config.image.size=(32, 64)",
          "--config.image.channels=1", "--config.optimizer=adam",
          "--config.learning_rate=0.001", "--config.num_epochs=4.0",
          *extra]
  return args, dict(os.environ, PYTHONPATH=str(REPO))


@ONE_PROCESS
def test_killed_run_resumes_to_the_same_parameters(data_dir, straight_run,
                                                   tmp_path):
  total, straight = straight_run
  assert total >= 6
  killed = tmp_path / "killed"
  args, env = command_line_run(killed, data_dir,
                               "--config.checkpoint_every_steps=1")
  proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  # SIGKILL once step 3 is being written (or is done).
  deadline = time.time() + 300
  while not checkpoint_started(killed / "checkpoints", 3):
    assert proc.poll() is None, "the run ended before it could be killed"
    assert time.time() < deadline, "no checkpoint appeared"
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  # A half-written step must never be picked up on resume.
  (killed / "checkpoints" / f"{total + 5}.orbax-checkpoint-tmp-0").mkdir()
  resumed = subprocess.run(args, env=env, cwd=REPO, capture_output=True,
                           text=True)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Resumed from step" in resumed.stderr
  step, params = final_params(str(killed))
  assert step == total
  assert_trees_close(straight, params, rtol=1e-5, atol=1e-6)


@ONE_PROCESS
def test_sigterm_saves_the_current_step_and_resumes_exactly(
    data_dir, straight_run, tmp_path):
  total, straight = straight_run
  workdir = tmp_path / "preempted"
  # No periodic checkpoint before the end: only SIGTERM's save can exist.
  args, env = command_line_run(workdir, data_dir,
                               "--config.checkpoint_every_steps=1000",
                               "--config.log_every_steps=1")
  proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  logged = 0
  for line in proc.stderr:  # Each step logs its train/ scalars.
    logged += "train/loss" in line
    if logged == 2:
      proc.send_signal(signal.SIGTERM)
      break
  rest = proc.communicate(timeout=300)[1]
  assert proc.returncode == 143, rest[-3000:]
  stopped_at = int(rest.split("stopped by SIGTERM at step ")[1].split(";")[0])
  assert 2 <= stopped_at < total
  assert ocp.CheckpointManager(workdir / "checkpoints").all_steps() == [
      stopped_at]
  resumed = subprocess.run(args, env=env, cwd=REPO, capture_output=True,
                           text=True)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"Resumed from step {stopped_at}" in resumed.stderr
  step, params = final_params(str(workdir))
  assert step == total
  assert_trees_close(straight, params, rtol=1e-5, atol=1e-6)


def test_run_starts_from_a_torchvision_checkpoint_resumes_and_evaluates(
    data_dir, tmp_path):
  import torchvision  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  weights = tmp_path / "resnet18.pth"
  torch.manual_seed(0)
  torch.save(torchvision.models.resnet18().state_dict(), weights)
  # Learning rate 0: the trained parameters are the imported ones. One
  # evaluation (of the validation split, at the end) is enough to compare
  # runs.
  c = parameters_only(tiny_config(data_dir, model="resnet18",
                                  init_checkpoint=str(weights),
                                  learning_rate=0.0, num_epochs=1.0))
  workdir = str(tmp_path / "run")
  first = train.train_and_evaluate(c, workdir)
  _, params = final_params(workdir)
  imported = convert.from_torch("resnet18", str(weights), num_classes=6,
                                in_channels=1, image_size=(32, 64))["params"]
  assert_trees_close(
      {k: v for k, v in imported.items() if k != "fc"},
      {k: v for k, v in params["net"].items() if k != "fc"},
      rtol=0, atol=0)
  # Neither resuming nor evaluating reads the weights file again.
  weights.unlink()
  again = train.train_and_evaluate(c, workdir)
  evaluated = train.evaluate_checkpoint(c, workdir)
  assert ({k: o.summary for k, o in again.items()} ==
          {k: o.summary for k, o in first.items()} ==
          {k: o.summary for k, o in evaluated.items()})


def _nan_from_second_step(logits, targets, batch, state):
  # The state counts finite steps: a stateful loss, as the loop allows.
  value, _ = losses.LOSSES.get("softmax_ce")(logits, targets, batch, ())
  return jax.numpy.where(state >= 1, jax.numpy.nan, value), state + 1


def test_non_finite_loss_stops_with_a_clear_message(data_dir, tmp_path,
                                                    monkeypatch):
  monkeypatch.setitem(losses.LOSSES._entries, "nan_from_second_step",
                      losses.Loss(_nan_from_second_step, multilabel=False,
                                  init=lambda num_classes: jax.numpy.zeros(())))
  c = tiny_config(data_dir, loss="nan_from_second_step", num_epochs=2.0,
                  checkpoint_every_steps=1)
  with pytest.raises(train.NonFiniteUpdateError,
                     match="at step 2 the loss became nan.*random "
                           "initialisation"):
    train.train_and_evaluate(c, str(tmp_path))
  step, params = final_params(str(tmp_path))
  assert step == 1
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


@pytest.mark.parametrize("name", CONFIGS)
def test_every_shipped_config_runs_a_step(name, data_dir, tmp_path):
  if name == "quickstart":
    c = load_config(name)
    c.dataset_options = {"num_species": 6, "num_recordings": 36}
  else:
    c = load_config(name, "tiny")
  c.data_dir = data_dir
  if name == "l48":  # Its data: a fake in the L48 authors' layout.
    c.manual_dir = str(tmp_path / "l48")
    l48_fake.write(c.manual_dir)
    c.data_dir = str(tmp_path / "tfds")
  job = jobs.load_job(c.get("job", "classifier"))
  if job is train:
    c.num_epochs = 0.5  # One step.
    c.evals.validation.every_epochs = 0.5
    # An epoch of every clip is many steps; test_mae_train trains on them.
    c.train_epoch_unit = "recording"
  results = job.train_and_evaluate(c, str(tmp_path))
  assert job.format_results(results)


def test_quickstart_trains_its_own_range_prior_with_the_truth_as_ceiling(
    data_dir, tmp_path):
  def config():
    c = load_config("quickstart")
    c.update(data_dir=data_dir, dataset_options=dict(
        config_defaults.TINY_DATASET), num_epochs=1.0, batch_size=8,
             eval_batch_size=16)
    # The prior is the point here; the quickstart's own backbone trains in
    # test_every_shipped_config_runs_a_step.
    c.model, c.model_options = "placeholder", {}
    c.evals.validation.every_epochs = 1.0
    c.range_model.epochs = 5
    return c

  # --mode=eval on a workdir without checkpoints is refused before any
  # work: no range model is trained into it.
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    train.evaluate_checkpoint(config(), str(tmp_path / "empty"))
  assert not (tmp_path / "empty").exists()
  train.train_and_evaluate(config(), str(tmp_path))
  range_dir = tmp_path / "range_model"
  range_results = json.loads((range_dir / "range_results.json").read_text())
  assert range_results["num_species"] == 6
  assert "quality" in range_results  # Against the true ranges.
  recorded = json.loads((tmp_path / "config.json").read_text())
  assert recorded["geo_prior"] == str(range_dir)
  saved = json.loads((tmp_path / "eval_results.json").read_text())
  for split in ("validation", "test"):
    assert set(saved["evals"][split]["mean"]) == {"no_prior", "prior",
                                                 "ceiling"}
  # --mode=eval uses the range model the run trained; it trains no other.
  written = (range_dir / "range_results.json").stat().st_mtime_ns
  keep_rows = config()
  keep_rows.evals.validation.save_rows = True  # The config has the field.
  again = train.evaluate_checkpoint(keep_rows, str(tmp_path))
  assert (range_dir / "range_results.json").stat().st_mtime_ns == written
  assert again["test"].summary == saved["evals"]["test"]
  # A finished run's rows, for `inatsounds_jax.compare`.
  assert set(scored_rows.read_rows(str(
      tmp_path / "validation_rows.npz"))) == {"mean/no_prior", "max/no_prior"}
  assert not (tmp_path / "test_rows.npz").exists()


def test_init_checkpoint_that_is_not_weights_is_named_in_one_line(
    data_dir, tmp_path):
  weights = tmp_path / "resnet18.pth"
  weights.write_text("<html>404 Not Found</html>\n")
  args, env = command_line_run(tmp_path / "run", data_dir,
                               "--config.model=resnet18",
                               f"--config.init_checkpoint={weights}")
  result = subprocess.run(args, env=env, cwd=REPO, capture_output=True,
                          text=True)
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: init_checkpoint: {weights}: not a PyTorch "
                         "checkpoint"), last
