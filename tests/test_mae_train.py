"""MAE pretraining and its adaptations through the training loop, end to
end on the tiny synthetic set (slow: each run takes tens of seconds)."""

import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from inatsounds_jax import curate
from inatsounds_jax import data_sources
from inatsounds_jax import input_pipeline
from inatsounds_jax import registry
from inatsounds_jax import train
from inatsounds_jax import trained as trained_lib
from test_train import load_config  # pylint: disable=g-bad-import-order
import model_workdir  # pylint: disable=g-bad-import-order

pytestmark = pytest.mark.slow
# The tests sharing the pretrained `mae_workdir` run in one test process
# (`pytest --dist loadgroup`), so it is trained once.
ONE_PROCESS = pytest.mark.xdist_group("mae_workdir")


def pretrain_config(data_dir, **overrides):
  c = load_config("mae_pretrain", "tiny")
  c.data_dir = data_dir
  c.update(overrides)
  return c


def finetune_config(data_dir, variant, mae_workdir, **overrides):
  c = load_config("mae_finetune", variant)
  c.data_dir = data_dir
  c.init_checkpoint = mae_workdir
  c.update(overrides)
  return c


def checkpoint(workdir, step=None):
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
  return manager.restore(step or manager.latest_step())


@pytest.fixture(scope="module")
def mae_workdir(data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("mae"))
  # Half an epoch of every dense clip (the study's epoch, the config's).
  train.train_and_evaluate(
      pretrain_config(data_dir, num_epochs=0.5, checkpoint_every_steps=1,
                      keep_checkpoints=1000), workdir)
  return workdir


@ONE_PROCESS
def test_pretraining_reports_reconstruction_loss_draws_figures_and_resumes(
    mae_workdir, data_dir, tmp_path):
  with open(os.path.join(mae_workdir, "eval_results.json")) as f:
    saved = json.load(f)
  assert saved["evals"]["validation"]["loss"] > 0
  assert saved["evals"]["validation"]["num_windows"] > 0
  figure = os.path.join(mae_workdir, "validation_reconstructions.png")
  assert os.path.getsize(figure) > 5000
  straight = checkpoint(mae_workdir)
  total = int(straight["step"])
  assert total >= 4
  # A run stopped after step 2 (its later checkpoints never written)
  # resumes to the same parameters.
  resumed = str(tmp_path / "resumed")
  shutil.copytree(mae_workdir, resumed)
  for step in range(3, total + 1):
    shutil.rmtree(os.path.join(resumed, "checkpoints", str(step)))
  shutil.rmtree(os.path.join(resumed, "best"))
  train.train_and_evaluate(
      pretrain_config(data_dir, num_epochs=0.5, checkpoint_every_steps=1,
                      keep_checkpoints=1000), resumed)
  again = checkpoint(resumed)
  assert int(again["step"]) == total
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6),
               straight["params"], again["params"])


def mae_encoder(mae_workdir):
  return trained_lib.load_workdir(mae_workdir).variables["params"]


@ONE_PROCESS
def test_partial_fine_tune_starts_from_the_encoder_and_keeps_frozen_blocks(
    mae_workdir, data_dir, tmp_path):
  c = finetune_config(data_dir, "tiny,partial", mae_workdir)
  results = train.train_and_evaluate(c, str(tmp_path))
  assert 0.0 <= results["validation"].metrics["mean/no_prior/top1"] <= 1.0
  encoder = mae_encoder(mae_workdir)
  tuned = checkpoint(str(tmp_path))["params"]["net"]
  assert c.freeze_blocks == 1
  for name in ("patch_embed_proj", "cls_token", "blocks_0_attn_qkv",
               "blocks_0_mlp_fc2"):
    jax.tree.map(np.testing.assert_array_equal, tuned[name], encoder[name])
  assert not np.allclose(tuned["blocks_1_attn_qkv"]["kernel"],
                         encoder["blocks_1_attn_qkv"]["kernel"])
  np.testing.assert_allclose(tuned["pos_embed"][0, 0], 0.0)  # Class token.


@ONE_PROCESS
def test_linear_probe_changes_only_the_head(mae_workdir, data_dir, tmp_path):
  c = finetune_config(data_dir, "tiny,linear_probe", mae_workdir)
  train.train_and_evaluate(c, str(tmp_path))
  encoder = mae_encoder(mae_workdir)
  saved = checkpoint(str(tmp_path))
  tuned = saved["params"]["net"]
  assert set(saved["batch_stats"]["net"]) == {"head_norm"}
  for name, value in tuned.items():
    if name in encoder:
      jax.tree.map(np.testing.assert_array_equal, value, encoder[name])
  # The head's Adam moments are the only ones kept.
  state_size = sum(np.size(x) for x in jax.tree.leaves(saved["opt_state"]))
  head_size = sum(np.size(x) for x in jax.tree.leaves(tuned["head"]))
  assert state_size <= 2 * head_size + 4


def test_refused_fine_tune_from_another_backbone_says_why_and_writes_nothing(
    data_dir, tmp_path):
  classifier = model_workdir.make_workdir(str(tmp_path / "classifier"))
  with pytest.raises(registry.ConfigError) as e:
    train.train_and_evaluate(
        finetune_config(data_dir, "tiny", classifier), str(tmp_path / "ft"))
  assert (f"init_checkpoint {classifier}: a 'placeholder' classifier; this "
          "run's model is 'vit_mu16'") in str(e.value)
  assert not (tmp_path / "ft").exists()  # A refusal at start-up.


@ONE_PROCESS
def test_fine_tune_with_another_input_shape_says_both(mae_workdir, data_dir,
                                                      tmp_path):
  c = finetune_config(data_dir, "tiny", mae_workdir)
  c.image.size = (32, 128)
  with pytest.raises(registry.ConfigError) as e:
    train.train_and_evaluate(c, str(tmp_path))
  assert ("the MAE was pretrained on 1 x 32 x 64 inputs; this model takes "
          "1 x 32 x 128") in str(e.value)


def test_pretraining_on_a_mixture_of_the_train_split_and_an_audio_folder(
    data_dir, tmp_path):
  folder = tmp_path / "unlabelled" / "sub"
  folder.mkdir(parents=True)
  shutil.copy(model_workdir.bird_wav(), folder)
  shutil.copy(model_workdir.yellowthroat_mp3(), folder)
  c = load_config("mae_pretrain", "tiny,mixture")
  c.data_dir = data_dir
  c.pretrain_sources.audio.path = str(tmp_path / "unlabelled")
  c.pretrain_sources.audio.weight = 3.0
  workdir = str(tmp_path / "run")
  outputs = train.train_and_evaluate(c, workdir)
  assert np.isfinite(outputs["validation"].metrics["loss"])
  run = train.setup(c)
  # The split's epoch is every dense clip (the config's); the folder's one
  # window per file.
  clips = input_pipeline.count_epoch(
      run.builder, "train", data_sources.model_windows(c),
      input_pipeline.TrainEpoch(unit="clip"))
  assert clips > run.builder.info.splits["train"].num_examples
  assert {s.name: s.num_examples for s in run.train_sources} == {
      "inatsounds": clips, "audio": 2}
  assert run.total_steps == (clips + 2) // c.batch_size
  assert checkpoint(workdir)["step"] == run.total_steps


def test_unlabelled_sources_are_refused_to_a_classifier(data_dir, tmp_path):
  c = load_config("mae_finetune", "tiny")
  c.data_dir = data_dir
  c.pretrain_sources = {"x": {"type": "tfds", "split": "train"}}
  with pytest.raises(registry.ConfigError, match="pretrain_sources: only "
                     "objectives that use no labels"):
    train.setup(c)


@ONE_PROCESS
def test_curating_by_reconstruction_then_pretraining_on_the_kept_windows(
    mae_workdir, data_dir, tmp_path):
  out = str(tmp_path / "curated")
  kept = curate.curate(mae_workdir, out, "reconstruction", keep_fraction=0.5)
  scores = np.array([float(r) for r in kept.columns["score"]])
  assert np.isfinite(scores).all() and (scores > 0).all()
  c = pretrain_config(data_dir,
                      train_window_filter=os.path.join(out, curate.KEEP_FILE))
  run = train.setup(c)
  [source] = run.train_sources
  # A clip epoch (the config's) is every kept window once.
  assert source.num_examples == len(kept.columns["example_index"])
  assert source.num_examples < input_pipeline.count_epoch(
      run.builder, "train", data_sources.model_windows(c),
      input_pipeline.TrainEpoch(unit="clip"))
  outputs = train.train_and_evaluate(c, str(tmp_path / "run"))
  assert np.isfinite(outputs["validation"].metrics["loss"])
