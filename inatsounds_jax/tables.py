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
name and renamed, so a file that exists is complete; tables and embedding
files are written incrementally (rows appended as windows are classified),
so nothing of a recording's size is held in memory.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import math
import os
import shutil
import zipfile
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


class PartialFile:
  """A file written under `path + ".partial"` and renamed when complete.

  So a file that exists under its name is complete: a run killed part way
  leaves only a `.partial` file, which the next run overwrites.
  """

  def __init__(self, path: str):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    self.path = path
    self.tmp = path + ".partial"

  def _close(self) -> None:
    """Flushes and closes what the subclass has open."""

  def commit(self) -> None:
    self._close()
    os.replace(self.tmp, self.path)

  def discard(self) -> None:
    self._close()
    if os.path.exists(self.tmp):
      os.remove(self.tmp)


class _DelimitedFile(PartialFile):
  """A partial file of delimited rows, its header written at once."""

  def __init__(self, path: str, header: Sequence[str], delimiter: str):
    super().__init__(path)
    self._file = open(self.tmp, "w", newline="", encoding="utf-8")  # pylint: disable=consider-using-with
    self._writer = csv.writer(self._file, delimiter=delimiter,
                              lineterminator="\n")
    self._writer.writerow(header)

  def write_row(self, row: Sequence[str]) -> None:
    self._writer.writerow(row)

  def _close(self) -> None:
    self._file.close()


@dataclasses.dataclass(frozen=True)
class Format:
  """A per-recording detection table: its file-name suffix and layout.

  Attributes:
    suffix: appended to the recording's stem.
    delimiter: tab or comma.
    header: the column names (with or without the prior's column).
    cells: the row of the `number`-th detection (from 1).
  """
  suffix: str
  delimiter: str
  header: Callable[[bool], Sequence[str]]
  cells: Callable[[int, Detection, Band, bool], list[str]]

  def open(self, path: str, band: Band, with_prior: bool) -> DetectionWriter:
    return DetectionWriter(path, self, band, with_prior)


class DetectionWriter(_DelimitedFile):
  """A detection table filled as windows are classified (`add` rows in
  order), complete under its name only after `commit`."""

  def __init__(self, path: str, table_format: Format, band: Band,
               with_prior: bool):
    super().__init__(path, table_format.header(with_prior),
                     table_format.delimiter)
    self._format, self._band, self._with_prior = (table_format, band,
                                                  with_prior)
    self.rows = 0

  def add(self, detections: Sequence[Detection]) -> None:
    for d in detections:
      self.rows += 1
      self.write_row(self._format.cells(self.rows, d, self._band,
                                        self._with_prior))


# ---------------------------------------------------------------------------
# Raven selection tables.
# ---------------------------------------------------------------------------

RAVEN_COLUMNS = ("Selection", "View", "Channel", "Begin Time (s)",
                 "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)", "Species",
                 "Common Name", "Confidence", "Begin Path", "File Offset (s)")


def _raven_header(with_prior: bool) -> tuple[str, ...]:
  return RAVEN_COLUMNS + (("Geo Prior",) if with_prior else ())


def _raven_cells(number: int, d: Detection, band: Band,
                 with_prior: bool) -> list[str]:
  return ([str(number), "Spectrogram 1", "1", _number(d.start_s),
           _number(d.end_s), _number(band.low_hz, 1),
           _number(band.high_hz, 1), d.species, d.common_name,
           _number(d.confidence), d.file, _number(d.start_s)]
          + ([_number(d.geo_prior)] if with_prior else []))


# ---------------------------------------------------------------------------
# BirdNET CSV.
# ---------------------------------------------------------------------------

CSV_COLUMNS = ("Start (s)", "End (s)", "Scientific name", "Common name",
               "Confidence", "File")
COMBINED_CSV = "BirdNET_CombinedTable.csv"
# Beside a prediction folder's tables: every setting of the run that made
# them (the resume check, and how soundscape evaluation reads the tables),
# and each recording that failed or was clipped (file, kind, reason).
SETTINGS_FILE = "settings.json"
ERRORS_FILE = "errors.tsv"


def _csv_header(with_prior: bool) -> tuple[str, ...]:
  return CSV_COLUMNS + (("Geo prior",) if with_prior else ())


def _csv_cells(number: int, d: Detection, band: Band,
               with_prior: bool) -> list[str]:
  del number, band
  return ([_number(d.start_s), _number(d.end_s), d.species, d.common_name,
           _number(d.confidence), d.file]
          + ([_number(d.geo_prior)] if with_prior else []))


def combine_csv(per_file_paths: Sequence[str], out_path: str) -> int:
  """Concatenates per-recording CSVs (same header) into one, row by row;
  returns the rows written."""
  out, rows = None, 0
  for path in per_file_paths:
    with open(path, newline="", encoding="utf-8") as f:
      reader = csv.reader(f)
      header = next(reader)
      if out is None:
        out = _DelimitedFile(out_path, header, ",")
      for row in reader:
        out.write_row(row)
        rows += 1
  if out is not None:
    out.commit()
  return rows


def _delimiter(path: str) -> str:
  return "\t" if path.endswith(".txt") else ","


def read_table(path: str) -> list[dict]:
  """Rows of a written Raven table (tab) or CSV (comma) as dicts."""
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f, delimiter=_delimiter(path)))


def count_rows(path: str) -> int:
  """Detections in a written Raven table or CSV (rows after the header)."""
  with open(path, newline="", encoding="utf-8") as f:
    return max(0, sum(1 for _ in csv.reader(f, delimiter=_delimiter(path)))
               - 1)


FORMATS: registry.Registry[Format] = registry.Registry("output format")
FORMATS.add("raven", Format(".BirdNET.selection.table.txt", "\t",
                            _raven_header, _raven_cells))
FORMATS.add("csv", Format(".BirdNET.results.csv", ",", _csv_header,
                          _csv_cells))


# ---------------------------------------------------------------------------
# Embeddings.
# ---------------------------------------------------------------------------

class NpzWriter(PartialFile):
  """An `.npz` of per-window arrays appended chunk by chunk.

  Each array's rows go to a raw file on disk as they come; `commit` writes
  the archive (uncompressed, as `np.savez`) from those files, so no whole
  array is ever in memory.
  """

  def __init__(self, path: str):
    super().__init__(path)
    self._raw: dict[str, tuple[str, np.dtype, tuple[int, ...]]] = {}
    self._rows = 0

  def add(self, arrays: dict[str, np.ndarray]) -> None:
    for name, value in arrays.items():
      if name not in self._raw:
        self._raw[name] = (f"{self.tmp}.{name}", value.dtype,
                           value.shape[1:])
        open(self._raw[name][0], "wb").close()
      raw, dtype, _ = self._raw[name]
      with open(raw, "ab") as f:
        f.write(np.ascontiguousarray(value, dtype).tobytes())
    self._rows += len(next(iter(arrays.values())))

  def commit(self) -> None:
    with zipfile.ZipFile(self.tmp, "w", zipfile.ZIP_STORED,
                         allowZip64=True) as archive:
      for name, (raw, dtype, row_shape) in self._raw.items():
        with archive.open(name + ".npy", "w", force_zip64=True) as out:
          np.lib.format.write_array_header_1_0(out, {
              "descr": np.lib.format.dtype_to_descr(dtype),
              "fortran_order": False,
              "shape": (self._rows, *row_shape)})
          with open(raw, "rb") as f:
            shutil.copyfileobj(f, out)
    self._remove_raw()
    super().commit()

  def discard(self) -> None:
    self._remove_raw()
    super().discard()

  def _remove_raw(self) -> None:
    for raw, _, _ in self._raw.values():
      if os.path.exists(raw):
        os.remove(raw)


class ParquetWriter(PartialFile):
  """One row per window, appended chunk by chunk (a row group each); 2-D
  arrays become fixed-size list columns."""

  def __init__(self, path: str):
    super().__init__(path)
    self._writer = None

  def add(self, arrays: dict[str, np.ndarray]) -> None:
    import pyarrow as pa  # pylint: disable=import-outside-toplevel
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
    columns = {}
    for name, value in arrays.items():
      if value.ndim == 2:
        columns[name] = pa.FixedSizeListArray.from_arrays(
            pa.array(value.reshape(-1)), value.shape[1])
      else:
        columns[name] = pa.array(value)
    table = pa.table(columns)
    if self._writer is None:
      self._writer = pq.ParquetWriter(self.tmp, table.schema)
    self._writer.write_table(table)

  def _close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


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
  """A per-recording embeddings file: its suffix and its (incremental)
  writer, `open(path)` -> `add(arrays)`... `commit()` or `discard()`."""
  suffix: str
  open: Callable[[str], NpzWriter | ParquetWriter]


EMBEDDING_FORMATS: registry.Registry[EmbeddingFormat] = registry.Registry(
    "embeddings format")
EMBEDDING_FORMATS.add("npz", EmbeddingFormat(".embeddings.npz", NpzWriter))
EMBEDDING_FORMATS.add("parquet", EmbeddingFormat(".embeddings.parquet",
                                                 ParquetWriter))


# ---------------------------------------------------------------------------
# A recording's files.
# ---------------------------------------------------------------------------

def output_names(relatives: Sequence[str]) -> list[str]:
  """Each recording's output name, from its path relative to the input: the
  path without its extension, or with it where that name is not unique
  (compared ignoring case, as some file systems do), so no two recordings
  share a file."""
  stems = [os.path.splitext(r)[0] for r in relatives]
  taken = collections.Counter(n.lower() for n in stems + list(relatives))
  return [stem if taken[stem.lower()] == 1 else relative
          for stem, relative in zip(stems, relatives)]


def output_paths(stem: str, formats: Sequence[str], embeddings: str
                 ) -> dict[str, str]:
  """{format name: path} of a recording's files: `stem` (a path without
  suffix) with the suffix of each table format and of the embeddings
  format ("": none)."""
  paths = {name: stem + FORMATS.get(name).suffix for name in formats}
  if embeddings:
    paths[embeddings] = stem + EMBEDDING_FORMATS.get(embeddings).suffix
  return paths


class RecordingFiles:
  """One recording's files (`output_paths`), filled chunk by chunk: rows
  and per-window arrays are appended as windows are classified, and the
  files get their names (`commit`) only when the recording is done.

  Attributes:
    detections: the rows added so far.
  """

  def __init__(self, paths: dict[str, str], band: Band, with_prior: bool):
    self.tables = [FORMATS.get(name).open(path, band, with_prior)
                   for name, path in paths.items() if name in FORMATS]
    self.embeddings = next((EMBEDDING_FORMATS.get(name).open(path)
                            for name, path in paths.items()
                            if name in EMBEDDING_FORMATS), None)
    self.detections = 0

  def _files(self) -> list[PartialFile]:
    return self.tables + ([self.embeddings] if self.embeddings else [])

  def add(self, rows: Sequence[Detection], arrays: dict[str, np.ndarray]
          ) -> None:
    """Appends detection rows to the tables, `arrays` (window times,
    embeddings, logits) to the embeddings file."""
    for writer in self.tables:
      writer.add(rows)
    self.detections += len(rows)
    if self.embeddings:
      self.embeddings.add(arrays)

  def commit(self) -> None:
    for f in self._files():
      f.commit()

  def discard(self) -> None:
    for f in self._files():
      f.discard()


ERRORS_COLUMNS = ("file", "kind", "reason")


def write_errors(output: str, errors: list[tuple[str, str, str]]) -> None:
  """`errors.tsv` in the folder `output`: one row per recording that failed
  or was clipped (`ERRORS_COLUMNS`), tabs and newlines in a reason made
  spaces."""
  with open(os.path.join(output, ERRORS_FILE), "w", encoding="utf-8") as f:
    f.write("\t".join(ERRORS_COLUMNS) + "\n")
    for row in errors:
      f.write("\t".join(x.replace("\t", " ").replace("\n", " ")
                        for x in row) + "\n")
