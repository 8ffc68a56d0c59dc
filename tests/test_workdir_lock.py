"""One run at a time in a folder: refused in one line, never a stale lock."""

import json
import os
import signal
import subprocess
import sys

import pytest

from inatsounds_jax import registry
from inatsounds_jax import workdir_lock

HOLD = """
import sys, time
from inatsounds_jax import workdir_lock
with workdir_lock.hold(sys.argv[1], "training", "--workdir"):
  print("held", flush=True)
  time.sleep(300)
"""


def _hold_in_another_process(folder):
  """A process holding `folder` (it says so before returning)."""
  proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)],
                          stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline() == "held\n"
  return proc


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
  with workdir_lock.hold(tmp_path, "training", "--workdir"):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(workdir_lock.FolderInUseError) as e:
      with workdir_lock.hold(tmp_path, "prediction", "--output"):
        pass
    assert os.listdir(tmp_path / "checkpoints") == []
  assert isinstance(e.value, registry.ConfigError)
  assert e.value.holder["pid"] == os.getpid()
  message = str(e.value)
  assert "\n" not in message
  assert message.startswith(f"{tmp_path} is in use by another run (training, "
                            f"pid {os.getpid()} on ")
  assert message.endswith("wait for it to end or stop it, or give another "
                          "--output")


def test_a_killed_holder_leaves_the_lock_free(tmp_path):
  proc = _hold_in_another_process(tmp_path)
  with pytest.raises(workdir_lock.FolderInUseError, match=f"pid {proc.pid} "):
    with workdir_lock.hold(tmp_path, "training", "--workdir"):
      pass
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  # Its lock file stays behind, a name the next run takes over.
  assert os.path.exists(tmp_path / workdir_lock.LOCK_FILE)
  with workdir_lock.hold(tmp_path, "training", "--workdir"):
    with open(tmp_path / workdir_lock.LOCK_FILE) as f:
      assert json.load(f)["pid"] == os.getpid()


def test_a_hold_leaves_the_folder_as_it_was(tmp_path):
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "notes.txt").write_text("mine")
  with workdir_lock.hold(tmp_path / "mine", "training", "--workdir"):
    assert sorted(os.listdir(tmp_path / "mine")) == [workdir_lock.LOCK_FILE,
                                                     "notes.txt"]
  assert os.listdir(tmp_path / "mine") == ["notes.txt"]
  # A folder it made is removed again if the run left nothing in it.
  with workdir_lock.hold(tmp_path / "new" / "run", "training", "--workdir"):
    assert os.path.isdir(tmp_path / "new" / "run")
  assert not os.path.exists(tmp_path / "new")
  with workdir_lock.hold(tmp_path / "kept", "training", "--workdir"):
    (tmp_path / "kept" / "config.json").write_text("{}")
  assert os.listdir(tmp_path / "kept") == ["config.json"]


def test_a_folder_that_cannot_be_made_is_refused_in_one_line(tmp_path):
  (tmp_path / "a_file").write_text("")
  with pytest.raises(workdir_lock.FolderNotWritableError,
                     match=r"cannot create .*a_file/run \(Not a directory\); "
                     "give a --workdir in a folder you can write"):
    with workdir_lock.hold(tmp_path / "a_file" / "run", "training",
                           "--workdir"):
      pass
  with pytest.raises(workdir_lock.FolderNotWritableError,
                     match="is a file, not a folder"):
    with workdir_lock.hold(tmp_path / "a_file", "training", "--workdir"):
      pass


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_folder_is_refused_before_any_work(tmp_path):
  tmp_path.chmod(0o555)
  try:
    with pytest.raises(workdir_lock.FolderNotWritableError,
                       match=f"cannot write in {tmp_path}"):
      with workdir_lock.hold(tmp_path, "training", "--workdir"):
        pass
  finally:
    tmp_path.chmod(0o755)


def test_a_cloud_folder_is_not_locked(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with workdir_lock.hold("gs://bucket/run", "training", "--workdir"):
    with workdir_lock.hold("gs://bucket/run", "training", "--workdir"):
      pass
  assert not os.listdir(tmp_path)  # Never taken for a local path.
