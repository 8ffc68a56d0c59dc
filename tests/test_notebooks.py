"""The Colab notebooks in `colab/`: clean in the repository, and each runs
top to bottom on CPU with small settings injected after its `parameters`
cell (papermill's convention), Colab-only cells skipped by their guard."""

import json
import os
import pathlib

import nbclient
import nbformat
import pytest

from tests import model_workdir

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "colab").glob("*.ipynb"))
COLAB_ONLY = ("from google.colab", "git clone", "pip\", \"install",
              "run_line_magic")


def code_cells(path):
  return [c for c in nbformat.read(path, as_version=4).cells
          if c.cell_type == "code"]


def test_every_notebook_exists_with_a_badge_in_the_readme():
  assert [p.name for p in NOTEBOOKS] == [
      "agile_modelling.ipynb", "predict_and_export.ipynb",
      "quickstart.ipynb", "train_inatsounds.ipynb"]
  readme = (REPO / "README.md").read_text()
  for path in NOTEBOOKS:
    assert (f"colab.research.google.com/github/<org>/inatsounds_jax/blob/"
            f"main/colab/{path.name}") in readme


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_spectrograms_are_drawn_with_the_highest_band_on_top(path):
  # The frontend's images hold the highest mel band in row 0, so imshow's
  # default origin ("upper") draws them the right way up; "lower" would
  # show every call upside down.
  for cell in code_cells(path):
    assert 'origin="lower"' not in cell.source, (path.name, cell.source)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stripped_parameterised_and_guards_colab_cells(path):
  cells = code_cells(path)
  for cell in cells:
    assert cell.outputs == [] and cell.execution_count is None, (
        "outputs not stripped")
  assert sum("parameters" in c.metadata.get("tags", []) for c in cells) == 1
  for cell in cells:
    if any(marker in cell.source for marker in COLAB_ONLY):
      guarded = [line for line in cell.source.splitlines()
                 if line.startswith("if IN_COLAB")]
      assert guarded, f"unguarded Colab-only cell:\n{cell.source}"


def run(path, parameters: dict, cwd=REPO):
  """Executes `path` with `parameters` injected; returns the notebook."""
  nb = nbformat.read(path, as_version=4)
  index = next(i for i, c in enumerate(nb.cells)
               if "parameters" in c.metadata.get("tags", []))
  injected = nbformat.v4.new_code_cell("\n".join(
      f"{k} = {v!r}" for k, v in parameters.items()))
  injected.metadata["tags"] = ["injected-parameters"]
  nb.cells.insert(index + 1, injected)
  env_backup = dict(os.environ)
  os.environ["PYTHONPATH"] = str(REPO)
  os.environ["MPLBACKEND"] = "Agg"
  try:
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}}
                            ).execute()
  finally:
    os.environ.clear()
    os.environ.update(env_backup)
  return nb


def outputs_text(nb) -> str:
  return "\n".join(json.dumps(c.get("outputs", [])) for c in nb.cells)


TINY = {"NUM_SPECIES": 6, "NUM_RECORDINGS": 36}
# The schedule and batch of test_every_shipped_config_runs_a_step: the same
# train step, whose compiled program then comes from the tests' shared XLA
# cache (compiling it is most of a notebook's time on CPU).
ONE_STEP = 0.5


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, data_dir):
  nb = run(REPO / "colab" / "quickstart.ipynb", dict(
      WORKDIR=str(tmp_path / "run"), DATA_DIR=data_dir,
      NUM_EPOCHS=ONE_STEP, BATCH_SIZE=32, RANGE_EPOCHS=5, **TINY))
  text = outputs_text(nb)
  assert "ceiling" in text and "image/png" in text
  assert (tmp_path / "run" / "range_model" / "range_maps.png").exists()


@pytest.mark.slow
def test_train_notebook_runs_on_the_synthetic_corpus(tmp_path, data_dir):
  nb = run(REPO / "colab" / "train_inatsounds.ipynb", dict(
      WORKDIR=str(tmp_path / "run"), DATA_DIR=data_dir,
      VARIANT="tiny", NUM_EPOCHS=ONE_STEP, RANGE_EPOCHS=2))
  assert "mean prior" in outputs_text(nb).replace("  ", " ")
  assert (tmp_path / "run" / "range_model" / "range_results.json").exists()


@pytest.mark.slow
def test_predict_and_export_notebook_runs(tmp_path):
  recordings = tmp_path / "recordings"
  recordings.mkdir()
  os.symlink(model_workdir.bird_wav(), recordings / "birds.wav")
  workdir = model_workdir.make_workdir(str(tmp_path / "model"))
  nb = run(REPO / "colab" / "predict_and_export.ipynb", dict(
      MODEL=workdir, RECORDINGS=str(recordings),
      OUTPUT=str(tmp_path / "out"), BUNDLE=str(tmp_path / "bundle"),
      MIN_CONFIDENCE=0.0))
  assert "bundle and workdir agree: True" in outputs_text(nb)


@pytest.mark.slow
def test_agile_modelling_notebook_runs_two_rounds(tmp_path):
  nb = run(REPO / "colab" / "agile_modelling.ipynb", dict(
      WORKDIR=str(tmp_path / "agile"), NUM_SPECIES=6, NUM_RECORDINGS=48,
      SEARCH_K=12, NEXT_WINDOWS=6, STEPS=100))
  assert "round 2:" in outputs_text(nb)
  for name in ("round_1", "round_2"):
    assert (tmp_path / "agile" / name / "model" / "config.json").exists()
