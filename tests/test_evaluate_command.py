"""The soundscape evaluation command (`python -m inatsounds_jax.evaluate`).

Flags are checked in this process, on a `FlagValues` of their own; runs
start the command in a subprocess (an interpreter with TF and JAX, several
seconds each). The model is an initialised placeholder (`model_workdir`),
the soundscapes are assembled from real recordings (`test_soundscapes`).
"""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

from inatsounds_jax import evaluate
from inatsounds_jax import inference
from inatsounds_jax import predict
from inatsounds_jax import soundscapes

import model_workdir
from test_predict_command import _error_line
from test_soundscapes import _rounded
from test_soundscapes import make_soundscape_set


def _evaluate(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, "-m", "inatsounds_jax.evaluate", *args],
      capture_output=True, text=True, check=False, timeout=300)


def _csv(path, delimiter=","):
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f, delimiter=delimiter))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return model_workdir.make_workdir(str(tmp_path_factory.mktemp("model")))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """The set of `test_soundscapes`, its CSV also naming a recording that
  does not exist."""
  paths = make_soundscape_set(tmp_path_factory.mktemp("set"))
  with open(paths["csv"], "a", encoding="utf-8") as f:
    f.write("missing.wav,1.0,2.0,amerob\n")
  return paths


@pytest.fixture(scope="module")
def model_run(workdir, dataset, tmp_path_factory):
  """The command on the model: (its output folder, its stdout)."""
  out = tmp_path_factory.mktemp("model_run") / "out"
  result = _evaluate(f"--model={workdir}", f"--audio={dataset['audio']}",
                     f"--annotations={dataset['csv']}",
                     f"--species_map={dataset['map']}", f"--output={out}",
                     "--bootstrap=20")
  assert result.returncode == 0, result.stderr[-3000:]
  return out, result.stdout


@pytest.mark.slow
def test_the_model_run_writes_every_output_and_they_agree(model_run):
  out, stdout = model_run
  for name in (soundscapes.METRICS_FILE, soundscapes.PER_SPECIES_FILE,
               soundscapes.THRESHOLDS_FILE, soundscapes.MAPPING_FILE,
               soundscapes.PROBLEMS_FILE, soundscapes.ROWS_FILE):
    assert (out / name).stat().st_size > 0, name
  for name in ("precision_recall.png", soundscapes.CALIBRATION_PLOT):
    assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
  with open(out / soundscapes.METRICS_FILE, encoding="utf-8") as f:
    m = json.load(f)
  window = m["levels"]["window"]["no_prior"]
  # per_species.csv holds the per-species values behind the class means.
  rows = _csv(out / soundscapes.PER_SPECIES_FILE)
  scored = [r for r in rows if r["status"] == "scored"]
  assert sorted(r["annotated_as"] for r in scored) == ["amerob", "comyel",
                                                       "norcar"]
  assert np.mean([float(r["window_ap"]) for r in scored]) == pytest.approx(
      window["cmap"], rel=1e-5)
  assert np.mean([float(r["file_ap"]) for r in scored]) == pytest.approx(
      m["levels"]["file"]["no_prior"]["cmap"], rel=1e-5)
  assert sum(int(r["events"]) for r in scored) == (
      m["counts"]["events_scored"])
  # The unknown species is listed everywhere, and scored nowhere.
  (unknown,) = [r for r in rows if r["status"] != "scored"]
  assert unknown["species"] == "unkbrd" and unknown["window_ap"] == ""
  assert m["unknown_species"][0]["species"] == "unkbrd"
  mapping = _csv(out / soundscapes.MAPPING_FILE, "\t")
  assert [r["species"] for r in mapping if not r["class_index"]] == [
      "unkbrd"]
  # thresholds.csv: one row per scored species, its columns as documented.
  thresholds = _csv(out / soundscapes.THRESHOLDS_FILE)
  assert tuple(thresholds[0]) == soundscapes.THRESHOLD_COLUMNS
  assert {t["species"] for t in thresholds} == {r["species"] for r in scored}
  for t in thresholds:
    species = next(r for r in scored if r["species"] == t["species"])
    assert t["positive_windows"] == species["positive_windows"]
    # Judged on held-out recordings (two here: two folds) too.
    assert t["held_out_recall"] != ""
    if t["rule"] == "precision":
      assert float(t["precision"]) >= 0.9
      assert t["threshold"] == t["precision_threshold"]
    else:
      assert t["precision_threshold"] == ""
      assert t["threshold"] == t["best_f1_threshold"]
  # The recording the CSV names but the audio lacks is reported.
  problems = _csv(out / soundscapes.PROBLEMS_FILE, "\t")
  assert any("missing.wav" in p["reason"] for p in problems)
  assert (m["counts"]["evaluated"], m["counts"]["not_annotated"]) == (2, 1)
  # The summary on screen.
  assert f"window   no_prior  {window['cmap']:.3f} [" in stdout
  assert "1 unknown to the model (1 events, not scored): unkbrd" in stdout
  assert "3 labels not in the annotations" in stdout
  assert m["thresholds"]["held_out_target_kept"] <= (
      m["thresholds"]["target_precision_reached"])


@pytest.mark.slow
def test_prediction_tables_are_judged_as_the_model_on_the_same_annotations(
    model_run, workdir, dataset, tmp_path):
  predictor = inference.Predictor(workdir)
  tables = tmp_path / "tables"
  predict.run(predictor, dataset["audio"], str(tables),
              predict.RunOptions(selection=inference.Selection(0.0)))
  out = tmp_path / "out"
  result = _evaluate(f"--predictions={tables}", f"--audio={dataset['audio']}",
                     f"--annotations={dataset['csv']}",
                     f"--species_map={dataset['map']}", f"--output={out}",
                     "--bootstrap=0")
  assert result.returncode == 0, result.stderr[-3000:]
  with open(out / soundscapes.METRICS_FILE, encoding="utf-8") as f:
    m = json.load(f)
  with open(model_run[0] / soundscapes.METRICS_FILE, encoding="utf-8") as f:
    model = json.load(f)
  assert m["counts"] == model["counts"]
  for level in ("window", "file"):
    for key in ("rows", "rows_with_a_species", "single_species_rows"):
      assert m["levels"][level][key] == model["levels"][level][key]
  assert m["source"]["scores_complete"] is True
  # Every metric is the model's on the scores the tables hold (4 decimals).
  ours = soundscapes.run(soundscapes.Inputs(
      audio=dataset["audio"], annotations=dataset["csv"],
      output=str(tmp_path / "api"), species_map=dataset["map"]),
      soundscapes.Settings(bootstrap=0), predictor=predictor)
  files = inference.find_audio(dataset["audio"])
  truth = soundscapes.annotations_lib.read_annotations(
      dataset["csv"], files, soundscapes.durations(files)[0])
  expected = soundscapes.evaluate(_rounded(ours.scores), truth, ours.mapping,
                                  soundscapes.Settings(bootstrap=0))
  rows = {r["species"]: r for r in _csv(out / soundscapes.PER_SPECIES_FILE)}
  for row in expected.per_species:
    for key in ("window_ap", "window_auroc", "file_ap", "threshold"):
      if row.get(key) is not None and not np.isnan(row[key]):
        assert float(rows[row["species"]][key]) == pytest.approx(
            row[key], rel=1e-5), (row["species"], key)
  assert m["levels"]["window"]["no_prior"]["cmap"] == pytest.approx(
      expected.metrics["levels"]["window"]["no_prior"]["cmap"], abs=1e-12)


# -- Bad flags: one line each, before any work ---------------------------------

REQUIRED = ("--audio=a", "--annotations=b", "--output=c")


@pytest.mark.parametrize("args, message", [
    ((*REQUIRED,), "give --model or --predictions (one of them)"),
    ((*REQUIRED, "--model=m", "--predictions=p"),
     "give --model or --predictions (one of them)"),
    (("--model=m", "--annotations=b", "--output=c"),
     "Flag --audio must have a value other than None"),
    ((*REQUIRED, "--model=m", "--latitude=200", "--longitude=0"),
     "(200.0, 0.0) is outside latitude -90..90, longitude -180..180"),
    ((*REQUIRED, "--model=m", "--latitude=10"),
     "give both --latitude and --longitude, or neither"),
    ((*REQUIRED, "--model=m", "--window_seconds=3"),
     "--window_seconds applies to --predictions"),
    ((*REQUIRED, "--model=m", "--min_overlap=1.5"),
     "flag --min_overlap=1.5: give a fraction in [0, 1]"),
    ((*REQUIRED, "--model=m", "--target_precision=0"),
     "flag --target_precision=0.0: give a precision in (0, 1]"),
    ((*REQUIRED, "--model=m", "--bootstrap=1"),
     "flag --bootstrap=1: give 0 (no intervals) or 2 or more resamples"),
    ((*REQUIRED, "--model=m", "--segment_seconds=-5"),
     "flag --segment_seconds=-5.0: give a segment longer than 0 s"),
    ((*REQUIRED, "--predictions=p", "--hop_seconds=0"),
     "flag --hop_seconds=0.0: give a hop longer than 0 s"),
    ((*REQUIRED, "--model=m", "--batch_size=0"),
     "flag --batch_size=0: give 1 or more windows per call"),
])
def test_a_bad_flag_is_refused_at_parsing(args, message):
  flag_values = flags.FlagValues()
  evaluate.define_flags(flag_values)
  with pytest.raises(flags.Error) as e:
    flag_values(["evaluate", *args])
  assert message in str(e.value)


def test_good_flags_become_the_runs_inputs_and_settings():
  flag_values = flags.FlagValues()
  evaluate.define_flags(flag_values)
  flag_values(["evaluate", *REQUIRED, "--predictions=p", "--bootstrap=0",
               "--segment_seconds=5", "--window_seconds=3"])
  inputs, settings = evaluate.options(flag_values)
  assert (inputs.predictions, inputs.model, inputs.window_seconds) == (
      "p", "", 3.0)
  assert (settings.bootstrap, settings.segment_seconds, settings.level) == (
      0, 5.0, "segment")


def test_the_command_ends_a_bad_flag_in_one_error_line(dataset, tmp_path):
  out = tmp_path / "out"
  result = _evaluate("--model=m", f"--audio={dataset['audio']}",
                     f"--annotations={dataset['csv']}", f"--output={out}",
                     "--min_overlap=2")
  assert "--min_overlap=2.0: give a fraction in [0, 1]" in _error_line(result)
  assert not out.exists()


def test_nothing_to_evaluate_ends_in_one_error_line_with_status_1(
    workdir, dataset, tmp_path):
  out = tmp_path / "out"
  result = _evaluate(f"--model={workdir}", f"--audio={dataset['audio']}",
                     f"--annotations={dataset['raven']}", f"--output={out}")
  line = _error_line(result)
  assert "nothing to evaluate: no annotated species is a label" in line
  assert "--species_map" in line
  assert (out / soundscapes.MAPPING_FILE).exists()
