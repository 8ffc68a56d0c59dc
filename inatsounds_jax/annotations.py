"""Strongly annotated soundscapes as ecologists hold them.

The ground truth of soundscape evaluation: the iNatSounds paper's transfer
to strongly labelled soundscapes such as Powdermill and SSW (Chasmai et al.
2025, s.5.2), which BirdSet (Rauch et al., arXiv:2403.10380) and Perch
score by class-mean AP. This module reads the annotations, matches them to
the recordings and to a model's labels, and turns events into window- or
segment-level truth; `metrics.py` scores it. It reads no audio: the caller
gives the recordings (as `predict.find_audio` lists them) and their
durations.

Layouts read (`read_annotations`):

- Raven selection tables, tab-separated, one per recording, named
  `<recording stem>.Table.1.selections.txt`, `<stem>.selections.txt` or
  `<stem>.txt`, beside the audio or in a folder of their own (matched by
  the path under that folder, then by stem); or a Raven table naming its
  recordings in `Begin File` / `Begin Path` and covering many. When a table
  shows a selection in several views (`View`: Waveform 1, Spectrogram 1),
  the first row of each `Selection` number is the event.
- One CSV for the whole set, Powdermill / SSW style (`Filename`,
  `Start Time (s)`, `End Time (s)`, `Low Freq (Hz)`, `High Freq (Hz)`,
  `Species eBird Code`).

Both are one reader: the delimiter is a tab if the header has one, else a
comma; columns are found by name, case-insensitively, from ordered lists
of spellings (`COLUMN_SPELLINGS`); the species column can be forced. A
row's recording is its recording column's cell where there is one, else the
recording its table's file name names. Names are matched to the audio by
relative path (also a path ending in it, e.g. an annotator's absolute
`Begin Path`), then by file name, then by stem, case-insensitively; a name
matching several recordings at the first level that matches is a problem.
In a multi-recording Raven table a row's start within its recording is
`File Offset (s)` (Raven's `Begin Time (s)` counts from the start of the
file sequence), its end that plus the selection's length.

Which recordings are evaluated (`Annotations.annotated`):

- a recording named by a readable table (its file name or any row) is
  annotated; its events are its truth and every other time is negative;
- a table with a header and no rows, or a CSV row naming a recording with
  empty times and species, annotates that recording with no events: every
  window is negative for every species;
- a recording no table names is "not annotated" (`not_annotated`): absent
  annotations are not evidence of absence, so it is left out, unless the
  caller says the set annotates every recording (a CSV of events only,
  where recordings without calls have no rows);
- a recording whose rows were all rejected is left out too (scoring it as
  silence would count every call in it as a miss), with a problem saying
  so; one with some rows rejected is kept, and the report lists the rows.

Bad input never stops the rest: every unreadable, empty or damaged file,
unknown column layout, unknown or ambiguous recording and bad row becomes a
`Problem` (file, row, reason), written by `write_problems`.

Window truth (`overlap_truth`): a window is positive for a species when an
event of that species overlaps it by at least `min_overlap` times the
shorter of the window and the event, and by more than nothing. So with
`min_overlap` = 0.5 a call covering half of a 3-s window counts, and so does
a 0.2-s call lying wholly inside it (it is all there to hear); a call that
ends exactly where a window starts does not. `min_overlap` = 0 (the
default) is any overlap, as the library's strong labels are made
(`input_pipeline`: a call overlaps a window when it starts before the
window ends and ends after it starts).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import functools
import io
import math
import os
import re
from collections.abc import Iterable, Sequence

import numpy as np

from inatsounds_jax import registry

# Column spellings, matched after `_normalise` (case, `_`/`-` as spaces),
# first match wins: so `Species` beats `Common Name` in a table with both.
COLUMN_SPELLINGS = {
    "recording": ("Begin Path", "Begin File", "Filename", "File Name",
                  "File", "Recording", "Recording Name", "Audio File",
                  "File Path", "Path", "Soundscape"),
    "start": ("Begin Time (s)", "Start Time (s)", "Start (s)", "Begin (s)",
              "Start_s", "Begin_s", "Start Time", "Begin Time", "Start",
              "Begin", "Onset", "T_Start"),
    "end": ("End Time (s)", "End (s)", "End_s", "End Time", "End", "Stop",
            "Offset", "T_End"),
    "low": ("Low Freq (Hz)", "Low Frequency (Hz)", "Low Freq", "Low_Hz",
            "Low Frequency", "Freq_Low", "Min Freq (Hz)", "Min Freq",
            "F_Low", "Low"),
    "high": ("High Freq (Hz)", "High Frequency (Hz)", "High Freq",
             "High_Hz", "High Frequency", "Freq_High", "Max Freq (Hz)",
             "Max Freq", "F_High", "High"),
    "species": ("Species eBird Code", "eBird Code", "Species Code",
                "Species", "Scientific Name", "Label", "Annotation",
                "Class", "Code", "Common Name", "Name"),
    "file_offset": ("File Offset (s)",),
    "selection": ("Selection",),
    "view": ("View",),
}
# Files read as tables in an annotation folder.
TABLE_EXTENSIONS = (".txt", ".tsv", ".csv")
# What a table's file name adds to its recording's stem.
_TABLE_SUFFIX = re.compile(
    r"(\.table\.\d+\.selections\.txt|(\.birdnet)?\.selections?\.table\.txt"
    r"|\.selections?\.txt|\.txt|\.tsv|\.csv)$", re.IGNORECASE)
# An event may end this far past its recording's end and be clipped without
# a problem: more than rounding (Raven writes 6 decimals, durations are whole
# samples after resampling), less than any call.
END_TOLERANCE_S = 0.01
# Times within this are equal in the overlap rule, so that rounding cannot
# make an event that ends at a window's start overlap it.
TIME_EPSILON_S = 1e-9


@dataclasses.dataclass(frozen=True)
class Event:
  """One annotated call.

  Attributes:
    recording: the recording's path relative to the audio input.
    start_s, end_s: seconds from the recording's start, end > start.
    low_hz, high_hz: the frequency band, None where not given.
    species: as written in the annotation.
    source: the annotation file; row: its line there (header = line 1).
  """
  recording: str
  start_s: float
  end_s: float
  low_hz: float | None
  high_hz: float | None
  species: str
  source: str
  row: int


@dataclasses.dataclass(frozen=True)
class Problem:
  """Something in the annotations that was not used, and why.

  Attributes:
    file: the annotation file (or recording) concerned.
    row: the line in `file` (header = 1); None for the whole file.
    reason: the sentence for the report.
    kind: a short name for the summary ("past the end", ...).
  """
  file: str
  row: int | None
  reason: str
  kind: str

  def __str__(self) -> str:
    where = self.file if self.row is None else f"{self.file}:{self.row}"
    return f"{where}: {self.reason}"


@dataclasses.dataclass(frozen=True)
class Annotations:
  """An annotated soundscape set, matched to its recordings.

  Attributes:
    events: every accepted event, in file and row order.
    annotated: relative paths of the recordings to evaluate, in the order
      the audio was given (module docstring: which are annotated).
    not_annotated: the other recordings, left out of evaluation.
    problems: everything not used, and why.
    durations_s: recording (relative path) -> duration in seconds.
  """
  events: tuple[Event, ...]
  annotated: tuple[str, ...]
  not_annotated: tuple[str, ...]
  problems: tuple[Problem, ...]
  durations_s: dict[str, float]

  @functools.cached_property
  def _events_by_recording(self) -> dict[str, np.ndarray]:
    rows = collections.defaultdict(list)
    for i, e in enumerate(self.events):
      rows[e.recording].append(i)
    return {r: np.asarray(i, np.int64) for r, i in rows.items()}

  def event_indices(self, recording: str) -> np.ndarray:
    """Indices into `events` of a recording's events."""
    return self._events_by_recording.get(recording,
                                         np.zeros(0, np.int64))

  def species_counts(self) -> collections.Counter:
    """Events per species as written."""
    return collections.Counter(e.species for e in self.events)

  def summary(self) -> str:
    """One line: events, recordings, problems by kind."""
    silent = sum(1 for r in self.annotated if not len(self.event_indices(r)))
    kinds = collections.Counter(p.kind for p in self.problems)
    problems = (f"{len(self.problems)} problems ("
                + ", ".join(f"{n} {k}" for k, n in kinds.most_common())
                + ")") if self.problems else "no problems"
    return (f"{len(self.events)} events in {len(self.annotated)} annotated "
            f"recordings ({silent} with no events), "
            f"{len(self.not_annotated)} recordings not annotated; "
            f"{problems}")


def write_problems(path: str, problems: Iterable[Problem]) -> int:
  """Writes the problems as a TSV (file, row, reason); returns how many."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  count = 0
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f, delimiter="\t", lineterminator="\n")
    writer.writerow(("file", "row", "reason"))
    for p in problems:
      writer.writerow((p.file, "" if p.row is None else p.row, p.reason))
      count += 1
  return count


# ---------------------------------------------------------------------------
# Names: columns and recordings.
# ---------------------------------------------------------------------------

def _normalise(name: str) -> str:
  return " ".join(name.replace("_", " ").replace("-", " ").casefold()
                  .split())


def _find_columns(header: Sequence[str], species_column: str | None
                  ) -> tuple[dict[str, int], list[str]]:
  """(role -> column index, what is missing) for a table's header."""
  position = {}
  for i, name in enumerate(header):
    position.setdefault(_normalise(name), i)
  found = {}
  for role, spellings in COLUMN_SPELLINGS.items():
    if role == "species" and species_column is not None:
      spellings = (species_column,)
    for spelling in spellings:
      if _normalise(spelling) in position:
        found[role] = position[_normalise(spelling)]
        break
  missing = []
  for role, what in (("start", "a start time"), ("end", "an end time"),
                     ("species", "a species")):
    if role not in found:
      spellings = ((species_column,) if role == "species" and species_column
                   else COLUMN_SPELLINGS[role])
      missing.append(f"{what} (one of {', '.join(spellings)})")
  return found, missing


def _species_key(name: str) -> str:
  """A species name or code for matching: case and runs of spaces aside,
  exact."""
  return " ".join(name.casefold().split())


def _key(name: str) -> str:
  """A recording name for matching: `/` separators, no `./`, casefolded."""
  name = name.strip().replace("\\", "/")
  while name.startswith("./"):
    name = name[2:]
  return name.casefold()


class RecordingIndex:
  """Recording names as written -> the audio's relative paths."""

  def __init__(self, relatives: Sequence[str]):
    self.size = len(relatives)
    self._found = {}
    self._levels = [collections.defaultdict(list) for _ in range(4)]
    by_path, by_path_stem, by_name, by_stem = self._levels
    for relative in relatives:
      key = _key(relative)
      name = key.rsplit("/", 1)[-1]
      by_path[key].append(relative)
      by_path_stem[os.path.splitext(key)[0]].append(relative)
      by_name[name].append(relative)
      by_stem[os.path.splitext(name)[0]].append(relative)

  def find(self, written: str) -> tuple[str | None, str, str]:
    """(relative path, "", "") or (None, problem kind, why not)."""
    if written not in self._found:
      self._found[written] = self._find(written)
    return self._found[written]

  def _find(self, written: str) -> tuple[str | None, str, str]:
    key = _key(written)
    parts = key.split("/")
    suffixes = ["/".join(parts[i:]) for i in range(len(parts))]
    name = parts[-1]
    keys = (suffixes, suffixes, [name], [name, os.path.splitext(name)[0]])
    for level, candidates in zip(self._levels, keys):
      for k in candidates:
        hits = level.get(k)
        if hits and len(hits) == 1:
          return hits[0], "", ""
        if hits:
          return None, "ambiguous recording", (
              f"matches {len(hits)} recordings ({', '.join(hits[:3])}"
              f"{', ...' if len(hits) > 3 else ''}): give its path "
              "relative to the audio folder")
    return None, "unknown recording", (
        f"is not among the {self.size} recordings (matched by relative "
        "path, file name and stem)")


# ---------------------------------------------------------------------------
# Reading.
# ---------------------------------------------------------------------------

def _number(cell: str, decimal_comma: bool) -> float | None:
  """A cell as a finite float, None if it is not one."""
  text = cell.strip()
  if decimal_comma and text.count(",") == 1 and "." not in text:
    text = text.replace(",", ".")
  try:
    value = float(text)
  except ValueError:
    return None
  return value if math.isfinite(value) else None


@dataclasses.dataclass(frozen=True)
class _Table:
  """One table being read: what every row of it needs."""
  shown: str  # The name problems give.
  header: list[str]
  columns: dict[str, int]
  recording: str | None  # The one its file name names.
  decimal_comma: bool  # Tab-separated: "1,5" is 1.5.


@dataclasses.dataclass
class _Tally:
  """What the tables said about one recording."""
  named: bool = False
  events: int = 0
  rejected: int = 0


class _Reader:
  """Reads tables into events and problems, one file at a time."""

  def __init__(self, relatives: Sequence[str], durations: Sequence[float],
               species_column: str | None):
    self.index = RecordingIndex(relatives)
    self.durations = dict(zip(relatives, durations))
    self.species_column = species_column
    self.events: list[Event] = []
    self.problems: list[Problem] = []
    self.tally = collections.defaultdict(_Tally)

  def problem(self, file: str, row: int | None, kind: str,
              reason: str) -> None:
    self.problems.append(Problem(file, row, reason, kind))

  def _text(self, path: str, shown: str) -> str | None:
    try:
      with open(path, "rb") as f:
        data = f.read()
    except OSError as e:
      self.problem(shown, None, "unreadable file", f"cannot be read: "
                   f"{e.strerror or e}")
      return None
    if b"\0" in data:
      self.problem(shown, None, "damaged table", "holds NUL bytes: not a "
                   "text table (damaged, or not a table at all)")
      return None
    try:
      text = data.decode("utf-8-sig")
    except UnicodeDecodeError:  # Saved on Windows in its ANSI code page.
      text = data.decode("cp1252", errors="replace")
    if not text.strip():
      self.problem(shown, None, "empty file", "is empty: not even a header "
                   "(a recording with no calls needs a table with a "
                   "header and no rows)")
      return None
    return text

  def read(self, path: str, shown: str, table_name: str) -> None:
    """Reads one table; `table_name` may name its recording."""
    text = self._text(path, shown)
    if text is None:
      return
    first = next(line for line in text.splitlines() if line.strip())
    delimiter = "\t" if "\t" in first else ","
    try:
      rows = list(_lines(csv.reader(io.StringIO(text), delimiter=delimiter)))
    except csv.Error as e:
      self.problem(shown, None, "damaged table", f"cannot be parsed: {e}")
      return
    if not rows:
      self.problem(shown, None, "empty file", "has no header: only empty "
                   "cells")
      return
    header = [cell.strip() for cell in rows[0][1]]
    columns, missing = _find_columns(header, self.species_column)
    table_recording, _, why = self.index.find(table_name)
    if missing:
      self.problem(shown, None, "unknown columns",
                   f"unknown column layout: found {header}; expected "
                   + ", ".join(missing))
      return
    if table_recording is None and "recording" not in columns:
      self.problem(shown, None, "no recording",
                   f"its name ({table_name!r}) {why}, and it has no "
                   "recording column (one of "
                   f"{', '.join(COLUMN_SPELLINGS['recording'])})")
      return
    if table_recording is not None:
      self.tally[table_recording].named = True
    table = _Table(shown, header, columns, table_recording,
                   delimiter == "\t")
    unknown = {}  # name -> (first row, rows)
    seen_selections = set()
    dedupe = "selection" in columns and "view" in columns
    for line, cells in rows[1:]:
      if dedupe:
        selection = _cell(cells, columns["selection"])
        if selection in seen_selections:
          continue
        seen_selections.add(selection)
      self._row(table, line, cells, unknown)
    for name, (line, count) in unknown.items():
      _, kind, reason = self.index.find(name)
      self.problem(shown, line, kind, f"recording {name!r} ({count} rows) "
                   f"{reason}")

  def _row(self, table: _Table, line: int, cells: list[str],
           unknown: dict[str, tuple[int, int]]) -> None:
    """Reads one row into an event, or a problem."""
    columns = table.columns
    written = _cell(cells, columns.get("recording"))
    recording = table.recording
    if written:
      recording = self.index.find(written)[0]
      if recording is None:
        first, count = unknown.get(written, (line, 0))
        unknown[written] = (first, count + 1)
        return
    if recording is None:
      self.problem(table.shown, line, "no recording", "names no recording "
                   "(its recording cell is empty)")
      return
    tally = self.tally[recording]
    tally.named = True
    width = len(table.header)
    if len(cells) < width or any(c.strip() for c in cells[width:]):
      self.problem(table.shown, line, "bad row", f"has {len(cells)} cells; "
                   f"the header has {width} (a damaged or shifted line)")
      tally.rejected += 1
      return
    if not any(_cell(cells, columns[role])
               for role in ("species", "start", "end")):
      return  # The recording is annotated, with nothing on this row.
    event, notes = self._event(table, line, cells, recording)
    for kind, reason in notes:
      self.problem(table.shown, line, kind, reason)
    if event is None:
      tally.rejected += 1
    else:
      tally.events += 1
      self.events.append(event)

  def _event(self, table: _Table, line: int, cells: list[str],
             recording: str) -> tuple[Event | None, list[tuple[str, str]]]:
    """(event or None, [(problem kind, reason)]) of a row."""
    columns, decimal_comma = table.columns, table.decimal_comma
    species = _cell(cells, columns["species"])
    start_cell = _cell(cells, columns["start"])
    end_cell = _cell(cells, columns["end"])
    start = _number(start_cell, decimal_comma)
    end = _number(end_cell, decimal_comma)
    if start is None or end is None:
      what, cell = (("start", start_cell) if start is None
                    else ("end", end_cell))
      return None, [("non-numeric time", f"{what} time {cell!r} is not a "
                     "number")]
    offset = _number(_cell(cells, columns.get("file_offset")),
                     decimal_comma)
    if offset is not None:
      start, end = offset, offset + (end - start)
    if not species:
      return None, [("no species", "has no species")]
    if end <= start:
      return None, [("end before start", f"ends at {end:g} s, not after "
                     f"its start at {start:g} s")]
    if start < 0:
      return None, [("before the start", f"starts at {start:g} s, before "
                     "the recording")]
    duration = self.durations[recording]
    notes = []
    if not math.isnan(duration):
      if start >= duration:
        return None, [("past the end", f"starts at {start:g} s, at or past "
                       f"the end of {recording} (duration {duration:g} s)")]
      if end > duration + END_TOLERANCE_S:
        notes.append(("past the end", f"ends at {end:g} s, past the end of "
                      f"{recording} (duration {duration:g} s): clipped to "
                      "the end"))
      end = min(end, duration)
    band = []
    for role in ("low", "high"):
      cell = _cell(cells, columns.get(role))
      value = _number(cell, decimal_comma) if cell else None
      if cell and value is None:
        notes.append(("bad frequency", f"{role} frequency {cell!r} is not "
                      "a number: left empty"))
      band.append(value)
    return Event(recording, start, end, band[0], band[1], species,
                 table.shown, line), notes

  def result(self, relatives: Sequence[str], every_recording_annotated: bool
             ) -> Annotations:
    annotated, not_annotated = [], []
    for relative in relatives:
      tally = self.tally.get(relative, _Tally())
      if tally.rejected and not tally.events:
        self.problem(relative, None, "all rows rejected",
                     f"every one of its {tally.rejected} annotation rows "
                     "was rejected: left out of the evaluation")
        not_annotated.append(relative)
      elif tally.named or every_recording_annotated:
        annotated.append(relative)
      else:
        not_annotated.append(relative)
    return Annotations(tuple(self.events), tuple(annotated),
                       tuple(not_annotated), tuple(self.problems),
                       dict(self.durations))


def _cell(cells: Sequence[str], column: int | None) -> str:
  """A cell, stripped; "" where the column or the cell is missing."""
  if column is None or column >= len(cells):
    return ""
  return cells[column].strip()


def _lines(reader) -> Iterable[tuple[int, list[str]]]:
  """(line number, cells) of each non-blank row; the header is line 1."""
  for cells in reader:
    if any(cell.strip() for cell in cells):
      yield reader.line_num, cells


def table_recording_name(relative_table_path: str) -> str:
  """The recording a table names by its file name: its path without the
  table suffix (`rec.Table.1.selections.txt` -> `rec`)."""
  return _TABLE_SUFFIX.sub("", relative_table_path.replace("\\", "/"))


def _table_files(folder: str) -> list[str]:
  """Every table under `folder`, recursively, in sorted order."""
  found = []
  for root, dirs, names in os.walk(folder):
    dirs.sort()
    found.extend(os.path.join(root, name) for name in sorted(names)
                 if name.lower().endswith(TABLE_EXTENSIONS))
  return found


def read_annotations(source: str, audio: Sequence[tuple[str, str]],
                     durations_s: Sequence[float], *,
                     species_column: str | None = None,
                     every_recording_annotated: bool = False
                     ) -> Annotations:
  """Reads a set's annotations and matches them to its recordings.

  Args:
    source: a folder (every `TABLE_EXTENSIONS` file under it, recursively,
      each naming its recording by its path there, or by a recording
      column), or one table or CSV file (rows naming their recordings, or
      its file name naming one).
    audio: (path, path relative to the audio input) per recording, as
      `predict.find_audio` returns them.
    durations_s: each recording's duration in seconds (NaN: unknown, ends
      not checked).
    species_column: the species column's name, instead of the first of
      `COLUMN_SPELLINGS["species"]` found (case-insensitive).
    every_recording_annotated: the set annotates every recording (a CSV
      of events only): recordings no row names have no events, instead of
      being left out.

  Returns:
    The annotations; every bad file and row is among their problems.

  Raises:
    registry.ConfigError: `source` does not exist, or is a folder with no
      table in it.
  """
  if len(audio) != len(durations_s):
    raise ValueError(f"{len(audio)} recordings but {len(durations_s)} "
                     "durations")
  relatives = [relative for _, relative in audio]
  reader = _Reader(relatives, durations_s, species_column)
  if os.path.isdir(source):
    found = _table_files(source)
    if not found:
      raise registry.ConfigError(
          f"annotations {source!r}: no tables "
          f"({', '.join(TABLE_EXTENSIONS)}) in this folder")
    for path in found:
      relative = os.path.relpath(path, source)
      reader.read(path, relative, table_recording_name(relative))
  elif os.path.isfile(source):
    reader.read(source, source,
                table_recording_name(os.path.basename(source)))
  else:
    raise registry.ConfigError(f"annotations {source!r}: no such file or "
                               "folder")
  return reader.result(relatives, every_recording_annotated)


# ---------------------------------------------------------------------------
# Species: annotation names -> a model's labels.
# ---------------------------------------------------------------------------

_MAP_KEYS = ("code", "ebird code", "species code", "speciescode",
             "alpha code", "banding code", "common name", "english name",
             "name", "label", "species")
_MAP_TARGETS = ("scientific name", "scientific", "sci name", "latin name",
                "species")


@dataclasses.dataclass(frozen=True)
class SpeciesMap:
  """Codes and other spellings -> scientific names, from a CSV.

  Columns: one scientific-name column (`scientific_name`, `species`, ...)
  and one or more key columns (`code`, `ebird_code`, `species_code`,
  `common_name`, ...), e.g. `code,scientific_name` or `ebird_code,species`.
  Keys match case-insensitively and exactly otherwise (eBird's `amerob`
  is `AMEROB`; no fuzzy matching of names).

  Attributes:
    scientific_of: casefolded key -> scientific name.
    path: the CSV it was read from.
  """
  scientific_of: dict[str, str]
  path: str

  @classmethod
  def read(cls, path: str) -> SpeciesMap:
    """Reads the CSV; a bad header or a key given two names raises a
    `registry.ConfigError` naming the lines."""
    try:
      with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    except OSError as e:
      raise registry.ConfigError(f"species map {path}: "
                                 f"{e.strerror or e}") from None
    header = [_normalise(c) for c in (rows[0] if rows else [])]
    target = next((header.index(t) for t in _MAP_TARGETS if t in header),
                  None)
    keys = [i for i, c in enumerate(header) if c in _MAP_KEYS and i != target]
    if target is None or not keys:
      raise registry.ConfigError(
          f"species map {path}:1: found columns {rows[0] if rows else []}; "
          f"expected a scientific name (one of {', '.join(_MAP_TARGETS)}) "
          f"and codes or names (any of {', '.join(_MAP_KEYS)})")
    mapping, conflicts = {}, []
    for line, cells in enumerate(rows[1:], start=2):
      if len(cells) <= max(keys + [target]) or not cells[target].strip():
        continue
      name = " ".join(cells[target].split())
      for i in keys:
        key = _species_key(cells[i])
        if key and mapping.setdefault(key, name) != name:
          conflicts.append(f"{path}:{line}: {cells[i]!r} -> {name!r}, but "
                           f"an earlier row gives {mapping[key]!r}")
    if conflicts:
      raise registry.ConfigError("species map gives a key two names:\n  "
                                 + "\n  ".join(conflicts[:20]))
    return cls(mapping, path)

  def get(self, written: str) -> str | None:
    return self.scientific_of.get(_species_key(written))


@dataclasses.dataclass(frozen=True)
class SpeciesMatch:
  """What one annotated species maps to.

  Attributes:
    written: the species as the annotations write it.
    events: its events.
    class_index: the model's class, None if the model does not know it.
    label: that class's scientific name ("" if none).
    matched_by: "scientific name", "common name", "BirdNET name",
      "species map", or why nothing matched.
  """
  written: str
  events: int
  class_index: int | None
  label: str
  matched_by: str


@dataclasses.dataclass(frozen=True)
class LabelMapping:
  """Annotated species on a model's label list.

  Attributes:
    class_of_event: int `[events]` (aligned with `Annotations.events`),
      the model class of each event; -1 where the model does not know the
      species (no positive for any class: reported, not scored).
    species: every annotated species, most events first.
    present_classes: sorted model classes with at least one event: the
      classes a class mean scores.
    num_classes: the model's label count.
  """
  class_of_event: np.ndarray
  species: tuple[SpeciesMatch, ...]
  present_classes: np.ndarray
  num_classes: int

  @property
  def unknown(self) -> tuple[SpeciesMatch, ...]:
    """Annotated species the model does not know, most events first."""
    return tuple(s for s in self.species if s.class_index is None)

  def summary(self) -> str:
    unknown = self.unknown
    text = (f"{len(self.species)} annotated species -> "
            f"{len(self.present_classes)} model classes scored")
    if unknown:
      text += (f"; {len(unknown)} unknown to the model "
               f"({sum(s.events for s in unknown)} events, not scored): "
               + ", ".join(f"{s.written} ({s.events})" for s in unknown[:10])
               + (", ..." if len(unknown) > 10 else ""))
    return text


def write_mapping_report(path: str, mapping: LabelMapping) -> None:
  """Writes one row per annotated species as a TSV: species, events,
  class_index, label, matched_by."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f, delimiter="\t", lineterminator="\n")
    writer.writerow(("species", "events", "class_index", "label",
                     "matched_by"))
    for s in mapping.species:
      writer.writerow((s.written, s.events,
                       "" if s.class_index is None else s.class_index,
                       s.label, s.matched_by))


def _label_index(labels: Sequence[dict], key: str) -> dict[str, int]:
  index = {}
  for i, row in enumerate(labels):
    if row.get(key):
      index.setdefault(_species_key(row[key]), i)
  return index


def map_species(annotations: Annotations, labels: Sequence[dict],
                species_map: SpeciesMap | None = None) -> LabelMapping:
  """Maps every annotated species to a model class, or reports it unknown.

  A species matches, in this order: a label's scientific name
  (`species`), its common name (`common_name`), either half of BirdNET's
  `Scientific name_Common name`, or the scientific name `species_map`
  gives it; all case-insensitively, otherwise exactly. Several spellings
  may land on one class.

  Args:
    annotations: from `read_annotations`.
    labels: the model's labels, rows `{"species", "common_name"}`.
    species_map: codes and other spellings -> scientific names.
  """
  scientific = _label_index(labels, "species")
  common = _label_index(labels, "common_name")

  def match(written: str) -> tuple[int | None, str]:
    name = _species_key(written)
    if name in scientific:
      return scientific[name], "scientific name"
    if name in common:
      return common[name], "common name"
    if "_" in written:
      sci, _, com = written.partition("_")
      for half, index in ((sci, scientific), (com, common)):
        if _species_key(half) in index:
          return index[_species_key(half)], "BirdNET name"
    if species_map is not None:
      mapped = species_map.get(written)
      if mapped is None:
        return None, f"unknown: not a label, not in {species_map.path}"
      if _species_key(mapped) in scientific:
        return scientific[_species_key(mapped)], "species map"
      return None, (f"unknown: the species map gives {mapped!r}, not a "
                    "label of the model")
    return None, "unknown: not a label of the model (no species map given)"

  counts = annotations.species_counts()
  matches = {}
  for written, events in sorted(counts.items(),
                                key=lambda item: (-item[1], item[0])):
    index, how = match(written)
    matches[written] = SpeciesMatch(
        written, events, index,
        "" if index is None else labels[index].get("species", ""), how)
  class_of_event = np.asarray(
      [-1 if matches[e.species].class_index is None
       else matches[e.species].class_index for e in annotations.events],
      np.int64)
  present = np.unique(class_of_event[class_of_event >= 0])
  return LabelMapping(class_of_event, tuple(matches.values()), present,
                      len(labels))


# ---------------------------------------------------------------------------
# Truth: events -> windows and segments.
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class EventArrays:
  """One recording's events as arrays, `[events]` each."""
  start_s: np.ndarray
  end_s: np.ndarray
  class_index: np.ndarray  # -1: a species the model does not know.


def event_arrays(annotations: Annotations, mapping: LabelMapping,
                 recording: str) -> EventArrays:
  """A recording's events with their model classes."""
  rows = annotations.event_indices(recording)
  events = annotations.events
  return EventArrays(
      np.asarray([events[i].start_s for i in rows], np.float64),
      np.asarray([events[i].end_s for i in rows], np.float64),
      mapping.class_of_event[rows])


def overlap_truth(events: EventArrays, window_start_s: np.ndarray,
                  window_end_s: np.ndarray, num_classes: int,
                  min_overlap: float = 0.0) -> np.ndarray:
  """bool `[windows, classes]`: which species each window holds.

  A window is positive for a species when an event of it overlaps the
  window by more than nothing and by at least `min_overlap` times the
  shorter of the window and the event (module docstring); times within
  `TIME_EPSILON_S` are equal. Events of species the model does not know
  (class -1) make nothing positive.

  Args:
    events: the recording's events (`event_arrays`).
    window_start_s, window_end_s: `[windows]`, in time order (starts and
      ends non-decreasing, as every window layout here cuts them).
    num_classes: the model's label count.
    min_overlap: in [0, 1].
  """
  if not 0.0 <= min_overlap <= 1.0:
    raise ValueError(f"min_overlap must be in [0, 1]; got {min_overlap}")
  window_start = np.asarray(window_start_s, np.float64)
  window_end = np.asarray(window_end_s, np.float64)
  if np.any(np.diff(window_start) < 0) or np.any(np.diff(window_end) < 0):
    raise ValueError("windows must be in time order (starts and ends "
                     "non-decreasing)")
  known = events.class_index >= 0
  start, end = events.start_s[known], events.end_s[known]
  label = events.class_index[known]
  truth = np.zeros((len(window_start), num_classes), bool)
  # Windows that can overlap an event by more than epsilon: a contiguous
  # run, ending after the event starts and starting before it ends.
  first = np.searchsorted(window_end, start + TIME_EPSILON_S, side="right")
  stop = np.searchsorted(window_start, end - TIME_EPSILON_S, side="left")
  count = np.maximum(stop - first, 0)
  event = np.repeat(np.arange(len(start)), count)
  within = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count,
                                              count)
  window = first[event] + within
  overlap = (np.minimum(window_end[window], end[event])
             - np.maximum(window_start[window], start[event]))
  shorter = np.minimum(window_end[window] - window_start[window],
                       end[event] - start[event])
  positive = ((overlap > TIME_EPSILON_S)
              & (overlap >= min_overlap * shorter - TIME_EPSILON_S))
  truth[window[positive], label[event[positive]]] = True
  return truth


def segment_bounds(duration_s: float, segment_s: float | None
                   ) -> tuple[np.ndarray, np.ndarray]:
  """(start_s, end_s) of consecutive segments covering a recording.

  Segments start at multiples of `segment_s` (5 s as BirdSet's test
  segments, 60 s, ...); the last ends at the recording's end, so it may be
  shorter. `segment_s` None: one segment, the whole recording.
  """
  if segment_s is None:
    return np.zeros(1), np.asarray([duration_s], np.float64)
  if segment_s <= 0:
    raise ValueError(f"segment_s must be positive; got {segment_s}")
  count = max(1, math.ceil(duration_s / segment_s - TIME_EPSILON_S))
  start = np.arange(count) * float(segment_s)
  return start, np.minimum(start + segment_s, duration_s)


def segment_truth(events: EventArrays, duration_s: float,
                  segment_s: float | None, num_classes: int,
                  min_overlap: float = 0.0
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(start_s, end_s, truth `[segments, classes]`) of a recording's
  segments (`segment_bounds`), by the window rule (`overlap_truth`).

  With `segment_s` None this is recording-level truth: the species present
  anywhere in the recording.
  """
  start, end = segment_bounds(duration_s, segment_s)
  return start, end, overlap_truth(events, start, end, num_classes,
                                   min_overlap)
