"""Training across processes: 2 processes x 4 CPU devices on a localhost
coordinator (`jax.distributed`, gloo collectives) against 1 process x 8.

Each process is `python -m inatsounds_jax.main --config.distributed=True`
(through `multihost_worker.py`, which records what the process reads and
writes). The single-process reference reads the same global batches: each
training batch is process 0's share followed by process 1's, as the mesh
lays them out.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import tensorflow as tf

from inatsounds_jax import config_defaults
from inatsounds_jax import data
from inatsounds_jax import data_sources
from inatsounds_jax import train
from inatsounds_jax import trained as trained_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# A two-block ViT (no BatchNorm: well conditioned across partitionings), plain
# SGD and the unquantised frontend, as in test_train's device-count tests.
OVERRIDES = {
    "model": "vit_mu16", "image.size": (32, 64), "image.channels": 1,
    "optimizer": "sgd", "learning_rate": 0.01,
    "frontend_preset": "inatsounds_float", "num_epochs": 2.0,
    "checkpoint_every_steps": 2, "evals.validation.every_epochs": 2.0,
}


def config(data_dir):
  c = config_defaults.tiny(config_defaults.classifier())
  c.data_dir = data_dir
  for field, value in OVERRIDES.items():
    *parents, leaf = field.split(".")
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def flags(data_dir):
  return [f"--config={REPO / 'configs' / 'resnet50.py'}:tiny",
          f"--config.data_dir={data_dir}"] + [
              f"--config.{k}={v}" for k, v in OVERRIDES.items()]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def launch(workdir, data_dir, record_dir, *extra):
  """Starts the two processes; returns them (stderr to files in workdir)."""
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
             JAX_NUM_CPU_DEVICES="4",
             # Not 8 fake devices; the conftest's compile settings kept.
             XLA_FLAGS="--xla_backend_optimization_level=0")
  port = free_port()
  os.makedirs(record_dir, exist_ok=True)
  procs = []
  for i in range(2):
    log = open(os.path.join(record_dir, f"process{i}.log"), "w")
    procs.append(subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "multihost_worker.py"),
         str(record_dir), f"--workdir={workdir}", *flags(data_dir),
         "--config.distributed=True", f"--coordinator_address=localhost:{port}",
         "--num_processes=2", f"--process_id={i}", *extra],
        env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
  return procs


def log_of(record_dir, i):
  return (pathlib.Path(record_dir) / f"process{i}.log").read_text()


def two_shares(original):
  """`train_dataset` whose batches are 2 processes' shares, concatenated."""
  def train_dataset(*args, **kwargs):
    shares = [original(*args, process_index=i, process_count=2, **kwargs)
              for i in range(2)]
    return tf.data.Dataset.zip(tuple(shares)).map(
        lambda a, b: {k: tf.concat([a[k], b[k]], 0) for k in a})
  return train_dataset


def final_params(workdir):
  return trained_lib.load_workdir(workdir)


@pytest.fixture(scope="module")
def data_dir(data_dir):  # conftest's shared dir, prepared before launching.
  data.prepare_from_config(config(data_dir))
  return data_dir


@pytest.fixture(scope="module")
def single_process(data_dir, tmp_path_factory):
  """(workdir, results) of the 1 process x 8 devices reference run."""
  workdir = str(tmp_path_factory.mktemp("single"))
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(data_sources, "train_dataset",
               two_shares(data_sources.train_dataset))
    results = train.train_and_evaluate(config(data_dir), workdir)
  return workdir, results


def assert_same_params(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(
      x, y, rtol=2e-4, atol=2e-5), a, b)


def test_two_processes_train_and_evaluate_like_one(data_dir, single_process,
                                                   tmp_path):
  workdir, records = tmp_path / "multi", tmp_path / "records"
  procs = launch(workdir, data_dir, records)
  for i, p in enumerate(procs):
    assert p.wait(timeout=600) == 0, log_of(records, i)[-3000:]
  read = [json.loads((records / f"process{i}.json").read_text())
          for i in range(2)]

  # Disjoint shares of the training files, each read in full every epoch.
  train_files = [{r for batch in p["train"] for r in batch} for p in read]
  assert train_files[0] and train_files[1]
  assert not train_files[0] & train_files[1]
  # Every evaluation file in exactly one process (windows of a file stay
  # together), and the gathered metrics count each once.
  saved = json.loads((workdir / "eval_results.json").read_text())
  builder = data.prepare_from_config(config(data_dir))
  for split in ("validation", "test"):
    files = [set(p["eval"][split]) for p in read]
    assert not files[0] & files[1]
    assert len(files[0] | files[1]) == builder.info.splits[split].num_examples
    assert saved["evals"][split]["mean"]["no_prior"]["num_files"] == len(
        files[0] | files[1])

  # Same parameters and metrics as one process with 8 devices.
  single_dir, single_results = single_process
  multi, single = final_params(str(workdir)), final_params(single_dir)
  assert multi.step == single.step
  assert_same_params(multi.variables, single.variables)
  single_saved = json.loads(
      (pathlib.Path(single_dir) / "eval_results.json").read_text())
  assert saved["step"] == single_saved["step"]
  for split, output in single_results.items():
    for name, value in output.metrics.items():
      pooling, view, metric = name.split("/")
      assert saved["evals"][split][pooling][view][metric] == pytest.approx(
          value, abs=1e-6), name

  # Only process 0 writes results, plots, the label table and logs;
  # checkpoints are written once (one directory per step, nothing left
  # half-written).
  # (Orbax writes each process's own array metadata in a checkpoint.)
  assert [f for f in read[1]["written"]
          if f.split(os.sep)[0] not in ("checkpoints", "best")] == []
  assert "eval_results.json" in read[0]["written"]
  assert len(list(workdir.glob("events.out.tfevents.*"))) == 1
  steps = sorted(p.name for p in (workdir / "checkpoints").iterdir())
  assert steps == sorted(
      p.name for p in (pathlib.Path(single_dir) / "checkpoints").iterdir())

  # The checkpoints resume on a single host: drop the last step, resume
  # with 8 local devices, end at the same parameters.
  last = max(int(s) for s in steps)
  for kind in ("checkpoints", "best"):
    stale = workdir / kind / str(last)
    if stale.exists():
      subprocess.run(["rm", "-r", str(stale)], check=True)
  (workdir / "eval_results.json").unlink()
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(data_sources, "train_dataset",
               two_shares(data_sources.train_dataset))
    train.train_and_evaluate(config(data_dir), str(workdir))
  resumed = final_params(str(workdir))
  assert resumed.step == single.step
  assert_same_params(resumed.variables, single.variables)


def test_a_process_that_dies_stops_the_other_with_a_message(data_dir,
                                                            tmp_path):
  workdir, records = tmp_path / "killed", tmp_path / "records"
  procs = launch(workdir, data_dir, records, "--config.num_epochs=40.0")
  deadline = time.time() + 300
  while not (workdir / "checkpoints").exists() or not any(
      (workdir / "checkpoints").iterdir()):
    assert procs[0].poll() is None, log_of(records, 0)[-3000:]
    assert time.time() < deadline, "no checkpoint appeared"
    time.sleep(0.1)
  procs[1].send_signal(signal.SIGKILL)
  procs[1].wait()
  killed_at = time.time()
  status = procs[0].wait(timeout=120)
  assert status != 0
  assert time.time() - killed_at < 60
  log = log_of(records, 0)
  assert "another process has probably stopped" in log or (
      "another task died" in log), log[-3000:]
