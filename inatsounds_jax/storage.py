"""Workdirs, range-model folders and bundles: local or on cloud storage.

Every file the library itself reads or writes in a workdir, a range-model
folder or an exported bundle goes through `etils.epath`, the file-system
layer orbax uses too: a local path, or a `gs://` URI, which epath serves
through TensorFlow's file systems. Checkpoints (orbax) and
TensorBoard logs (`tf.io.gfile`) reach the same storage through their own
libraries. Never `open`/`os.path` a workdir path: that silently makes a
local folder named `gs:` instead.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import IO, Any, Iterator

from etils import epath

PathLike = str | os.PathLike
# What a file is called while it is being written (`writing_whole`,
# `tables.PartialFile`): a file under its own name is always complete.
PARTIAL_SUFFIX = ".partial"


def is_uri(path: PathLike) -> bool:
  """Whether `path` names remote storage (`gs://...`), not a local file."""
  return "://" in os.fspath(path)


def resolve(path: PathLike) -> epath.Path:
  """`path` as an `epath.Path`: local paths absolute (orbax needs them so,
  and messages then say where files went), URIs as given."""
  return epath.Path(path if is_uri(path) else os.path.abspath(path))


@contextlib.contextmanager
def writing_whole(path: PathLike, mode: str = "w",
                  **open_options) -> Iterator[IO]:
  """Streams a file into being at `path` (local or URI), its folder made,
  so that it appears whole or not at all: yields `path + PARTIAL_SUFFIX`
  open in `mode`, renamed over `path` when the block ends normally and
  removed when it raises. A run killed mid-write leaves the previous file
  (a checkpointed run's `eval_results.json`, say) as it was, and at worst
  a `.partial` file that the next write replaces. Streaming keeps memory
  flat for files as long as a release's window scores."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  partial = path.with_name(path.name + PARTIAL_SUFFIX)
  try:
    with partial.open(mode, **open_options) as f:
      yield f
  except BaseException:
    partial.unlink(missing_ok=True)
    raise
  partial.replace(path)


def write_whole(path: PathLike, data: bytes | str) -> None:
  """Writes `data` at `path` whole or not at all (`writing_whole`)."""
  text = isinstance(data, str)
  with writing_whole(path, "w" if text else "wb",
                     **({"encoding": "utf-8"} if text else {})) as f:
    f.write(data)


def write_json(path: PathLike, value: Any, **dump_options) -> None:
  """`value` as indented JSON at `path` (local or URI), written whole
  (`write_whole`)."""
  write_whole(path, json.dumps(value, indent=1, **dump_options))


def read_json(path: PathLike) -> Any:
  return json.loads(epath.Path(path).read_text())

