"""Single-positive training end to end: label modes, stateful losses through
checkpoints and over devices (tiny synthetic runs; slow)."""

import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from inatsounds_jax import losses
from inatsounds_jax import train
from inatsounds_jax import trained as trained_lib
from tests.test_train import assert_trees_close
from tests.test_train import tiny_config

pytestmark = pytest.mark.slow


def spml_config(data_dir, **overrides):
  """The tiny config with the placeholder backbone: these tests are about
  labels, losses and state, which any backbone exercises."""
  return tiny_config(data_dir, **{"model": "placeholder", **overrides})

STRONG_EVAL = {"type": "strong_label", "split": "validation",
               "every_epochs": 0.0}


def final_state(workdir):
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  step = manager.latest_step()
  return step, manager.restore(step)


@pytest.mark.parametrize("mode,loss", [
    ("target_only", "an_ls"), ("geo", "em"), ("checklist", "ll_ct"),
    ("full", "full_bce")])
def test_every_label_mode_trains_and_is_scored_on_strong_labels(
    data_dir, tmp_path, mode, loss):
  c = spml_config(data_dir, loss=loss, label_mode=mode,
                  geo_prior="synthetic_truth", num_epochs=2.0,
                  asset_reg={"weight": 0.5, "rate": 0.1})
  c.evals = {"strong": STRONG_EVAL}
  c.best_metric = "strong/no_prior/window_map"
  c.evals.strong.every_epochs = 1.0
  outputs = train.train_and_evaluate(c, str(tmp_path))
  window_map = outputs["strong"].metrics["no_prior/window_map"]
  assert 0 < window_map <= 1


def test_role_label_table_survives_a_kill_and_resume(data_dir, tmp_path):
  c = spml_config(data_dir, loss="role", label_mode="target_only",
                  num_epochs=3.0, checkpoint_every_steps=1)
  straight = str(tmp_path / "straight")
  train.train_and_evaluate(c, straight)
  total, expected = final_state(straight)
  assert total >= 4
  # Killed after step 2: later checkpoints never written.
  killed = str(tmp_path / "killed")
  shutil.copytree(straight, killed)
  for step in ocp.CheckpointManager(
      os.path.join(killed, "checkpoints")).all_steps():
    if step > 2:
      shutil.rmtree(os.path.join(killed, "checkpoints", str(step)))
  shutil.rmtree(os.path.join(killed, "best"), ignore_errors=True)
  train.train_and_evaluate(c, killed)
  step, resumed = final_state(killed)
  assert step == total
  table = np.asarray(expected["loss_state"]["rows"]["label_logits"])
  assert not np.allclose(table, np.asarray(
      losses.LOSSES.get("role").bind(
          {"expected_positives": 1.0,
           "label_learning_rate_multiplier": 10.0},
          losses.LossContext(num_examples=table.shape[0])).init(
              table.shape[1])["rows"]["label_logits"]))  # It has learned.
  assert_trees_close(expected["loss_state"], resumed["loss_state"],
                     rtol=1e-5, atol=1e-6)
  assert_trees_close(expected["params"], resumed["params"], rtol=1e-5,
                     atol=1e-6)


def test_one_and_eight_devices_agree_with_a_stateful_loss(data_dir, tmp_path,
                                                          monkeypatch):
  # Rows in blocks of 8, so the 8-device table holds a few rows per device
  # and the workdir's table is not the default size.
  monkeypatch.setattr(losses, "ROW_MULTIPLE", 8)
  # target_only: on the tiny corpus the true ranges leave no unknowns.
  c = spml_config(data_dir, loss="ll_cp", label_mode="target_only",
                  num_epochs=2.0, optimizer="sgd", learning_rate=0.01,
                  frontend_preset="inatsounds_float",
                  loss_options={"delta": 0.2},
                  asset_reg={"weight": 1.0, "rate": 0.2})
  train.train_and_evaluate(c, str(tmp_path / "one"),
                           devices=jax.devices()[:1])
  train.train_and_evaluate(c, str(tmp_path / "eight"), devices=jax.devices())
  _, one = final_state(str(tmp_path / "one"))
  _, eight = final_state(str(tmp_path / "eight"))
  assert one["loss_state"]["loss"]["rows"]["corrected"].sum() > 0
  np.testing.assert_array_equal(one["loss_state"]["loss"]["rows"]["corrected"],
                                eight["loss_state"]["loss"]["rows"][
                                    "corrected"])
  assert_trees_close(one["loss_state"], eight["loss_state"], rtol=2e-4,
                     atol=2e-5)
  assert_trees_close(one["params"], eight["params"], rtol=2e-4, atol=2e-5)
  # A workdir's model loads without the data that sized the tables.
  monkeypatch.setattr(losses, "ROW_MULTIPLE", 64)
  model = trained_lib.load_workdir(str(tmp_path / "eight"))
  assert model.multilabel


def test_mean_teacher_trains_and_its_teacher_is_checkpointed(data_dir,
                                                             tmp_path):
  c = spml_config(data_dir, loss="an", ema_decay=0.9,
                  geo_prior="synthetic_truth", num_epochs=2.0,
                  mean_teacher={"weight": 1.0, "consistency": "bce",
                                "rampup_epochs": 1.0, "teacher_erasing": True,
                                "geo_mask": True})
  c.evals = {"strong": STRONG_EVAL}
  c.best_metric = "strong/no_prior/window_map"
  c.evals.strong.every_epochs = 1.0
  outputs = train.train_and_evaluate(c, str(tmp_path))
  assert 0 < outputs["strong"].metrics["no_prior/window_map"] <= 1
  _, state = final_state(str(tmp_path))
  teacher, student = state["ema_params"], state["params"]
  differs = jax.tree.leaves(jax.tree.map(
      lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
      teacher, student))
  assert any(differs)
