"""One run at a time in a folder: a lock held for as long as a run uses it.

    with workdir_lock.hold(workdir, "training", "--workdir"):
      ...  # Nothing else started with `hold` uses `workdir` meanwhile.

Two runs writing into one folder at once (a training started twice into one
workdir, two predictions into one output folder) would interleave their
files: checkpoints of one run restored by the other, results written over
each other. `hold` makes the second one stop before any work with
`FolderInUseError`, which names the run holding the folder.

The lock is `fcntl.flock` on `LOCK_FILE` inside the folder. The operating
system releases it when the holding process ends, however it ends (a crash,
SIGKILL, a lost machine's process on its own disk), so there is never a
stale lock to clear by hand; a file left behind by a killed holder is only
a name, taken over by the next run. The holder writes its pid, host, start
time and purpose into the file for the message of a refused run, and
removes the file when it is done, so that a finished run leaves its folder
as the run left it.

Limits: only local folders are locked. A `gs://` folder is not (Cloud
Storage has no lock a crashed holder releases; `hold` passes it through
unlocked). On a network file system `flock` is as good as the file system
makes it; where it is not supported at all, `hold` warns and goes on
unlocked. A lock is held by an open file, so a child process forked while
it is held (not spawned) holds it too until that child ends.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator

from absl import logging

from inatsounds_jax import registry
from inatsounds_jax import storage

# In the locked folder; hidden, so listings of a folder's results skip it.
LOCK_FILE = ".inatsounds_jax.lock"


class FolderInUseError(registry.ConfigError):
  """Another process holds the folder (`hold`); the message names it.

  Attributes:
    holder: what the holding process wrote into the lock file (`pid`,
      `host`, `what`, `since`, `command`); empty when it could not be read
      (the holder was just starting).
  """

  def __init__(self, message: str, holder: dict):
    super().__init__(message)
    self.holder = holder


class FolderNotWritableError(registry.ConfigError):
  """The folder cannot be created, or a file cannot be created in it."""


@contextlib.contextmanager
def hold(folder: storage.PathLike, what: str, flag: str) -> Iterator[None]:
  """Holds `folder` for this process while the `with` block runs.

  The folder is created if missing (and removed again at the end if it is
  then still empty, so a run refused at start-up leaves nothing behind);
  creating the lock file in it is also the check that the folder can be
  written, before any work.

  Args:
    folder: a local folder, or a `gs://` URI (not locked: see the module
      docstring).
    what: the run's purpose for another run's refusal ("training",
      "prediction").
    flag: the command-line flag that names the folder ("--workdir"), for
      what to do in the messages.

  Raises:
    FolderInUseError: another process holds the folder; nothing was written.
    FolderNotWritableError: the folder cannot be created or written.
  """
  if storage.is_uri(folder):
    yield
    return
  folder = os.path.abspath(os.fspath(folder))
  created = _make_folders(folder, flag)
  try:
    fd = _acquire(folder, what, flag)
  except BaseException:
    _remove_empty(created)
    raise
  try:
    yield
  finally:
    if fd is not None:
      _release(fd, os.path.join(folder, LOCK_FILE))
    _remove_empty(created)


def _make_folders(folder: str, flag: str) -> list[str]:
  """Creates `folder` and missing parents; returns those created, deepest
  first."""
  missing, parent = [], folder
  while not os.path.lexists(parent):
    missing.append(parent)
    parent = os.path.dirname(parent)
  if not os.path.isdir(folder) and not missing:
    raise FolderNotWritableError(
        f"{flag}={folder} is a file, not a folder; give a folder")
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise FolderNotWritableError(
        f"cannot create {folder} ({_reason(e)}); give a {flag} in a "
        "folder you can write") from e
  return missing


def _remove_empty(folders: list[str]) -> None:
  for path in folders:  # Deepest first; stops at the first one in use.
    try:
      os.rmdir(path)
    except OSError:
      return


def _acquire(folder: str, what: str, flag: str) -> int | None:
  """The open, locked lock file (None where the file system cannot lock)."""
  path = os.path.join(folder, LOCK_FILE)
  while True:
    try:
      fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise FolderNotWritableError(
          f"cannot write in {folder} ({_reason(e)}); give a {flag} in a "
          "folder you can write") from e
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read_holder(fd)
      os.close(fd)
      raise FolderInUseError(_in_use_message(folder, holder, flag),
                             holder) from None
    except OSError as e:  # ENOLCK, EOPNOTSUPP: no flock on this file system.
      _release(fd, path)
      logging.warning("Cannot lock %s (%s): nothing stops another run from "
                      "using it at the same time.", folder, _reason(e))
      return None
    # The previous holder removes the file before it lets go: a lock taken
    # on the removed file guards nothing, so take the current file's.
    if _same_file(fd, path):
      break
    os.close(fd)
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps({
      "pid": os.getpid(), "host": socket.gethostname(), "what": what,
      "since": datetime.datetime.now().astimezone().isoformat(
          timespec="seconds"),
      "command": " ".join(sys.argv)}).encode(), 0)
  return fd


def _same_file(fd: int, path: str) -> bool:
  try:
    here, there = os.fstat(fd), os.stat(path)
  except FileNotFoundError:
    return False
  return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _release(fd: int, path: str) -> None:
  """Removes the lock file, then lets go (the order `_acquire` relies on)."""
  try:
    os.unlink(path)
  except OSError:
    pass  # Left behind, it is only a name: the next run takes it over.
  os.close(fd)


def _read_holder(fd: int) -> dict:
  try:
    holder = json.loads(os.pread(fd, 1 << 16, 0) or b"{}")
  except (OSError, ValueError):
    return {}
  return holder if isinstance(holder, dict) else {}


def _in_use_message(folder: str, holder: dict, flag: str) -> str:
  who = f"pid {holder.get('pid', 'unknown')}"
  if holder.get("host"):
    who += f" on {holder['host']}"
  if holder.get("since"):
    who += f", since {holder['since']}"
  return (f"{folder} is in use by another run "
          f"({holder.get('what') or 'starting'}, {who}): wait for it to end "
          f"or stop it, or give another {flag}")


def _reason(e: OSError) -> str:
  return e.strerror or errno.errorcode.get(e.errno or 0, str(e))
