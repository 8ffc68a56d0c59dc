"""From the weakly labelled corpus to annotated soundscapes, end to end.

A classifier trained through the library's loop on the synthetic corpus is
judged by `python -m inatsounds_jax.evaluate` on soundscapes of the same
species that `python -m inatsounds_jax.synthetic --soundscapes` wrote (Raven
tables naming species by code, mapped through the species-map CSV): the
iNatSounds paper's downstream protocol, with no download.
"""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from inatsounds_jax import config_defaults
from inatsounds_jax import soundscapes
from inatsounds_jax import train


@pytest.mark.slow
def test_a_model_trained_on_the_corpus_finds_its_species_in_soundscapes(
    data_dir, tmp_path):
  workdir = str(tmp_path / "model")
  c = config_defaults.tiny(config_defaults.classifier())
  c.update(data_dir=data_dir, model="placeholder", optimizer="adam",
           learning_rate=0.03, weight_decay=0.0, num_epochs=25.0,
           frontend_preset="inatsounds_float", checkpoint_every_steps=1000)
  c.image.size = None
  c.image.channels = 1
  c.evals.validation.every_epochs = c.num_epochs  # Once, at the end.
  train.train_and_evaluate(c, workdir)
  written = subprocess.run(
      [sys.executable, "-m", "inatsounds_jax.synthetic",
       f"--out={tmp_path / 'set'}", "--soundscapes=3",
       "--soundscape_seconds=30", "--soundscape_codes",
       *(f"--{k}={v}" for k, v in config_defaults.TINY_DATASET.items())],
      capture_output=True, text=True, check=False, timeout=300)
  assert written.returncode == 0, written.stderr[-3000:]
  out = tmp_path / "evaluation"
  result = subprocess.run(
      [sys.executable, "-m", "inatsounds_jax.evaluate", f"--model={workdir}",
       f"--audio={tmp_path / 'set' / 'soundscapes'}",
       f"--annotations={tmp_path / 'set' / 'soundscape_annotations'}",
       f"--species_map={tmp_path / 'set' / 'soundscape_species_map.csv'}",
       f"--output={out}", "--bootstrap=50"],
      capture_output=True, text=True, check=False, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(out / soundscapes.METRICS_FILE, encoding="utf-8") as f:
    m = json.load(f)
  # Every annotated code maps to a label: nothing unknown, nothing dropped.
  assert m["counts"]["species_unknown"] == 0
  assert m["counts"]["events_scored"] == m["counts"]["events"] > 0
  assert m["counts"]["problems"] == 0
  # Random scores reach a species' positive fraction as average precision
  # (in expectation); the trained model ranks its windows well above that.
  scored = [r for r in _csv(out / soundscapes.PER_SPECIES_FILE)
            if r["status"] == "scored"]
  assert len(scored) == m["counts"]["species_scored"] > 1
  window = m["levels"]["window"]
  chance = np.mean([int(r["positive_windows"]) for r in scored]) / window[
      "rows"]
  summary = window["no_prior"]
  assert summary["cmap"] > chance + 0.15, (summary["cmap"], chance)
  assert summary["cmauroc"] > 0.65
  interval = summary["cmap_interval"]
  assert interval["low"] <= summary["cmap"] <= interval["high"]


def _csv(path):
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))
