"""Export never deletes a user's files, and a damaged bundle is refused whole.

The refusals are checked through the command line, where users meet them,
and every byte the user had is compared after the refusal.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from inatsounds_jax import export
from inatsounds_jax import trained as trained_lib

import model_workdir


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return model_workdir.make_workdir(str(tmp_path_factory.mktemp("model")))


def snapshot(folder) -> dict[str, bytes]:
  """Every file under `folder` by relative path, with its bytes."""
  root = pathlib.Path(folder)
  return {p.relative_to(root).as_posix(): p.read_bytes()
          for p in sorted(root.rglob("*")) if p.is_file()}


def run_export(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, "-m", "inatsounds_jax.export", *args],
      capture_output=True, text=True, timeout=300)


def one_error_line(result: subprocess.CompletedProcess) -> str:
  assert result.returncode != 0
  lines = [line for line in result.stderr.splitlines()
           if line.startswith("error:")]
  assert len(lines) == 1, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  return lines[0]


def test_a_tflite_batch_without_tflite_is_refused(workdir, tmp_path):
  line = one_error_line(run_export(f"--workdir={workdir}",
                                   f"--out={tmp_path / 'bundle'}",
                                   "--tflite_batch=8"))
  assert "--tflite_batch needs --tflite" in line
  assert not os.listdir(tmp_path)


def test_a_folder_of_the_users_files_is_refused_and_kept(workdir, tmp_path):
  target = tmp_path / "notes"
  target.mkdir()
  (target / "notes.txt").write_text("field notes, 3 May")
  (target / "labels.csv").write_text("mine")  # A bundle name, not a bundle.
  before = snapshot(target)
  line = one_error_line(run_export(f"--workdir={workdir}",
                                   f"--out={target}"))
  assert "notes.txt" in line and "not an earlier bundle" in line
  assert snapshot(target) == before
  assert sorted(os.listdir(tmp_path)) == ["notes"]  # No scratch left.


@pytest.mark.parametrize("where", ["workdir", "parent"])
def test_the_workdir_or_a_folder_holding_it_is_refused(workdir, where):
  target = workdir if where == "workdir" else os.path.dirname(workdir)
  before = snapshot(target)
  line = one_error_line(run_export(f"--workdir={workdir}",
                                   f"--out={target}"))
  assert "training workdir" in line
  assert snapshot(target) == before


def test_an_earlier_bundle_is_replaced_only_with_overwrite(workdir, tmp_path):
  out = tmp_path / "bundle"
  export.export_bundle(workdir, str(out))
  first = snapshot(out)
  with pytest.raises(export.TargetError, match="--overwrite"):
    export.export_bundle(workdir, str(out))
  assert snapshot(out) == first
  result = run_export(f"--workdir={workdir}", f"--out={out}", "--overwrite")
  assert result.returncode == 0, result.stderr[-2000:]
  assert sorted(os.listdir(out)) == sorted(os.listdir(tmp_path / "bundle"))
  assert sorted(os.listdir(tmp_path)) == ["bundle"]  # Nothing set aside.
  assert trained_lib.read_bundle(str(out)).step == 1


def test_an_unwritable_target_fails_before_any_work(workdir, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a folder")
  line = one_error_line(run_export(f"--workdir={workdir}",
                                   f"--out={blocker}/bundle"))
  assert "cannot write" in line and str(blocker) in line
  assert blocker.read_text() == "not a folder"


@pytest.fixture(scope="module")
def bundle(workdir, tmp_path_factory):
  out = tmp_path_factory.mktemp("bundles") / "bundle"
  export.export_bundle(workdir, str(out))
  return out


def damaged_copy(bundle, tmp_path, name: str) -> pathlib.Path:
  """A copy of `bundle` whose file `name` (a relative path) lost its last
  half."""
  copy = tmp_path / "damaged"
  subprocess.run(["cp", "-r", str(bundle), str(copy)], check=True)
  path = copy / name
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  return copy


def test_the_bundle_records_every_files_size_and_checksum(bundle):
  recorded = json.loads((bundle / trained_lib.BUNDLE_CONFIG_FILE).read_text()
                        )["files"]
  assert recorded == trained_lib.file_digests(bundle)
  assert trained_lib.EXPORTED_FILE in recorded
  assert any(name.startswith(trained_lib.VARIABLES_DIR + "/")
             for name in recorded)


def test_a_truncated_export_artefact_is_refused(bundle, tmp_path):
  copy = damaged_copy(bundle, tmp_path, trained_lib.EXPORTED_FILE)
  for load in (export.load_exported, export.load, trained_lib.load):
    with pytest.raises(trained_lib.BundleError,
                       match=rf"{trained_lib.EXPORTED_FILE} has \d+ bytes"):
      load(str(copy))


def test_a_truncated_variables_shard_is_one_clear_line(bundle, tmp_path):
  shard = max((name for name in trained_lib.file_digests(bundle)
               if name.startswith(trained_lib.VARIABLES_DIR + "/")),
              key=lambda name: (bundle / name).stat().st_size)
  copy = damaged_copy(bundle, tmp_path, shard)
  result = subprocess.run(
      [sys.executable, "-m", "inatsounds_jax.predict", f"--model={copy}",
       f"--input={model_workdir.bird_wav()}", f"--output={tmp_path / 'out'}"],
      capture_output=True, text=True, timeout=300)
  line = one_error_line(result)
  assert "damaged" in line and shard in line
