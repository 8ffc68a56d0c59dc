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

`read_predictions` reads prediction folders back, ours and
BirdNET-Analyzer's, for judging them on annotations
(`soundscapes.score_predictions`): Raven selection tables
(`*.selection.table.txt`, with `Species` or BirdNET's `Species Code` and
`Common Name`), CSVs (`*.results.csv`), BirdNET-Analyzer's
`*.results.r.csv` and `*.results.kaleidoscope.csv`, and the combined
tables only where no per-recording table exists (else every row would
count twice). A table's recording is the one its path under the folder
names without the table suffix, else the one each row's file column names
(`annotations.RecordingIndex` matching). Species codes and common names of
tables without a scientific name go through a species map; BirdNET's
`nocall` rows name no species. Damaged tables and rows are reported as
`annotations.Problem`s, the rest read.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import math
import os
import shutil
import zipfile
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from inatsounds_jax import annotations as annotations_lib
from inatsounds_jax import registry
from inatsounds_jax import storage


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
  """A file written under `path + storage.PARTIAL_SUFFIX` and renamed when
  complete: `storage.writing_whole` for a file whose writing outlives one
  block (prediction keeps a table per format open across a recording's
  batches, and the parquet and npz writers need a local path, not an
  open file).

  So a file that exists under its name is complete: a run killed part way
  leaves only a `.partial` file, which the next run overwrites.
  """

  def __init__(self, path: str):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    self.path = path
    self.tmp = path + storage.PARTIAL_SUFFIX

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


def read_errors(output: str) -> list[tuple[str, str, str]]:
  """The rows of `output`'s errors.tsv (none if there is none)."""
  path = os.path.join(output, ERRORS_FILE)
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    rows = [line.rstrip("\n").split("\t") for line in f][1:]
  return [tuple(row) for row in rows if len(row) == len(ERRORS_COLUMNS)]


def write_errors(output: str, errors: list[tuple[str, str, str]]) -> None:
  """`errors.tsv` in the folder `output`: one row per recording that failed
  or was clipped (`ERRORS_COLUMNS`), tabs and newlines in a reason made
  spaces."""
  with open(os.path.join(output, ERRORS_FILE), "w", encoding="utf-8") as f:
    f.write("\t".join(ERRORS_COLUMNS) + "\n")
    for row in errors:
      f.write("\t".join(x.replace("\t", " ").replace("\n", " ")
                        for x in row) + "\n")


# ---------------------------------------------------------------------------
# Reading prediction tables back: ours and BirdNET-Analyzer's.
# ---------------------------------------------------------------------------

# Rows and windows closer than this (seconds) are the same time.
TIME_TOLERANCE_S = 1e-3


class PredictionTablesError(ValueError):
  """A prediction folder or file that cannot be read at all (one line)."""


# Column spellings of prediction tables, matched case-insensitively with
# `_` as a space; the first found wins. Ours are RAVEN_COLUMNS and
# CSV_COLUMNS; BirdNET-Analyzer's Raven table has `Species Code`
# and `Common Name`, its r table `filepath,start,end,scientific_name,
# common_name,confidence`, its Kaleidoscope table `IN FILE,OFFSET,DURATION,
# scientific_name,common_name,confidence`.
PREDICTION_COLUMNS = {
    "start": ("Begin Time (s)", "Start (s)", "start", "OFFSET"),
    "end": ("End Time (s)", "End (s)", "end"),
    "duration": ("DURATION",),
    "file_offset": ("File Offset (s)",),
    "scientific": ("Species", "Scientific name"),
    "code": ("Species Code",),
    "common": ("Common Name",),
    "confidence": ("Confidence", "Score"),
    "file": ("Begin Path", "File", "filepath", "Begin File", "IN FILE"),
}
# Per-recording tables, in the order one is chosen where a recording has
# several: our formats (FORMATS), then BirdNET-Analyzer's others.
TABLE_SUFFIXES = (FORMATS.get("raven").suffix,
                  FORMATS.get("csv").suffix,
                  ".BirdNET.results.r.csv",
                  ".BirdNET.results.kaleidoscope.csv")
# Tables covering many recordings, read only where there is no
# per-recording table (else every row would count twice).
COMBINED_TABLES = (COMBINED_CSV, "BirdNET_SelectionTable.txt",
                   "BirdNET_RTable.csv", "BirdNET_Kaleidoscope.csv")
NO_CALL = "nocall"


def _column_key(name: str) -> str:
  return " ".join(name.replace("_", " ").casefold().split())


def species_key(name: str) -> str:
  return " ".join(name.casefold().split())


@dataclasses.dataclass(frozen=True)
class PredictionTable:
  """A prediction table's file and layout."""
  path: str
  shown: str
  delimiter: str
  columns: dict[str, int]
  width: int
  recording: str | None  # The recording its file name names.


@dataclasses.dataclass(frozen=True)
class PredictionRow:
  recording: str
  start_s: float
  end_s: float
  label: str  # The label's species name.
  common_name: str
  confidence: float


@dataclasses.dataclass
class PredictionTables:
  """Prediction tables found and checked (`read_predictions`).

  Attributes:
    source: the folder or file.
    tables: the tables to read, in order.
    labels: the species they name, in order of appearance.
    window_s, hop_s: the windows' length and hop, and where each came
      from (`window_from`, `hop_from`: flag, settings.json, rows, assumed).
    settings: the folder's settings.json (predict wrote it), or None.
    complete: whether settings.json shows that every (window, label) score
      is in the tables; None where unknown.
    problems: tables and rows not used, and why.
    notes: sentences for the report.
    recording_index, durations_s, species_map: what reading the rows
      needs.
  """
  source: str
  tables: list[PredictionTable]
  labels: list[dict]
  window_s: float
  hop_s: float
  window_from: str
  hop_from: str
  settings: dict | None
  complete: bool | None
  problems: list[annotations_lib.Problem]
  notes: list[str]
  recording_index: object  # annotations' name matching, for the rows.
  durations_s: dict[str, float]
  species_map: annotations_lib.SpeciesMap | None


def _table_files(source: str) -> tuple[list[str], list[str]]:
  """(per-recording tables, combined tables) under a folder, sorted."""
  per_recording, combined = [], []
  lowered = tuple(s.lower() for s in TABLE_SUFFIXES)
  for root, dirs, names in os.walk(source):
    dirs.sort()
    for name in sorted(names):
      path = os.path.join(root, name)
      if name.lower().endswith(lowered):
        per_recording.append(path)
      elif name in COMBINED_TABLES:
        combined.append(path)
  return per_recording, combined


def _table_recording_name(relative: str) -> str:
  for suffix in TABLE_SUFFIXES:
    if relative.lower().endswith(suffix.lower()):
      return relative[:-len(suffix)]
  return os.path.splitext(relative)[0]


def _read_text(path: str, shown: str,
               problems: list[annotations_lib.Problem]) -> str | None:
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    problems.append(annotations_lib.Problem(
        shown, None, f"cannot be read: {e.strerror or e}", "unreadable file"))
    return None
  if b"\0" in data:
    problems.append(annotations_lib.Problem(
        shown, None, "holds NUL bytes: not a text table (damaged)",
        "damaged table"))
    return None
  try:
    return data.decode("utf-8-sig")
  except UnicodeDecodeError:
    return data.decode("cp1252", errors="replace")


def _rows_of(text: str, delimiter: str) -> Iterable[tuple[int, list[str]]]:
  reader = csv.reader(text.splitlines(), delimiter=delimiter)
  for cells in reader:
    if any(c.strip() for c in cells):
      yield reader.line_num, cells


def _open_table(path: str, shown: str, name: str, index,
                problems: list[annotations_lib.Problem]
                ) -> PredictionTable | None:
  """A table's layout, or None (and a problem)."""
  text = _read_text(path, shown, problems)
  if text is None:
    return None
  first = next((line for line in text.splitlines() if line.strip()), "")
  if not first:
    problems.append(annotations_lib.Problem(
        shown, None, "is empty: not even a header", "empty file"))
    return None
  delimiter = "\t" if "\t" in first else ","
  header = [c.strip() for c in next(csv.reader([first],
                                               delimiter=delimiter))]
  position = {}
  for i, cell in enumerate(header):
    position.setdefault(_column_key(cell), i)
  columns = {}
  for role, spellings in PREDICTION_COLUMNS.items():
    found = [position[_column_key(s)] for s in spellings
             if _column_key(s) in position]
    if found:
      columns[role] = found[0]
  missing = [what for what, ok in (
      ("a start time (Begin Time (s), Start (s), start)", "start" in columns),
      ("an end time (End Time (s), End (s), end)",
       "end" in columns or "duration" in columns),
      ("a species (Species, Scientific name, Species Code, Common Name)",
       any(r in columns for r in ("scientific", "code", "common"))),
      ("a confidence (Confidence)", "confidence" in columns)) if not ok]
  if missing:
    problems.append(annotations_lib.Problem(
        shown, None, f"unknown prediction table layout: found {header}; "
        "expected " + ", ".join(missing), "unknown columns"))
    return None
  recording = index.find(name)[0] if name else None
  if recording is None and "file" not in columns:
    problems.append(annotations_lib.Problem(
        shown, None, f"its name ({name!r}) names none of the recordings, "
        "and it has no file column (one of "
        f"{', '.join(PREDICTION_COLUMNS['file'])})", "no recording"))
    return None
  return PredictionTable(path, shown, delimiter, columns, len(header),
                         recording)


def _parse_number(cell: str) -> float | None:
  try:
    value = float(cell)
  except ValueError:
    return None
  return value if math.isfinite(value) else None


class PredictionRowReader:
  """Rows of prediction tables as `PredictionRow`s, bad ones as problems."""

  def __init__(self, index, durations: dict[str, float],
               species_map: annotations_lib.SpeciesMap | None):
    self.index, self.durations = index, durations
    self.species_map = species_map
    self.no_calls = 0

  def label(self, cells: list[str], columns: dict[str, int]
            ) -> tuple[str, str] | None:
    """(label species name, common name) of a row; None for `nocall`."""
    sci, code, common = (_cell(cells, columns.get(r))
                         for r in ("scientific", "code", "common"))
    if NO_CALL in (species_key(sci), species_key(code),
                   species_key(common)):
      return None
    mapped = None
    if self.species_map is not None:
      mapped = next((self.species_map.get(x) for x in (code, common)
                     if x and self.species_map.get(x)), None)
    return (sci or mapped or code or common), common

  def rows(self, table: PredictionTable,
           problems: list[annotations_lib.Problem] | None
           ) -> Iterable[PredictionRow]:
    """The table's rows; bad ones are added to `problems` (None: skipped
    silently)."""
    text = _read_text(table.path, table.shown, [])
    if text is None:
      return
    columns = table.columns
    unknown: dict[str, list[int]] = {}
    lines = _rows_of(text, table.delimiter)
    next(lines, None)  # The header.

    def bad(line, kind, reason):
      if problems is not None:
        problems.append(annotations_lib.Problem(table.shown, line, reason,
                                                kind))

    for line, cells in lines:
      recording = table.recording
      if recording is None:
        written = _cell(cells, columns["file"])
        recording = self.index.find(written)[0] if written else None
        if recording is None:
          unknown.setdefault(written, [line, 0])[1] += 1
          continue
      if len(cells) < table.width:
        bad(line, "bad row", f"has {len(cells)} cells; the header has "
            f"{table.width} (a damaged or shifted line)")
        continue
      species = self.label(cells, columns)
      if species is None:
        self.no_calls += 1
        continue
      if not species[0]:
        bad(line, "no species", "has no species")
        continue
      row = self._times(cells, columns)
      if isinstance(row, str):
        bad(line, "bad time", row)
        continue
      start, end = row
      confidence = _parse_number(_cell(cells, columns["confidence"]))
      if confidence is None or not 0.0 <= confidence <= 1.0:
        bad(line, "bad confidence", "confidence "
            f"{_cell(cells, columns['confidence'])!r} is not a probability "
            "in [0, 1]")
        continue
      duration = self.durations.get(recording, math.nan)
      if not math.isnan(duration):
        if start >= duration - TIME_TOLERANCE_S:
          bad(line, "past the end", f"starts at {start:g} s, at or past the "
              f"end of {recording} (duration {duration:g} s)")
          continue
        end = min(end, duration)
      yield PredictionRow(recording, start, end, species[0], species[1],
                          confidence)
    for written, (line, count) in unknown.items():
      bad(line, "unknown recording", f"recording {written!r} ({count} "
          f"rows) {self.index.find(written)[2] or 'is not named'}")

  @staticmethod
  def _times(cells, columns) -> tuple[float, float] | str:
    start_cell = _cell(cells, columns["start"])
    start = _parse_number(start_cell)
    if "end" in columns:
      end_cell = _cell(cells, columns["end"])
      end = _parse_number(end_cell)
    else:
      end_cell = _cell(cells, columns["duration"])
      length = _parse_number(end_cell)
      end = None if length is None or start is None else start + length
    if start is None or end is None:
      return f"time {start_cell!r} .. {end_cell!r} is not a number"
    offset = _parse_number(_cell(cells, columns.get("file_offset")))
    if offset is not None:  # A table of many files: times in each file.
      start, end = offset, offset + (end - start)
    if end <= start or start < 0:
      return f"window {start:g} .. {end:g} s is not a time span in the file"
    return start, end


def _cell(cells: Sequence[str], column: int | None) -> str:
  if column is None or column >= len(cells):
    return ""
  return cells[column].strip()


def _read_settings(source: str) -> dict | None:
  path = os.path.join(source, SETTINGS_FILE)
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      settings = json.load(f)
  except (OSError, ValueError):
    return None
  return settings if isinstance(settings, dict) else None


def read_predictions(source: str, audio_files: Sequence[tuple[str, str]],
                     durations_s: Sequence[float], *,
                     window_seconds: float | None = None,
                     hop_seconds: float | None = None,
                     species_map: annotations_lib.SpeciesMap | None = None
                     ) -> PredictionTables:
  """Finds prediction tables, checks their layouts, collects their labels.

  Args:
    source: a folder of tables (recursive), or one table.
    audio_files: (path, relative path) of the recordings (`find_audio`).
    durations_s: their durations (NaN: unknown).
    window_seconds, hop_seconds: the windows, instead of settings.json's
      or the rows'.
    species_map: turns species codes and common names of tables without a
      scientific name into scientific names.

  Raises:
    PredictionTablesError: no such folder or file, or no table in it.
  """
  relatives = [r for _, r in audio_files]
  index = annotations_lib.RecordingIndex(relatives)
  durations = dict(zip(relatives, durations_s))
  problems: list[annotations_lib.Problem] = []
  notes: list[str] = []
  settings = None
  if os.path.isdir(source):
    settings = _read_settings(source)
    per_recording, combined = _table_files(source)
    paths = per_recording or combined
    if per_recording and combined:
      notes.append(f"{len(combined)} combined tables "
                   f"({', '.join(os.path.basename(c) for c in combined)}) "
                   "not read: the per-recording tables hold their rows")
    names = [_table_recording_name(os.path.relpath(p, source))
             if per_recording else "" for p in paths]
  elif os.path.isfile(source):
    paths = [source]
    names = [_table_recording_name(os.path.basename(source))]
  else:
    raise PredictionTablesError(f"{source}: no such file or "
                               "folder")
  if not paths:
    raise PredictionTablesError(
        f"{source}: no prediction tables (*"
        + ", *".join(TABLE_SUFFIXES) + ", or " + ", ".join(COMBINED_TABLES)
        + ") in this folder")
  found: list[PredictionTable] = []
  chosen: dict[str, PredictionTable] = {}
  skipped = 0
  for path, name in sorted(zip(paths, names), key=lambda pn: _rank(pn[0])):
    table = _open_table(path, os.path.relpath(path, source)
                        if os.path.isdir(source) else path, name, index,
                        problems)
    if table is None:
      continue
    if table.recording is not None:
      if table.recording in chosen:
        skipped += 1
        continue
      chosen[table.recording] = table
    found.append(table)
  if skipped:
    notes.append(f"{skipped} tables not read: their recordings had a table "
                 "earlier in the order " + ", ".join(TABLE_SUFFIXES))
  reader = PredictionRowReader(index, durations, species_map)
  labels: dict[str, dict] = {}
  lengths: collections.Counter = collections.Counter()
  windows_per_table = []
  for table in found:
    windows = set()
    for row in reader.rows(table, None):
      key = species_key(row.label)
      if key not in labels:
        labels[key] = {"species": row.label, "common_name": row.common_name}
      windows.add((row.recording, round(row.start_s, 3),
                   round(row.end_s, 3)))
    for _, start, end in windows:
      lengths[round(end - start, 3)] += 1
    windows_per_table.append(windows)
  window_s, window_from = _choose(
      window_seconds, settings, "window_seconds",
      lengths.most_common(1)[0][0] if lengths else None)
  hop_s, hop_from = _choose(hop_seconds, settings, "hop_seconds",
                            _smallest_step(windows_per_table, window_s))
  if hop_s is None:
    hop_s, hop_from = window_s, "assumed: no overlap"
  if window_s is None:
    raise PredictionTablesError(
        f"{source}: no table has a row to take the window "
        "length from; give the window length (--window_seconds)")
  complete = None
  if settings is not None and "min_confidence" in settings:
    complete = (settings.get("min_confidence") == 0
                and not settings.get("top_k")
                and not settings.get("species_list")
                and not settings.get("geo_filter"))
  return PredictionTables(
      source, found, list(labels.values()), float(window_s), float(hop_s),
      window_from, hop_from, settings, complete, problems, notes, index,
      durations, species_map)


def _rank(path: str) -> tuple[int, str]:
  """Tables in the order of TABLE_SUFFIXES, then by path."""
  lowered = path.lower()
  return (next((i for i, s in enumerate(TABLE_SUFFIXES)
                if lowered.endswith(s.lower())), len(TABLE_SUFFIXES)), path)


def _choose(flag: float | None, settings: dict | None, key: str,
            from_rows: float | None) -> tuple[float | None, str]:
  if flag is not None:
    return flag, "flag"
  if settings and isinstance(settings.get(key), (int, float)):
    return float(settings[key]), SETTINGS_FILE
  return from_rows, "rows"


def _smallest_step(windows_per_table: Sequence[set], window_s: float | None
                   ) -> float | None:
  """The smallest step between consecutive starts of full-length windows of
  one recording: the hop, where two neighbouring windows both hold a row."""
  if window_s is None:
    return None
  steps = []
  for windows in windows_per_table:
    by_recording = collections.defaultdict(set)
    for recording, start, end in windows:
      if abs(end - start - window_s) <= TIME_TOLERANCE_S:
        by_recording[recording].add(start)
    for starts in by_recording.values():
      diffs = np.diff(sorted(starts))
      diffs = diffs[diffs > TIME_TOLERANCE_S]
      if len(diffs):
        steps.append(float(diffs.min()))
  return min(steps) if steps else None
