"""Helpers for the prediction and export tests: a model workdir, recordings.

`make_workdir` writes what training leaves in a workdir (config.json,
classes.json, a checkpoint) for a freshly initialised model, in seconds;
the slow end-to-end tests train one instead. The real recordings ship inside
PyPI wheels installed with --no-deps (see .ci/run): opensoundscape's 10-s
bird recording (32 kHz WAV) and HawkEars' Common Yellowthroat (44.1 kHz
MP3).
"""

import importlib.util
import json
import os

import jax
import pytest

from inatsounds_jax import checkpoints
from inatsounds_jax import config_defaults
from inatsounds_jax import losses
from inatsounds_jax import train
from inatsounds_jax import trained as trained_lib
from inatsounds_jax import workdir as workdir_lib


def _package_file(package: str, *parts: str) -> str:
  spec = importlib.util.find_spec(package)
  if spec is None:
    pytest.skip(f"{package} is not installed (pip install --no-deps)")
  return os.path.join(spec.submodule_search_locations[0], *parts)


def bird_wav() -> str:
  """opensoundscape 0.13.2's birds_10s.wav: 10.1 s, 32 kHz, mono."""
  return _package_file("opensoundscape", "sample_data", "birds_10s.wav")


def yellowthroat_mp3() -> str:
  """hawkears 2.3.0's CommonYellowthroat.mp3: 5.9 s, 44.1 kHz, mono."""
  return _package_file("hawkears", "install", "canada", "recordings",
                       "CommonYellowthroat.mp3")


def labels(num_classes: int) -> list[dict]:
  return [{"species": f"Genus species{i}", "common_name": f"Bird {i}",
           "supercategory": "Aves", "taxonomy": ["Animalia", "Aves"]}
          for i in range(num_classes)]


def make_workdir(workdir: str, model: str = "placeholder",
                 num_classes: int = 6, seed: int = 0, **overrides) -> str:
  """A workdir holding an initialised (untrained) model's checkpoint."""
  c = config_defaults.tiny(config_defaults.classifier())
  c.model = model
  c.update(overrides)
  os.makedirs(workdir, exist_ok=True)
  checkpoints.check_config_for_resume(workdir, c, resuming=False)
  with open(os.path.join(workdir, workdir_lib.LABELS_FILE), "w") as f:
    json.dump(labels(num_classes), f)
  loss = losses.LOSSES.get(c.loss)
  model_def = trained_lib.build_model(c, num_classes, loss.multilabel)
  tx = train.make_optimizer(c, train.learning_rate_schedule(c, 1))
  state = jax.jit(lambda: train.init_state(
      model_def, tx, loss, jax.random.PRNGKey(seed),
      ema=bool(c.ema_decay)))()
  ckpt = checkpoints.RunCheckpoints(workdir, 1, c.best_metric)
  ckpt.save_latest(1, state)
  ckpt.wait()
  return workdir
