"""Workdirs, range models and bundles on `gs://`, against a fake bucket.

`fake_bucket.fake_gcs` serves `gs://` from a local folder (what it covers
and what not is in its docstring). Every test also runs in an empty
current directory and checks it stays empty: a `gs://` path handed to
`open`, `os.makedirs` or `os.path.abspath` would land there as `gs:/...`.
"""

import logging
import os
import shutil

import jax
import numpy as np
import pytest

from inatsounds_jax import checkpoints
from inatsounds_jax import config_defaults
from inatsounds_jax import export
from inatsounds_jax import plots
from inatsounds_jax import registry
from inatsounds_jax import scored_rows
from inatsounds_jax import storage
from inatsounds_jax import train
from inatsounds_jax import workdir as workdir_lib
from inatsounds_jax import trained as trained_lib
from inatsounds_jax.geo import range_model as range_lib
from inatsounds_jax.geo import sinr
import fake_bucket
import model_workdir

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
  assert (bucket / "bucket" / "run" / workdir_lib.CONFIG_FILE).exists()
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


@pytest.mark.slow  # ~12 s: jax.export of the model.
def test_bundle_exported_from_a_bucket_workdir_into_the_bucket_predicts(
    bucket, tmp_path):
  shutil.copytree(model_workdir.make_workdir(str(tmp_path / "local")),
                  bucket / "bucket" / "model")
  export.export_bundle("gs://bucket/model", "gs://bucket/bundle")
  assert (bucket / "bucket" / "bundle" /
          trained_lib.BUNDLE_CONFIG_FILE).exists()
  assert not (bucket / "bucket" / "bundle.partial").exists()
  from_bundle = trained_lib.load("gs://bucket/bundle")
  from_workdir = trained_lib.load("gs://bucket/model")
  x = np.zeros((2, from_bundle.model.window_samples), np.float32)
  np.testing.assert_array_equal(
      from_bundle.model.apply(from_bundle.variables, x),
      from_workdir.model.apply(from_workdir.variables, x))


@pytest.mark.slow
def test_tiny_run_on_a_bucket_workdir_writes_there_and_resumes(
    bucket, tmp_path, caplog):
  c = config_defaults.tiny(config_defaults.classifier())
  c.model = "placeholder"
  c.data_dir = str(tmp_path / "tfds")
  # The run trains its own range prior into gs://bucket/run/range_model.
  c.range_model = config_defaults.range_model("synthetic")
  c.range_model.epochs = 2
  c.evals.validation.save_rows = True
  first = train.train_and_evaluate(c, WORKDIR)
  run = bucket / "bucket" / "run"
  for name in ("config.json", "classes.json", "eval_results.json",
               "range_model/range_results.json", "range_model/range_maps.png",
               "validation_rows.npz"):
    assert (run / name).exists(), name
  assert not list(run.glob("*.partial"))
  assert set(scored_rows.read_rows(f"{WORKDIR}/validation_rows.npz")) == {
      "mean/no_prior", "max/no_prior"}
  assert storage.read_json(f"{WORKDIR}/config.json")["geo_prior"] == (
      f"{WORKDIR}/range_model")
  assert "prior" in storage.read_json(f"{WORKDIR}/eval_results.json")[
      "evals"]["test"]["mean"]
  assert any(run.glob("*.png"))
  assert any(run.glob("events.out.tfevents.*"))
  last = max(int(p.name) for p in (run / "checkpoints").iterdir()
             if p.name.isdigit())
  # The same command again resumes from the bucket's last step.
  # On absl's logger: an earlier test in this process may have raised its
  # level (absl's verbosity), which the root logger's level would not undo.
  caplog.set_level(logging.INFO, logger="absl")
  again = train.train_and_evaluate(c, WORKDIR)
  assert f"Resumed from step {last}" in caplog.text
  assert ({k: o.summary for k, o in again.items()} ==
          {k: o.summary for k, o in first.items()})
  assert trained_lib.load_workdir(WORKDIR).step == last


def test_bucket_workdir_without_the_storage_client_is_refused_first(
    tmp_path, monkeypatch):
  monkeypatch.setattr(checkpoints, "has_bucket_client", lambda: False)
  c = config_defaults.tiny(config_defaults.classifier())
  c.update(model="placeholder", data_dir=str(tmp_path / "tfds"))
  for job in (train.train_and_evaluate, train.evaluate_checkpoint):
    with pytest.raises(registry.ConfigError,
                       match=r"checkpoints in gs://bucket/run need the Cloud "
                             r"Storage client.*inatsounds_jax\[gcs\]"):
      job(c, WORKDIR)
  assert not (tmp_path / "tfds").exists()  # Refused before any work.
