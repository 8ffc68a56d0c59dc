"""Workdirs, range models and bundles on `gs://`, against a fake bucket.

`fake_bucket.fake_gcs` serves `gs://` from a local folder (what it covers
and what not is in its docstring). Every test also runs in an empty
current directory and checks it stays empty: a `gs://` path handed to
`open`, `os.makedirs` or `os.path.abspath` would land there as `gs:/...`.
"""

import os

import jax
import numpy as np
import pytest

from inatsounds_jax import checkpoints
from inatsounds_jax import config_defaults
from inatsounds_jax import plots
from inatsounds_jax import registry
from inatsounds_jax import storage
from inatsounds_jax import train
from inatsounds_jax.geo import range_model as range_lib
from inatsounds_jax.geo import sinr
import fake_bucket

WORKDIR = "gs://bucket/run"


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """The local folder behind gs://; the test runs in an empty cwd."""
  root, cwd = tmp_path / "gcs", tmp_path / "cwd"
  root.mkdir()
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  with fake_bucket.fake_gcs(root, monkeypatch):
    yield root
  assert not list(cwd.iterdir()), "a gs:// path was used as a local path"


def test_resolve_keeps_uris_and_makes_local_paths_absolute(tmp_path,
                                                           monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert os.fspath(storage.resolve("gs://bucket/run/")) == WORKDIR
  assert os.fspath(storage.resolve("run")) == str(tmp_path / "run")
  assert storage.is_uri("s3://b/x") and not storage.is_uri("/data/run")


def test_recorded_config_goes_to_the_bucket_and_guards_the_resume(bucket):
  c = config_defaults.tiny(config_defaults.classifier())
  checkpoints.check_config_for_resume(WORKDIR, c, resuming=False)
  assert (bucket / "bucket" / "run" / checkpoints.CONFIG_FILE).exists()
  checkpoints.check_config_for_resume(WORKDIR, c, resuming=True)
  c.learning_rate = 123.0
  with pytest.raises(registry.ConfigError, match="learning_rate"):
    checkpoints.check_config_for_resume(WORKDIR, c, resuming=True)


def test_results_and_plots_are_written_into_the_bucket(bucket):
  plt = plots.pyplot()
  fig, ax = plt.subplots()
  ax.plot([0, 1], [1, 0])
  path = plots.save(fig, f"{WORKDIR}/validation_curve.png")
  assert path == f"{WORKDIR}/validation_curve.png"
  png = (bucket / "bucket" / "run" / "validation_curve.png").read_bytes()
  assert png.startswith(b"\x89PNG")
  storage.write_json(f"{WORKDIR}/deeper/results.json", {"top1": 0.5})
  assert storage.read_json(f"{WORKDIR}/deeper/results.json") == {"top1": 0.5}


def test_range_model_saves_to_and_loads_from_the_bucket(bucket):
  model = sinr.SINR(3, width=8, depth=1)
  params = model.init(jax.random.PRNGKey(0), np.zeros((1, 4)))["params"]
  saved = range_lib.RangeModel(model, params, ["a", "b", "c"])
  saved.save(f"{WORKDIR}/range_model")
  assert (bucket / "bucket" / "run" / "range_model"
          / range_lib.METADATA_FILE).exists()
  # Found from the workdir, as `geo_prior=gs://...` or predict's prior do.
  loaded = range_lib.load(WORKDIR)
  assert loaded.species_names == ["a", "b", "c"]
  lat, lon = np.array([10.0, -40.0]), np.array([5.0, 120.0])
  np.testing.assert_allclose(loaded.presence(lat, lon),
                             saved.presence(lat, lon), rtol=1e-6)


def test_damaged_checkpoint_in_the_bucket_is_moved_aside(bucket):
  state = {"w": np.arange(4, dtype=np.float32)}
  ckpt = checkpoints.RunCheckpoints(WORKDIR, keep=3, best_metric="top1")
  ckpt.save_latest(1, state)
  ckpt.save_latest(2, state)
  ckpt.wait()
  (bucket / "bucket" / "run" / "checkpoints" / "2" /
   "_CHECKPOINT_METADATA").unlink()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          state)
  sharding = jax.tree.map(
      lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), state)
  restored, step = ckpt.restore_latest(abstract, sharding)
  assert step == 1
  np.testing.assert_array_equal(restored["w"], state["w"])
  assert (bucket / "bucket" / "run" / "damaged_checkpoints"
          / "checkpoints_2").is_dir()


@pytest.mark.slow
def test_tiny_run_on_a_bucket_workdir_writes_there_and_resumes(
    bucket, tmp_path):
  c = config_defaults.tiny(config_defaults.classifier())
  c.model = "placeholder"
  c.data_dir = str(tmp_path / "tfds")
  c.num_epochs = 1.0
  first = train.train_and_evaluate(c, WORKDIR)
  run = bucket / "bucket" / "run"
  for name in ("config.json", "classes.json", "eval_results.json"):
    assert (run / name).exists(), name
  assert any(run.glob("*.png"))
  assert any(run.glob("events.out.tfevents.*"))
  steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert steps
  # A longer run resumes from the bucket's checkpoint, not from scratch.
  c.num_epochs = 2.0
  train.train_and_evaluate(c, WORKDIR)
  assert max(int(p.name) for p in (run / "checkpoints").iterdir()
             if p.name.isdigit()) > steps[-1]
  trained = train.load_model_from_workdir(WORKDIR)
  assert trained.step > steps[-1]
  assert set(first) == set(train.evaluate_checkpoint(c, WORKDIR))
