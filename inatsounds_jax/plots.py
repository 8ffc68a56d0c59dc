"""Matplotlib set up for writing figures to files (no display needed)."""

import io

from inatsounds_jax import storage


def pyplot():
  """`matplotlib.pyplot` on the file-only Agg backend (imported on use)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def save(fig, path: str, dpi: int = 120) -> str:
  """Writes `fig` as PNG at `path` (local or `gs://`, written whole:
  `storage.write_whole`), closes it; returns `path`."""
  # Through a buffer: matplotlib writes only local files, epath also URIs.
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
  storage.write_whole(path, buffer.getvalue())
  pyplot().close(fig)
  return path
