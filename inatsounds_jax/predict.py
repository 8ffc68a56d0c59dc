"""Species predictions for recordings, from a training workdir or a bundle.

    python -m inatsounds_jax.predict --model=WORKDIR_OR_BUNDLE \\
        --input=FILE_OR_FOLDER_OR_LIST.txt --output=FOLDER \\
        [--format=raven,csv] [--embeddings=npz|parquet] [--hop_seconds=1.5] \\
        [--min_confidence=0.25] [--top_k=N] [--species_list=FILE] \\
        [--latitude=.. --longitude=.. | --locations=CSV] \\
        [--geo_prior=DIR [--geo_filter] [--geo_threshold=0.1]]

Recordings (wav, flac, ogg, mp3; any rate and channel count) are decoded as
training saw them (mono int16 at 22,050 Hz, `audio.BlockDecoder`) in blocks,
and cut into the model's window every hop on the dense evaluation layout
(`input_pipeline.eval_layout`, centred zero padding so the last window fits;
the hop in seconds becomes a stride of round(hop x rate / spectrogram hop)
frames: 1.5 s -> 258 frames = 1.4977 s). Windows are cut chunk by chunk with
`input_pipeline.cut_windows`, so the windows equal whole-file cutting
exactly. Batches span file boundaries.

One path classifies: `Predictor.stream` delivers each decoded chunk's window
table as soon as its batches return. The command reduces each chunk straight
to the rows it writes (`detections`: --min_confidence, --top_k,
--species_list, the prior) and appends them, and the embeddings and logits,
to the recording's output files, so its memory stays flat in file length
(no `windows x classes` array of a whole recording is ever held);
`Predictor.predict_file` puts the chunks together.

A model trained with a location input (`config.location_input`,
`geo/location_input.py`) is given each recording's location (--latitude/
--longitude or --locations; a recording without one is classified as with
an unknown location, as in training). `prior_logits` models rebuild their
training prior from the range-model workdir their config names; one trained
on the synthetic corpus's true ranges is refused.

Each window gets probabilities (softmax for models trained with a
multiclass loss, sigmoid for multilabel ones). Window times are clipped to
the recording: a file shorter than a window has one window, 0 .. duration.

The output folder mirrors the input's relative paths and holds
`settings.json` (model, label list digest, every option, library version),
`errors.tsv` (file, kind, reason) and, with `csv`, the combined CSV. A run
started again skips recordings whose outputs all exist (each file is filled
under a `.partial` name and renamed when its recording is done, so a killed
run leaves nothing that looks complete) and refuses other settings.

From Python: `Predictor(path).predict_file(file)` returns the `WindowTable`
the command writes.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np
import soundfile
import tqdm

import inatsounds_jax
from inatsounds_jax import audio
from inatsounds_jax import export
from inatsounds_jax import input_pipeline
from inatsounds_jax import registry
from inatsounds_jax import storage
from inatsounds_jax import tables
from inatsounds_jax import train
from inatsounds_jax.geo import location_input
from inatsounds_jax.geo import prior as prior_lib
from inatsounds_jax.geo import range_model
from inatsounds_jax.models import classifier as classifier_lib
from inatsounds_jax.models import conv

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
SETTINGS_FILE = "settings.json"
ERRORS_FILE = "errors.tsv"
DEFAULT_HOP_SECONDS = 1.5  # The iNatSounds paper's evaluation stride.


class InputError(registry.ConfigError):
  """Inputs or options that prevent any prediction (reported in one line)."""


def load_model(path: str) -> train.TrainedModel:
  """A bundle (`export.py`) or a training workdir's best checkpoint."""
  if not storage.resolve(path).is_dir():
    raise InputError(f"--model={path}: no such folder (give a training "
                     "workdir or an exported bundle)")
  if export.is_bundle(path):
    return export.read_bundle(path)
  return train.load_model_from_workdir(path)


def stride_frames(hop_seconds: float, windows_frontend) -> int:
  """The hop in spectrogram frames: hop x rate / frame hop, rounded."""
  frames = round(hop_seconds * windows_frontend.sample_rate
                 / windows_frontend.hop_length)
  if frames < 1:
    raise InputError(f"--hop_seconds={hop_seconds} is shorter than one "
                     "spectrogram frame")
  return frames


# ---------------------------------------------------------------------------
# Windows, chunk by chunk.
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Layout:
  """Where a file's windows lie: first sample of each (may be < 0: padding)."""
  first_sample: np.ndarray  # [n] int64
  num_samples: int
  windows: input_pipeline.WindowConfig

  @classmethod
  def of(cls, num_samples: int, windows: input_pipeline.WindowConfig
         ) -> Layout:
    starts, left = input_pipeline.eval_layout(num_samples, windows)
    first = (np.asarray(starts, np.int64) - int(left)) * (
        windows.frontend.hop_length)
    return cls(first, num_samples, windows)

  def times(self, first: int = 0, stop: int | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) seconds of windows `first` .. `stop` - 1 (all by
    default), clipped to the recording."""
    rate = self.windows.frontend.sample_rate
    first_sample = self.first_sample[first:stop]
    start = np.maximum(first_sample, 0)
    end = np.minimum(first_sample + self.windows.window_samples,
                     self.num_samples)
    return start / rate, end / rate


class _LengthChanged(Exception):
  """The decoded length differs from the header's; re-cut with `actual`."""

  def __init__(self, actual: int):
    super().__init__(actual)
    self.actual = actual


def chunked_windows(blocks: Iterable[np.ndarray], layout: Layout,
                    chunk_samples: int) -> Iterator[np.ndarray]:
  """int16 windows `[k, window_samples]` of a block stream, in order.

  Windows are cut whenever `chunk_samples` samples have arrived, each with
  `input_pipeline.cut_windows` on the buffered samples, so the result equals
  cutting the whole file at once; only the samples of windows not yet cut
  are kept.

  Raises:
    _LengthChanged: the stream's length differs from `layout.num_samples`.
  """
  hop = layout.windows.frontend.hop_length
  size = layout.windows.window_samples
  first = layout.first_sample
  pending: list[np.ndarray] = []
  buffer_start = 0  # Sample index of the buffer's first sample.
  received = 0
  next_window = 0

  def cut(upto: int, final: bool):
    nonlocal pending, buffer_start, next_window
    ready = len(first) if final else int(np.searchsorted(
        first + size, upto, side="right"))
    if ready <= next_window:
      return None
    buffer = np.concatenate(pending) if pending else np.zeros(0, np.int16)
    # Frames relative to the buffer; windows before its start are padding.
    relative = (first[next_window:ready] - buffer_start) // hop
    left = int(max(0, -relative.min()))
    out = input_pipeline.cut_windows(
        buffer, (relative + left).astype(np.int32), left,
        layout.windows).numpy()
    next_window = ready
    end = buffer_start + len(buffer)
    # The next window's first sample (or the end: samples not yet received
    # are never dropped, whatever the hop).
    keep_from = min(max(0, int(first[ready])) if ready < len(first) else end,
                    end)
    pending = [buffer[keep_from - buffer_start:]]
    buffer_start = keep_from
    return out

  buffered = 0
  for block in blocks:
    pending.append(block)
    received += len(block)
    buffered += len(block)
    if buffered >= chunk_samples:
      buffered = 0
      windows = cut(received, final=False)
      if windows is not None:
        yield windows
  if received != layout.num_samples:
    raise _LengthChanged(received)
  windows = cut(received, final=True)
  if windows is not None:
    yield windows


# ---------------------------------------------------------------------------
# The predictor.
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class WindowTable:
  """Consecutive windows of a recording: times, outputs and embeddings.

  `Predictor.predict_file` returns one for all of a recording's windows;
  `Predictor.stream` one per decoded chunk (`first_window` says where it
  starts).

  Attributes:
    file: the recording's path.
    duration_s: its length after decoding.
    start_s, end_s: `[n]` window times, clipped to the recording.
    probabilities: `[n, classes]` softmax or sigmoid of `logits`.
    logits: `[n, classes]`.
    embeddings: `[n, dim]` pooled features before the head.
    geo_prior: `[classes]` presence at the recording's location (NaN where
      unknown), or None without a prior.
    first_window: the index of the first row among the recording's windows.
  """
  file: str
  duration_s: float
  start_s: np.ndarray
  end_s: np.ndarray
  probabilities: np.ndarray
  logits: np.ndarray
  embeddings: np.ndarray
  geo_prior: np.ndarray | None = None
  first_window: int = 0

  @classmethod
  def concatenate(cls, pieces: Sequence[WindowTable]) -> WindowTable:
    """Consecutive pieces of one recording as one table."""
    return dataclasses.replace(pieces[0], **{
        name: np.concatenate([getattr(p, name) for p in pieces])
        for name in ("start_s", "end_s", "probabilities", "logits",
                     "embeddings")})


BEGIN, WINDOWS, END, ERROR = "begin", "windows", "end", "error"


@dataclasses.dataclass(frozen=True)
class FileEvent:
  """One step of a recording's prediction (`Predictor.stream`).

  Attributes:
    index: the recording's position in the input.
    path: the recording.
    kind: BEGIN (its windows start; a second BEGIN means the file is being
      re-cut, because its decoded length differed from its header's, and
      what came before is void), WINDOWS (`table` holds the next consecutive
      windows), END (every window was delivered) or ERROR (`error`, the
      `audio.AudioError` that stopped it; what came before is void).
  """
  index: int
  path: str
  kind: str
  table: WindowTable | None = None
  error: Exception | None = None


class Predictor:
  """A model ready to classify recordings window by window.

  Args:
    model_path: a training workdir or an exported bundle, or a model already
      loaded (`train.TrainedModel`, e.g. for benchmarks).
    hop_seconds: window hop (rounded to whole spectrogram frames).
    batch_size: windows per model call (batches span files).
    chunk_seconds: audio decoded before windows are cut and delivered (the
      memory bound of `stream`).
    geo_prior: a range model folder (`range_model.load`), or None.
  """

  def __init__(self, model_path: str | train.TrainedModel, *,
               hop_seconds: float = DEFAULT_HOP_SECONDS, batch_size: int = 32,
               chunk_seconds: float = 60.0, geo_prior: str | None = None):
    if isinstance(model_path, train.TrainedModel):
      self.model_path, self.trained = "(in memory)", model_path
    else:
      self.model_path, self.trained = model_path, load_model(model_path)
    model = self.trained.model
    self.labels = self.trained.labels
    self.species = [row["species"] for row in self.labels]
    self.windows = train.window_config(
        model, stride_frames(hop_seconds, model.frontend))
    self.batch_size = batch_size
    self.chunk_samples = max(1, int(chunk_seconds * audio.SAMPLE_RATE))
    self.prior: prior_lib.GeoPrior | None = None
    if geo_prior:
      self.prior = range_model.load(geo_prior).prior(self.species)
      print(self.prior.check_coverage(), file=sys.stderr)
    self.location = location_input.from_config(
        self.trained.config, self._training_prior)
    variables = self.trained.variables
    self._apply = conv.jit(lambda w, location=None: model.apply(
        variables, w, location=location,
        method=classifier_lib.Classifier.embed_and_classify))

  def _training_prior(self, source: str) -> prior_lib.GeoPrior:
    """The prior a `prior_logits` model was trained with, from its config."""
    if source == "synthetic_truth":
      raise InputError(
          f"{self.model_path} was trained with location_input "
          "'prior_logits' over the synthetic corpus's true ranges "
          "(geo_prior 'synthetic_truth'), which prediction cannot rebuild "
          "without that dataset; train it with a range model as geo_prior")
    return range_model.load(source).prior(self.species)

  @property
  def hop_seconds(self) -> float:
    fe = self.windows.frontend
    return self.windows.eval_stride_frames * fe.hop_length / fe.sample_rate

  @property
  def activation(self) -> str:
    return "sigmoid" if self.trained.multilabel else "softmax"

  def probabilities(self, logits: np.ndarray) -> np.ndarray:
    """Sigmoid or softmax of `[n, classes]` logits, row by row (one new
    array)."""
    if self.trained.multilabel:
      out = np.negative(logits)
      np.exp(out, out=out)
      out += 1.0
      return np.reciprocal(out, out=out)
    out = logits - logits.max(axis=-1, keepdims=True)
    np.exp(out, out=out)
    out /= out.sum(axis=-1, keepdims=True)
    return out

  def predict_file(self, path: str, latitude: float = math.nan,
                   longitude: float = math.nan) -> WindowTable:
    """The window table of one recording (all its windows).

    Raises:
      audio.AudioError: the file cannot be decoded (the message names it).
    """
    (_, result), = self.predict_files([(path, latitude, longitude)])
    if isinstance(result, Exception):
      raise result
    return result

  def predict_files(self, files: Sequence[tuple[str, float, float]]
                    ) -> Iterator[tuple[str, WindowTable | Exception]]:
    """(path, whole table or the `AudioError` that stopped it), in input
    order: `stream`'s pieces put together."""
    pieces: list[WindowTable] = []
    for event in self.stream(files):
      if event.kind == WINDOWS:
        pieces.append(event.table)
        continue
      if event.kind == END:
        yield event.path, WindowTable.concatenate(pieces)
      elif event.kind == ERROR:
        yield event.path, event.error
      pieces = []

  def stream(self, files: Sequence[tuple[str, float, float]]
             ) -> Iterator[FileEvent]:
    """Each recording's `FileEvent`s, in input order, chunk by chunk.

    `files` are (path, latitude, longitude) (NaN: unknown). Windows of
    consecutive files share batches; a chunk's table is delivered as soon as
    the batches holding its windows returned, so memory holds a chunk of
    audio, its windows and a batch, whatever the recordings' lengths.
    """
    queue: collections.deque[_Chunk | FileEvent] = collections.deque()
    batch: list[tuple[_Chunk, int, np.ndarray]] = []

    def run_batch():
      waves = np.zeros((self.batch_size, self.windows.window_samples),
                       np.int16)
      locations = None if self.location is None else self.location(
          None, None, self.batch_size)
      for i, (chunk, _, wave) in enumerate(batch):
        waves[i] = wave
        if locations is not None:
          locations[i] = chunk.location
      embeddings, logits = jax.device_get(self._apply(waves, locations))
      for i, (chunk, row, _) in enumerate(batch):
        chunk.put(row, embeddings[i], logits[i])
      batch.clear()

    def delivered():
      while queue and (isinstance(queue[0], FileEvent)
                       or queue[0].missing == 0):
        item = queue.popleft()
        yield item if isinstance(item, FileEvent) else item.event(self)

    for index, (path, lat, lon) in enumerate(files):
      prior = location = None
      if self.prior is not None:
        prior = self.prior.probabilities([lat], [lon])[0]
      if self.location is not None:
        location = self.location([lat], [lon])[0]
      layout, next_window = None, 0
      try:
        for chunk_layout, windows in self._file_windows(path):
          if chunk_layout is not layout:
            layout, next_window = chunk_layout, 0
            queue.append(FileEvent(index, path, BEGIN))
          chunk = _Chunk(index, path, layout, next_window, len(windows),
                         prior, location)
          next_window += len(windows)
          queue.append(chunk)
          for row, wave in enumerate(windows):
            batch.append((chunk, row, wave))
            if len(batch) == self.batch_size:
              run_batch()
              yield from delivered()
      except audio.AudioError as e:
        queue.append(FileEvent(index, path, ERROR, error=e))
      else:
        queue.append(FileEvent(index, path, END))
      yield from delivered()
    if batch:
      run_batch()
    yield from delivered()

  def _file_windows(self, path: str
                    ) -> Iterator[tuple[Layout, np.ndarray]]:
    """(layout, windows) of `path`, chunk by chunk; re-cut from the start
    with a new layout if the header's length was wrong (a few compressed
    files)."""
    with audio.open_audio_file(path) as decoder:
      layout = Layout.of(decoder.num_samples, self.windows)
      try:
        for windows in chunked_windows(decoder, layout, self.chunk_samples):
          yield layout, windows
        return
      except _LengthChanged as e:
        actual = e.actual
    if actual == 0:
      raise audio.AudioError("no samples", f"{path}: audio has no samples")
    with audio.open_audio_file(path) as decoder:
      layout = Layout.of(actual, self.windows)
      for windows in chunked_windows(decoder, layout, self.chunk_samples):
        yield layout, windows


class _Chunk:
  """A chunk's windows waiting for the batches that classify them."""

  def __init__(self, index: int, path: str, layout: Layout, first: int,
               count: int, prior: np.ndarray | None,
               location: np.ndarray | None):
    self.index, self.path, self.layout = index, path, layout
    self.first, self.count, self.prior = first, count, prior
    self.location = location  # The model's location features, if it has
    # a location input.
    self.missing = count
    self._embeddings = self._logits = None

  def put(self, row: int, embedding: np.ndarray, logits: np.ndarray) -> None:
    if self._logits is None:
      self._embeddings = np.zeros((self.count, len(embedding)), np.float32)
      self._logits = np.zeros((self.count, len(logits)), np.float32)
    self._embeddings[row], self._logits[row] = embedding, logits
    self.missing -= 1

  def event(self, predictor: Predictor) -> FileEvent:
    start, end = self.layout.times(self.first, self.first + self.count)
    return FileEvent(self.index, self.path, WINDOWS, table=WindowTable(
        file=self.path,
        duration_s=self.layout.num_samples / audio.SAMPLE_RATE,
        start_s=start, end_s=end,
        probabilities=predictor.probabilities(self._logits),
        logits=self._logits, embeddings=self._embeddings,
        geo_prior=self.prior, first_window=self.first))


# ---------------------------------------------------------------------------
# Selecting detections.
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Selection:
  """Which (window, species) pairs become detection rows, as in BirdNET.

  Attributes:
    min_confidence: rows below it are dropped.
    top_k: at most this many species per window (0: no limit).
    allowed: `[classes]` bool, the species list (None: all).
    geo_filter: drop species whose prior is below `geo_threshold` (species
      the prior does not know, or files without a location, stay).
  """
  min_confidence: float = 0.25
  top_k: int = 0
  allowed: np.ndarray | None = None
  geo_filter: bool = False
  geo_threshold: float = 0.1


def detections(table: WindowTable, labels: Sequence[dict],
               selection: Selection, file_name: str
               ) -> list[tables.Detection]:
  """Detection rows of a window table, by window then confidence."""
  keep = np.ones(table.probabilities.shape[1], bool)
  if selection.allowed is not None:
    keep &= selection.allowed
  if selection.geo_filter and table.geo_prior is not None:
    keep &= ~(table.geo_prior < selection.geo_threshold)
  rows = []
  for w in range(len(table.start_s)):
    p = np.where(keep, table.probabilities[w], -1.0)
    order = np.argsort(-p, kind="stable")
    if selection.top_k:
      order = order[:selection.top_k]
    for c in order:
      if p[c] < selection.min_confidence or p[c] < 0:
        break
      rows.append(tables.Detection(
          start_s=float(table.start_s[w]), end_s=float(table.end_s[w]),
          species=labels[c]["species"],
          common_name=labels[c].get("common_name", ""),
          confidence=float(p[c]), file=file_name,
          geo_prior=(None if table.geo_prior is None
                     else float(table.geo_prior[c]))))
  return rows


# ---------------------------------------------------------------------------
# Inputs: files, locations, species lists.
# ---------------------------------------------------------------------------

def find_audio(path: str) -> list[tuple[str, str]]:
  """(path, path relative to the input) of every recording under `path`.

  `path` is a recording, a folder (searched recursively, sorted), or a
  text file listing recordings one a line (relative to the list's folder).

  Raises:
    InputError: nothing to read, or listed files that do not exist.
  """
  if os.path.isdir(path):
    found = []
    for root, dirs, names in os.walk(path):
      dirs.sort()
      for name in sorted(names):
        if name.lower().endswith(AUDIO_EXTENSIONS):
          full = os.path.join(root, name)
          found.append((full, os.path.relpath(full, path)))
    if not found:
      raise InputError(f"--input={path}: no audio files "
                       f"({', '.join(AUDIO_EXTENSIONS)}) in this folder")
    return found
  if not os.path.exists(path):
    raise InputError(f"--input={path}: no such file or folder")
  if path.lower().endswith(AUDIO_EXTENSIONS):
    return [(path, os.path.basename(path))]
  base = os.path.dirname(os.path.abspath(path))
  with open(path, encoding="utf-8") as f:
    listed = [line.strip() for line in f]
  files = [(os.path.join(base, name), name) for name in listed if name]
  missing = [f"{path}:{i + 1}: {name}" for i, name in enumerate(listed)
             if name and not os.path.exists(os.path.join(base, name))]
  if missing:
    raise InputError("listed recordings not found:\n  "
                     + "\n  ".join(missing[:20]))
  if not files:
    raise InputError(f"--input={path}: the list names no recordings")
  return files


def read_locations(path: str) -> dict[str, tuple[float, float]]:
  """`file,latitude,longitude` rows -> {file: (lat, lon)}.

  Files are matched by the name as written, relative to the input, or by
  base name. Raises `InputError` naming the file and line of a bad row.
  """
  try:
    f = open(path, newline="", encoding="utf-8-sig")
  except OSError as e:
    raise InputError(f"--locations={path}: {e.strerror}") from None
  with f:
    reader = csv.DictReader(f)
    needed = {"file", "latitude", "longitude"}
    if not reader.fieldnames or not needed <= set(reader.fieldnames):
      raise InputError(f"{path}:1: the header must name the columns file, "
                       f"latitude, longitude (found {reader.fieldnames})")
    out, problems = {}, []
    for row in reader:
      line = reader.line_num
      try:
        lat, lon = float(row["latitude"]), float(row["longitude"])
      except (TypeError, ValueError):
        problems.append(f"{path}:{line}: latitude/longitude "
                        f"{row['latitude']!r}, {row['longitude']!r} are "
                        "not numbers")
        continue
      if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        problems.append(f"{path}:{line}: ({lat}, {lon}) is outside "
                        "latitude -90..90, longitude -180..180")
      elif not row["file"]:
        problems.append(f"{path}:{line}: no file name")
      else:
        out[row["file"]] = (lat, lon)
  if problems:
    raise InputError("bad rows in the locations file:\n  "
                     + "\n  ".join(problems[:20]))
  return out


def read_species_list(path: str, labels: Sequence[dict]
                      ) -> tuple[np.ndarray, list[str]]:
  """(allowed `[classes]`, names not among the labels) of a species list.

  One name a line: a scientific name, a common name, or BirdNET's
  `Scientific name_Common name`.
  """
  try:
    with open(path, encoding="utf-8-sig") as f:
      names = [line.strip() for line in f if line.strip()]
  except OSError as e:
    raise InputError(f"--species_list={path}: {e.strerror}") from None
  index = {}
  for i, row in enumerate(labels):
    for key in ("species", "common_name"):
      if row.get(key):
        index.setdefault(row[key].lower(), i)
  allowed = np.zeros(len(labels), bool)
  unknown = []
  for name in names:
    found = [index[n.lower()] for n in (name, name.split("_")[0])
             if n.lower() in index]
    if found:
      allowed[found[0]] = True
    else:
      unknown.append(name)
  if not allowed.any():
    raise InputError(f"--species_list={path}: none of its {len(names)} "
                     f"names is a label of the model (e.g. {names[:3]})")
  return allowed, unknown


# ---------------------------------------------------------------------------
# The run: outputs, resumption, progress.
# ---------------------------------------------------------------------------

def label_digest(labels: Sequence[dict]) -> str:
  """The label list's version: sha256 of its species names, in order."""
  text = "\n".join(row["species"] for row in labels)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def _output_paths(output: str, relative: str, formats: Sequence[str],
                  embeddings: str) -> dict[str, str]:
  stem = os.path.join(output, os.path.splitext(relative)[0])
  paths = {name: stem + tables.FORMATS.get(name).suffix for name in formats}
  if embeddings:
    paths["embeddings"] = stem + tables.EMBEDDING_FORMATS.get(
        embeddings).suffix
  return paths


def _check_writable(output: str) -> None:
  try:
    os.makedirs(output, exist_ok=True)
    probe = os.path.join(output, ".write_test")
    with open(probe, "w"):
      pass
    os.remove(probe)
  except OSError as e:
    raise InputError(f"--output={output}: cannot write there "
                     f"({e.strerror})") from None


def _record_settings(output: str, settings: dict) -> None:
  """Writes settings.json; refuses a folder holding another run's results."""
  path = os.path.join(output, SETTINGS_FILE)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    changed = sorted(k for k in set(old) | set(settings)
                     if k not in ("started", "library_version")
                     and old.get(k) != settings.get(k))
    if changed:
      raise InputError(
          f"{output} holds results made with other settings ("
          + ", ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}"
                      for k in changed[:6])
          + "); use another --output, or the same settings to resume")
  with open(path, "w") as f:
    json.dump(settings, f, indent=1)


def _audio_seconds(path: str) -> float:
  """Duration from the header (0 if unreadable: decoding will report it)."""
  try:
    info = soundfile.info(path)
    return info.frames / info.samplerate
  except Exception:  # pylint: disable=broad-except
    return 0.0


@dataclasses.dataclass(frozen=True)
class RunOptions:
  formats: tuple[str, ...] = ("raven", "csv")
  embeddings: str = ""
  selection: Selection = Selection()
  latitude: float = math.nan
  longitude: float = math.nan
  locations: str = ""


class _FileOutputs:
  """One recording's output files, filled chunk by chunk: rows are appended
  as windows are classified, and the files get their names (`commit`) only
  when the recording is done."""

  def __init__(self, paths: dict[str, str], options: RunOptions,
               band: tables.Band, with_prior: bool):
    self.tables = [tables.FORMATS.get(name).open(paths[name], band,
                                                 with_prior)
                   for name in options.formats]
    self.embeddings = None
    if options.embeddings:
      self.embeddings = tables.EMBEDDING_FORMATS.get(
          options.embeddings).open(paths["embeddings"])
    self.detections = 0
    self.seconds = 0.0  # Audio covered so far (progress).

  def _files(self) -> list[tables.PartialFile]:
    return self.tables + ([self.embeddings] if self.embeddings else [])

  def add(self, table: WindowTable, rows: list[tables.Detection]) -> None:
    for writer in self.tables:
      writer.add(rows)
    self.detections += len(rows)
    if self.embeddings:
      self.embeddings.add({
          "start_s": table.start_s, "end_s": table.end_s,
          "embeddings": table.embeddings, "logits": table.logits})

  def commit(self) -> None:
    for f in self._files():
      f.commit()

  def discard(self) -> None:
    for f in self._files():
      f.discard()


def run(predictor: Predictor, input_path: str, output: str,
        options: RunOptions, settings_extra: dict | None = None) -> dict:
  """Predicts every recording under `input_path` into `output`.

  Returns:
    Counts: {"done", "skipped", "failed", "detections"}.
  """
  for name in options.formats:
    tables.FORMATS.get(name)
  if options.embeddings:
    tables.EMBEDDING_FORMATS.get(options.embeddings)
  files = find_audio(input_path)
  locations = read_locations(options.locations) if options.locations else {}
  _check_writable(output)
  fe = predictor.windows.frontend
  settings = {
      "model": os.fspath(storage.resolve(predictor.model_path)),
      "model_name": predictor.trained.model.backbone,
      "checkpoint_step": predictor.trained.step,
      "labels": len(predictor.labels),
      "label_list_sha256": label_digest(predictor.labels),
      "activation": predictor.activation,
      "sample_rate": fe.sample_rate,
      "window_samples": predictor.windows.window_samples,
      "window_seconds": predictor.windows.window_samples / fe.sample_rate,
      "hop_frames": predictor.windows.eval_stride_frames,
      "hop_seconds": predictor.hop_seconds,
      "min_confidence": options.selection.min_confidence,
      "top_k": options.selection.top_k,
      "formats": list(options.formats),
      "embeddings": options.embeddings,
      "latitude": None if math.isnan(options.latitude) else options.latitude,
      "longitude": (None if math.isnan(options.longitude)
                    else options.longitude),
      "locations": options.locations,
      "geo_prior": predictor.prior is not None,
      "geo_filter": options.selection.geo_filter,
      "geo_threshold": options.selection.geo_threshold,
      "library_version": inatsounds_jax.__version__,
      **(settings_extra or {}),
  }
  _record_settings(output, settings)
  band = tables.Band(fe.lower_edge_hz, fe.upper_edge_hz)
  with_prior = predictor.prior is not None

  todo, skipped, outputs = [], 0, []
  for path, relative in files:
    paths = _output_paths(output, relative, options.formats,
                          options.embeddings)
    outputs.append(paths)
    if all(os.path.exists(p) for p in paths.values()):
      skipped += 1
      continue
    lat, lon = locations.get(relative) or locations.get(path) or (
        locations.get(os.path.basename(path))
        or (options.latitude, options.longitude))
    todo.append((path, lat, lon, paths))

  unlocated = [p for p, lat, lon, _ in todo
               if math.isnan(lat) or math.isnan(lon)]
  if with_prior and unlocated:
    print(f"warning: {len(unlocated)} of {len(todo)} recordings have no "
          f"location (e.g. {unlocated[0]}): their geo prior column is empty "
          "and nothing is filtered", file=sys.stderr)
  if predictor.location is not None and unlocated:
    print(f"warning: {len(unlocated)} of {len(todo)} recordings have no "
          f"location (e.g. {unlocated[0]}): the model, trained with "
          f"location_input {predictor.trained.config.location_input!r}, "
          "classifies them as at an unknown location", file=sys.stderr)
  counts = {"done": 0, "skipped": skipped, "failed": 0, "detections": 0}
  errors = []
  total_s = sum(_audio_seconds(t[0]) for t in todo)
  bar = tqdm.tqdm(total=total_s / 3600, unit="h audio",
                  desc="predict", disable=not todo,
                  bar_format="{l_bar}{bar}| {n:.3f}/{total:.3f} h audio "
                  "[{elapsed}<{remaining}] {postfix}")
  started = time.time()
  writing: _FileOutputs | None = None
  with bar:
    for event in predictor.stream([(p, la, lo) for p, la, lo, _ in todo]):
      path, _, _, paths = todo[event.index]
      if event.kind == BEGIN:
        counted = 0.0
        if writing is not None:  # A re-cut: the first pass is void.
          writing.discard()
          counted = writing.seconds
        writing = _FileOutputs(paths, options, band, with_prior)
        writing.seconds = counted
      elif event.kind == WINDOWS:
        writing.add(event.table, detections(
            event.table, predictor.labels, options.selection,
            os.path.abspath(path)))
        seconds = event.table.end_s[-1]
        # Headers may round a resampled length down: never past the total.
        bar.update(min(max(0.0, seconds - writing.seconds) / 3600,
                       bar.total - bar.n))
        writing.seconds = max(writing.seconds, seconds)
      elif event.kind == END:
        writing.commit()
        counts["done"] += 1
        counts["detections"] += writing.detections
        writing = None
      else:
        if writing is not None:
          writing.discard()
          writing = None
        counts["failed"] += 1
        kind = getattr(event.error, "kind", type(event.error).__name__)
        errors.append((path, kind, str(event.error)))
        bar.write(f"error: {event.error}", file=sys.stderr)
      if event.kind in (END, ERROR):
        bar.set_postfix_str(f"files {counts['done'] + counts['failed']}"
                            f"/{len(todo)}")
  with open(os.path.join(output, ERRORS_FILE), "w", encoding="utf-8") as f:
    f.write("file\tkind\treason\n")
    for row in errors:
      f.write("\t".join(x.replace("\t", " ").replace("\n", " ")
                        for x in row) + "\n")
  if "csv" in options.formats:
    tables.combine_csv([p["csv"] for p in outputs if os.path.exists(p["csv"])],
                       os.path.join(output, tables.COMBINED_CSV))
  logging.info("%d files predicted, %d skipped (done before), %d failed, "
               "%.1f s", counts["done"], skipped, counts["failed"],
               time.time() - started)
  return counts


# ---------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------

def _define_flags() -> None:
  """The command's flags, defined only when this module is the program: the
  library module is imported beside `main.py`, whose flags share absl's
  registry."""
  flags.DEFINE_string("model", None, "Training workdir or bundle.")
  flags.DEFINE_string("input", None,
                      "A recording, a folder (recursive) or a .txt list.")
  flags.DEFINE_string("output", None, "Output folder.")
  flags.DEFINE_list("format", ["raven", "csv"],
                    f"Outputs: {tables.FORMATS.names()}.")
  flags.DEFINE_string("embeddings", "",
                      "Also write per-window embeddings and logits: "
                      f"{tables.EMBEDDING_FORMATS.names()} ('' none).")
  flags.DEFINE_float("hop_seconds", DEFAULT_HOP_SECONDS,
                     "Window hop (rounded to spectrogram frames).")
  flags.DEFINE_float("min_confidence", 0.25,
                     "Detections below are not written.")
  flags.DEFINE_integer("top_k", 0,
                       "At most this many species per window (0 all).")
  flags.DEFINE_string("species_list", "",
                      "Only these species (one name a line).")
  flags.DEFINE_float("latitude", None, "Latitude of all files.")
  flags.DEFINE_float("longitude", None, "Longitude of all files.")
  flags.DEFINE_string("locations", "",
                      "CSV with columns file, latitude, longitude.")
  flags.DEFINE_string("geo_prior", "", "Range model folder.")
  flags.DEFINE_bool("geo_filter", False,
                    "Drop species whose prior is below --geo_threshold "
                    "(else the prior is only reported).")
  flags.DEFINE_float("geo_threshold", 0.1, "Threshold of --geo_filter.")
  flags.DEFINE_integer("batch_size", 32, "Windows per call.")


def _main_options() -> tuple[Predictor, RunOptions, dict]:
  f = flags.FLAGS
  if (f.latitude is None) != (f.longitude is None):
    raise InputError("give both --latitude and --longitude, or neither")
  if f.latitude is not None and f.locations:
    raise InputError("give --latitude/--longitude or --locations, not both")
  if f.geo_filter and not f.geo_prior:
    raise InputError("--geo_filter needs --geo_prior")
  predictor = Predictor(f.model, hop_seconds=f.hop_seconds,
                        batch_size=f.batch_size,
                        geo_prior=f.geo_prior or None)
  allowed, extra = None, {}
  if f.species_list:
    allowed, unknown = read_species_list(f.species_list,
                                         predictor.labels)
    if unknown:
      print(f"warning: {len(unknown)} names in {f.species_list} are not "
            f"labels of the model and are ignored: {', '.join(unknown)}",
            file=sys.stderr)
    extra = {"species_list": os.path.abspath(f.species_list),
             "species_list_unknown": unknown,
             "species_list_used": int(allowed.sum())}
  options = RunOptions(
      formats=tuple(f.format), embeddings=f.embeddings,
      selection=Selection(
          min_confidence=f.min_confidence, top_k=f.top_k,
          allowed=allowed, geo_filter=f.geo_filter,
          geo_threshold=f.geo_threshold),
      latitude=math.nan if f.latitude is None else f.latitude,
      longitude=math.nan if f.longitude is None else f.longitude,
      locations=f.locations)
  return predictor, options, extra


def main(argv):
  del argv
  input_pipeline.hide_gpus_from_tensorflow()
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Checkpoint loading chatter.
  try:
    predictor, options, extra = _main_options()
    counts = run(predictor, flags.FLAGS.input, flags.FLAGS.output, options,
                 extra)
  except (registry.ConfigError, FileNotFoundError, ValueError) as e:
    sys.exit(f"error: {e}")
  print(f"{counts['done']} recordings predicted, {counts['skipped']} already "
        f"done, {counts['failed']} failed (see "
        f"{os.path.join(flags.FLAGS.output, ERRORS_FILE)}); "
        f"{counts['detections']} detections")
  if counts["failed"] and not counts["done"] and not counts["skipped"]:
    sys.exit(1)


if __name__ == "__main__":
  _define_flags()
  flags.mark_flags_as_required(["model", "input", "output"])
  app.run(main)
