"""Matplotlib set up for writing figures to files (no display needed)."""


def pyplot():
  """`matplotlib.pyplot` on the file-only Agg backend (imported on use)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def save(fig, path: str, dpi: int = 120) -> str:
  """Writes and closes `fig`; returns `path`."""
  fig.savefig(path, dpi=dpi, bbox_inches="tight")
  pyplot().close(fig)
  return path
