"""Checkpoints are checked both ways: nothing non-finite saved, nothing
damaged resumed; a workdir refuses a config that would change its run."""

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from inatsounds_jax import checkpoints
from inatsounds_jax import config_defaults
from inatsounds_jax import registry
from inatsounds_jax import workdir as workdir_lib


def state(value: float) -> dict:
  # Random values (incompressible) so that each array file has real bytes.
  noise = jax.random.normal(jax.random.PRNGKey(0), (64, 32))
  return {"params": {"w": noise + value, "b": jnp.full((3,), value)},
          "step": jnp.asarray(int(value) if np.isfinite(value) else 0,
                              jnp.int32)}


def abstract_and_sharding():
  s = state(0.0)
  replicated = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return (jax.eval_shape(lambda: s),
          jax.tree.map(lambda _: replicated, s))


def saved_run(tmp_path, steps=(1, 2)) -> checkpoints.RunCheckpoints:
  ckpt = checkpoints.RunCheckpoints(str(tmp_path), keep=5,
                                    best_metric="val/map")
  for step in steps:
    ckpt.save_latest(step, state(float(step)))
  ckpt.wait()
  return ckpt


def array_files(tmp_path, step) -> list[pathlib.Path]:
  """The files holding the arrays' bytes (orbax's OCDBT data files)."""
  files = [p for p in (tmp_path / "checkpoints" / str(step)).rglob("d/*")
           if p.is_file()]
  assert files and max(p.stat().st_size for p in files) > 4096
  return files


def damage_zero_bytes(tmp_path, step):
  for path in array_files(tmp_path, step):
    data = bytearray(path.read_bytes())
    data[len(data) // 4:] = bytes(len(data) - len(data) // 4)
    path.write_bytes(bytes(data))


def damage_truncate(tmp_path, step):
  for path in array_files(tmp_path, step):
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


def damage_delete_metadata(tmp_path, step):
  for path in (tmp_path / "checkpoints" / str(step)).rglob("*METADATA"):
    path.unlink()


def damage_delete_manifest(tmp_path, step):
  for path in (tmp_path / "checkpoints" / str(step)).rglob("manifest.ocdbt"):
    path.unlink()


@pytest.mark.parametrize("damage", [damage_zero_bytes, damage_truncate,
                                    damage_delete_metadata,
                                    damage_delete_manifest])
def test_damaged_newest_checkpoint_falls_back_to_the_newest_intact(
    damage, tmp_path, caplog):
  saved_run(tmp_path)
  damage(tmp_path, 2)
  abstract, sharding = abstract_and_sharding()
  ckpt = checkpoints.RunCheckpoints(str(tmp_path), keep=5,
                                    best_metric="val/map")
  restored, step = ckpt.restore_latest(abstract, sharding)
  assert step == 1
  np.testing.assert_array_equal(restored["params"]["b"], 1.0)
  warnings = [r.getMessage() for r in caplog.records
              if r.levelname == "WARNING"]
  assert any("checkpoints/2 is damaged" in w for w in warnings), warnings
  # Set aside, never deleted; the run can save step 2 again.
  assert (tmp_path / "damaged_checkpoints" / "checkpoints_2").is_dir()
  ckpt.save_latest(2, state(2.0))


def test_non_finite_checkpoint_is_not_resumed(tmp_path):
  saved_run(tmp_path, steps=(1,))
  # Written behind the checks' back, as a corrupted file could decode.
  raw = ocp.CheckpointManager(tmp_path / "checkpoints")
  raw.save(2, args=ocp.args.StandardSave(state(np.nan)))
  raw.wait_until_finished()
  abstract, sharding = abstract_and_sharding()
  ckpt = checkpoints.RunCheckpoints(str(tmp_path), keep=5,
                                    best_metric="val/map")
  assert ckpt.restore_latest(abstract, sharding)[1] == 1


def test_every_checkpoint_damaged_is_one_clear_error(tmp_path):
  saved_run(tmp_path, steps=(1,))
  damage_truncate(tmp_path, 1)
  abstract, sharding = abstract_and_sharding()
  ckpt = checkpoints.RunCheckpoints(str(tmp_path), keep=5,
                                    best_metric="val/map")
  with pytest.raises(checkpoints.DamagedCheckpointError,
                     match="no intact checkpoint.*step 1"):
    ckpt.restore_latest(abstract, sharding)


def test_non_finite_state_is_never_saved(tmp_path):
  ckpt = checkpoints.RunCheckpoints(str(tmp_path), keep=5,
                                    best_metric="val/map")
  with pytest.raises(checkpoints.NonFiniteStateError,
                     match="step 3: params hold NaN"):
    ckpt.save_latest(3, state(np.inf))
  assert ckpt.latest.all_steps() == []


def test_empty_workdir_restores_nothing(tmp_path):
  abstract, sharding = abstract_and_sharding()
  ckpt = checkpoints.RunCheckpoints(str(tmp_path), keep=5,
                                    best_metric="val/map")
  assert ckpt.restore_latest(abstract, sharding) is None
  assert ckpt.restore_best(abstract, sharding) is None


def test_resume_refuses_a_config_that_changes_the_run(tmp_path):
  c = config_defaults.classifier()
  checkpoints.check_config_for_resume(str(tmp_path), c, resuming=False)
  c.batch_size = 64
  c.model = "vit_b16"
  with pytest.raises(registry.ConfigError) as error:
    checkpoints.check_config_for_resume(str(tmp_path), c, resuming=True)
  message = str(error.value)
  assert "batch_size: 128 -> 64" in message
  assert "model: 'resnet50' -> 'vit_b16'" in message
  assert len(message.splitlines()) <= 5


def test_resume_accepts_fields_a_newer_version_added_at_their_defaults(
    tmp_path):
  c = config_defaults.classifier()
  checkpoints.check_config_for_resume(str(tmp_path), c, resuming=False)
  path = tmp_path / workdir_lib.CONFIG_FILE
  written_by_older_version = json.loads(path.read_text())
  del written_by_older_version["label_mode"]
  path.write_text(json.dumps(written_by_older_version))
  checkpoints.check_config_for_resume(
      str(tmp_path), c, resuming=True, defaults=config_defaults.classifier())
  path.write_text(json.dumps(written_by_older_version))
  c.label_mode = "checklist"  # Not the default: the run would change.
  with pytest.raises(registry.ConfigError, match="label_mode: '.unset.' -> "
                     "'checklist'"):
    checkpoints.check_config_for_resume(
        str(tmp_path), c, resuming=True,
        defaults=config_defaults.classifier())


def test_resume_allows_logging_evaluation_and_path_changes(tmp_path):
  c = config_defaults.classifier()
  checkpoints.check_config_for_resume(str(tmp_path), c, resuming=False)
  c.log_every_steps = 7
  c.checkpoint_every_steps = 3
  c.evals.validation.every_epochs = 5.0
  c.data_dir = "/elsewhere"
  c.geo_prior = "/runs/sinr"
  checkpoints.check_config_for_resume(str(tmp_path), c, resuming=True)
  assert os.path.exists(tmp_path / workdir_lib.CONFIG_FILE)


def test_a_state_of_another_layout_is_refused_and_left_in_place(tmp_path):
  saved_run(tmp_path, steps=(1,))
  # This run's state holds a field the saved one lacks (a newer loss table).
  s = dict(state(0.0), loss_state={"adam_count": jnp.zeros((), jnp.int32)})
  replicated = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  ckpt = checkpoints.RunCheckpoints(str(tmp_path), keep=5,
                                    best_metric="val/map")
  with pytest.raises(registry.ConfigError,
                     match="checkpoints/1: the state was saved with another "
                           "layout"):
    ckpt.restore_latest(jax.eval_shape(lambda: s),
                        jax.tree.map(lambda _: replicated, s))
  assert (tmp_path / "checkpoints" / "1").is_dir()
  assert not (tmp_path / "damaged_checkpoints").exists()
