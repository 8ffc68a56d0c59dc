"""A stand-in for Google Cloud Storage: `gs://BUCKET/...` in a local folder.

`fake_gcs(root, monkeypatch)` serves `gs://` paths from `root/BUCKET/...`
for the three ways files reach a bucket from this library:

- `etils.epath` (the library's own files, and orbax's folder operations):
  through epath's own test hook, `epath.testing.mock_epath`, with epath's
  TensorFlow backend turned off (as `EPATH_USE_TF=0` would; it would bypass
  the hook);
- orbax's array writes: tensorstore would open `gs://` with its GCS driver,
  so orbax's path normalisation maps the URI to the local folder (its file
  driver then writes there), and orbax's "is this GCS?" and "hierarchical
  namespace bucket?" tests say no, so it takes its file-system code paths
  (renames and listings through epath) rather than calls to the
  `google.cloud.storage` client;
- TensorBoard (`clu.metric_writers` over `tf.io.gfile`): the writer is
  created on the mapped local folder, since TensorFlow's GCS file system
  cannot be redirected.

What this checks: every path the library builds stays a URI (no
`os.path.abspath`, `open` or `os.makedirs` on it, which would silently make
a local `gs:` folder), and what it writes can be read back from the bucket.
What it cannot check: GCS itself (TensorFlow's and tensorstore's GCS
clients, credentials, eventual listing).
"""

import contextlib
import os

from clu import metric_writers
from etils.epath import gpath as epath_gpath
from etils.epath import testing as epath_testing
from orbax.checkpoint._src.path import gcs_utils
from orbax.checkpoint._src.serialization import tensorstore_utils

from inatsounds_jax import checkpoints

PREFIX = "gs://"


@contextlib.contextmanager
def fake_gcs(root, monkeypatch):
  """Within the context, `gs://B/x` is `root/B/x` (see the module doc)."""
  root = os.fspath(root)

  def path_is_remote(path):
    return os.fspath(path).startswith(PREFIX)

  def local(path):
    path = os.fspath(path)
    return (os.path.join(root, path[len(PREFIX):])
            if path_is_remote(path) else path)

  def remote(path):
    path = os.fspath(path)
    return (PREFIX + os.path.relpath(path, root)
            if path.startswith(root + os.sep) else path)

  def one_path(original, path, *args, **kwargs):
    return original(local(path), *args, **kwargs)

  def open_object(original, path, mode):
    # GCS has no folders: an object can be written under any prefix.
    if path_is_remote(path) and mode[0] in "wa":
      os.makedirs(os.path.dirname(local(path)), exist_ok=True)
    return original(local(path), mode)

  def two_paths(original, path, dst, *args, **kwargs):
    return original(local(path), local(dst), *args, **kwargs)

  def glob(original, pattern):
    return [remote(p) for p in original(local(pattern))]

  def walk(original, top, **kwargs):
    for folder, dirs, files in original(local(top), **kwargs):
      yield remote(folder), dirs, files

  # What EPATH_USE_TF=0 decides, set where epath reads it: it caches "is
  # TensorFlow installed?" on first use, which an earlier test in this
  # process may have made.
  monkeypatch.setattr(epath_gpath, "_is_tf_installed", lambda: False)
  normalize = tensorstore_utils._normalize_path  # pylint: disable=protected-access
  monkeypatch.setattr(tensorstore_utils, "_normalize_path",
                      lambda path: normalize(local(path)))
  monkeypatch.setattr(gcs_utils, "is_gcs_path", lambda path: False)
  # Orbax then never calls the client, so the library need not refuse the
  # bucket for lack of it.
  monkeypatch.setattr(checkpoints, "has_bucket_client", lambda: True)
  monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled",
                      lambda path: False)
  create_writer = metric_writers.create_default_writer
  monkeypatch.setattr(
      metric_writers, "create_default_writer",
      lambda logdir, **kwargs: create_writer(local(logdir), **kwargs))
  with epath_testing.mock_epath(
      open=open_object, exists=one_path, isdir=one_path, listdir=one_path,
      makedirs=one_path, mkdir=one_path, remove=one_path, rmtree=one_path,
      stat=one_path, copy=two_paths, rename=two_paths, replace=two_paths,
      glob=glob, walk=walk):
    yield
