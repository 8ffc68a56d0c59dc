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

import json
import os
from typing import Any

from etils import epath

PathLike = str | os.PathLike


def is_uri(path: PathLike) -> bool:
  """Whether `path` names remote storage (`gs://...`), not a local file."""
  return "://" in os.fspath(path)


def resolve(path: PathLike) -> epath.Path:
  """`path` as an `epath.Path`: local paths absolute (orbax needs them so,
  and messages then say where files went), URIs as given."""
  return epath.Path(path if is_uri(path) else os.path.abspath(path))


def write_json(path: PathLike, value: Any, **dump_options) -> None:
  """`value` as indented JSON at `path` (local or URI), its folder made."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(value, indent=1, **dump_options))


def read_json(path: PathLike) -> Any:
  return json.loads(epath.Path(path).read_text())

