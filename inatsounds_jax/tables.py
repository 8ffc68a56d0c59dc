"""Prediction files in the formats bioacoustics users already read.

- `raven`: a Raven Pro selection table per recording
  (`<stem>.BirdNET.selection.table.txt`, tab-separated), one selection per
  detection; `View` is `Spectrogram 1`, `Channel` 1, the frequency band is
  the model's (its mel filterbank's edges), and `File Offset (s)` repeats the
  begin time (one file per table). Raven reads the selection columns by name.
- `csv`: BirdNET-Analyzer's CSV per recording (`<stem>.BirdNET.results.csv`:
  `Start (s),End (s),Scientific name,Common name,Confidence,File`), and the
  combined CSV over all recordings (`BirdNET_CombinedTable.csv`).
- Embedding files per recording (`npz` or `parquet`): window times,
  embeddings and logits, for downstream and few-shot work.

With a geographic prior every detection row carries the prior's presence
probability for its species at the recording's location (`Geo Prior` /
`Geo prior`; empty where unknown). Every file is written to a temporary
name and renamed, so a file that exists is complete.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Callable, Sequence

import numpy as np

from inatsounds_jax import registry


@dataclasses.dataclass(frozen=True)
class Detection:
  """One species in one window."""
  start_s: float
  end_s: float
  species: str
  common_name: str
  confidence: float
  file: str
  geo_prior: float | None = None  # None: no prior; NaN: unknown there.


@dataclasses.dataclass(frozen=True)
class Band:
  """The frequency band written into Raven selections (Hz)."""
  low_hz: float
  high_hz: float


def _number(x: float, digits: int = 4) -> str:
  return "" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def _atomic_write_rows(path: str, header: Sequence[str],
                       rows: Sequence[Sequence[str]], delimiter: str) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = path + ".partial"
  with open(tmp, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
  os.replace(tmp, path)


# ---------------------------------------------------------------------------
# Raven selection tables.
# ---------------------------------------------------------------------------

RAVEN_COLUMNS = ("Selection", "View", "Channel", "Begin Time (s)",
                 "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)", "Species",
                 "Common Name", "Confidence", "Begin Path", "File Offset (s)")


def write_raven(path: str, detections: Sequence[Detection], band: Band,
                with_prior: bool) -> None:
  header = RAVEN_COLUMNS + (("Geo Prior",) if with_prior else ())
  rows = []
  for i, d in enumerate(detections, start=1):
    row = [str(i), "Spectrogram 1", "1", _number(d.start_s),
           _number(d.end_s), _number(band.low_hz, 1),
           _number(band.high_hz, 1), d.species, d.common_name,
           _number(d.confidence), d.file, _number(d.start_s)]
    if with_prior:
      row.append(_number(d.geo_prior))
    rows.append(row)
  _atomic_write_rows(path, header, rows, "\t")


# ---------------------------------------------------------------------------
# BirdNET CSV.
# ---------------------------------------------------------------------------

CSV_COLUMNS = ("Start (s)", "End (s)", "Scientific name", "Common name",
               "Confidence", "File")
COMBINED_CSV = "BirdNET_CombinedTable.csv"


def write_csv(path: str, detections: Sequence[Detection], band: Band,
              with_prior: bool) -> None:
  del band
  header = CSV_COLUMNS + (("Geo prior",) if with_prior else ())
  rows = [[_number(d.start_s), _number(d.end_s), d.species, d.common_name,
           _number(d.confidence), d.file]
          + ([_number(d.geo_prior)] if with_prior else [])
          for d in detections]
  _atomic_write_rows(path, header, rows, ",")


def combine_csv(per_file_paths: Sequence[str], out_path: str) -> int:
  """Concatenates per-recording CSVs (same header) into one; returns rows."""
  header, rows = None, []
  for path in per_file_paths:
    with open(path, newline="", encoding="utf-8") as f:
      reader = csv.reader(f)
      header = next(reader)
      rows.extend(reader)
  if header is not None:
    _atomic_write_rows(out_path, header, rows, ",")
  return len(rows)


def read_table(path: str) -> list[dict]:
  """Rows of a written Raven table (tab) or CSV (comma) as dicts."""
  with open(path, newline="", encoding="utf-8") as f:
    delimiter = "\t" if path.endswith(".txt") else ","
    return list(csv.DictReader(f, delimiter=delimiter))


@dataclasses.dataclass(frozen=True)
class Format:
  """A per-recording output: its file-name suffix and its writer."""
  suffix: str
  write: Callable[[str, Sequence[Detection], Band, bool], None]


FORMATS: registry.Registry[Format] = registry.Registry("output format")
FORMATS.add("raven", Format(".BirdNET.selection.table.txt", write_raven))
FORMATS.add("csv", Format(".BirdNET.results.csv", write_csv))


# ---------------------------------------------------------------------------
# Embeddings.
# ---------------------------------------------------------------------------

def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
  tmp = path + ".partial.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def write_parquet(path: str, arrays: dict[str, np.ndarray]) -> None:
  """One row per window; 2-D arrays become fixed-size list columns."""
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  columns = {}
  for name, value in arrays.items():
    if value.ndim == 2:
      columns[name] = pa.FixedSizeListArray.from_arrays(
          pa.array(value.reshape(-1)), value.shape[1])
    else:
      columns[name] = pa.array(value)
  tmp = path + ".partial"
  pq.write_table(pa.table(columns), tmp)
  os.replace(tmp, path)


def read_embeddings(path: str) -> dict[str, np.ndarray]:
  """The arrays of an embeddings file written by either writer."""
  if path.endswith(".npz"):
    with np.load(path) as data:
      return {k: data[k] for k in data.files}
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  table = pq.read_table(path)
  return {name: np.stack(table[name].to_numpy(zero_copy_only=False))
          if pa.types.is_fixed_size_list(table[name].type)
          else table[name].to_numpy() for name in table.column_names}


@dataclasses.dataclass(frozen=True)
class EmbeddingFormat:
  suffix: str
  write: Callable[[str, dict[str, np.ndarray]], None]


EMBEDDING_FORMATS: registry.Registry[EmbeddingFormat] = registry.Registry(
    "embeddings format")
EMBEDDING_FORMATS.add("npz", EmbeddingFormat(".embeddings.npz", write_npz))
EMBEDDING_FORMATS.add("parquet", EmbeddingFormat(".embeddings.parquet",
                                                 write_parquet))
