"""The prediction runtime: recordings in, window tables out, chunk by chunk.

    predictor = inference.Predictor("WORKDIR_OR_BUNDLE")
    table = predictor.predict_file("recording.wav")   # a WindowTable

A `Predictor` holds a trained model (`trained.load`: a training workdir or an
exported bundle; models that take spectrogram images are refused) and
classifies recordings window by window. The command
(`python -m inatsounds_jax.predict`) and the notebooks are its callers.

Windows. A recording is decoded as training saw it (mono int16 at 22,050 Hz,
`audio.BlockDecoder`) and cut into the model's window every hop on the dense
evaluation layout (`windows.eval_layout`: centred zero padding so the
last window fits). The hop in seconds becomes a stride of
round(hop x rate / spectrogram hop) frames; the default is the iNatSounds
paper's evaluation stride of 1.5 s, which is 258 frames = 1.4977 s. Window
times are clipped to the recording: a file shorter than a window has one
window, 0 .. duration.

Streaming. `Predictor.stream` is the one path that classifies: for each
recording, in input order, it delivers BEGIN, then WINDOWS events whose
`WindowTable`s hold consecutive windows (one per decoded chunk, as soon as
the batches holding its windows returned), then END (with the decoder's
report of samples beyond full scale, which were clipped to it, for the
caller to say), or ERROR with the `audio.AudioError` that stopped the
recording. A second BEGIN voids what came
before it (the file's decoded length differed from its header's and it is
cut again). Windows of consecutive recordings share batches. Memory holds a
chunk of audio, its windows and a batch, whatever the recordings' lengths:
no `windows x classes` array of a whole recording exists unless the caller
builds one (`predict_file` does).

Outputs. Each window gets its logits, its embedding (the input of the
backbone's last dense layer) and probabilities: softmax of the logits for a
model trained with a multiclass loss, sigmoid for a multilabel one
(`Predictor.activation`). With a geographic prior (a range model), each table
carries the prior's presence of every label at the recording's location
(`WindowTable.geo_prior`; NaN where the location is unknown or the range
model does not know the species); `detections` reports it with each row and
can filter by it. A model trained with a location input
(`geo/location_input.py`) is given each recording's location, as in
training (an unknown location where none is given).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import io
import math
import sys
from collections.abc import Callable, Iterator, Sequence

import jax
import numpy as np

from inatsounds_jax import audio
from inatsounds_jax import compilation
from inatsounds_jax import registry
from inatsounds_jax import sphere
from inatsounds_jax import tables
from inatsounds_jax import trained as trained_lib
from inatsounds_jax import windows as windows_lib
from inatsounds_jax.geo import location_input
from inatsounds_jax.geo import prior as prior_lib
from inatsounds_jax.models import classifier as classifier_lib

DEFAULT_HOP_SECONDS = 1.5  # The iNatSounds paper's evaluation stride.


class InputError(registry.ConfigError):
  """Inputs or options that prevent any prediction (reported in one line)."""


def stride_frames(hop_seconds: float, windows_frontend) -> int:
  """The hop in spectrogram frames: hop x rate / frame hop, rounded.

  Raises:
    InputError: the hop is shorter than one frame.
  """
  frames = round(hop_seconds * windows_frontend.sample_rate
                 / windows_frontend.hop_length)
  if frames < 1:
    raise InputError(f"--hop_seconds={hop_seconds} is shorter than one "
                     "spectrogram frame")
  return frames


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
    clipping: at END, the decoder's report of samples beyond full scale,
      which were clipped to it (`audio.BlockDecoder.clipping_report`; ""
      when none were). The decoder does not log it: the caller says it.
  """
  index: int
  path: str
  kind: str
  table: WindowTable | None = None
  error: Exception | None = None
  clipping: str = ""


class Predictor:
  """A model ready to classify recordings window by window.

  Args:
    model_path: a training workdir or an exported bundle (`trained.load`),
      or a model already loaded (`trained.TrainedModel`, e.g. for
      benchmarks).
    hop_seconds: window hop (rounded to whole spectrogram frames).
    batch_size: windows per model call (batches span files).
    chunk_seconds: audio decoded before windows are cut and delivered (the
      memory bound of `stream`).
    geo_prior: a range model (`geo.prior.load`), or None.

  Raises:
    FileNotFoundError: no such folder, or not a workdir with a checkpoint.
    trained.BundleError: a bundle this version cannot read.
    trained.InputKindError: a model that takes spectrogram images.
    registry.ConfigError: a prior that cannot be loaded.
    InputError: a hop shorter than one frame; a `prior_logits` model whose
      training prior cannot be rebuilt.
  """

  def __init__(self, model_path: str | trained_lib.TrainedModel, *,
               hop_seconds: float = DEFAULT_HOP_SECONDS, batch_size: int = 32,
               chunk_seconds: float = 60.0, geo_prior: str | None = None):
    if isinstance(model_path, trained_lib.TrainedModel):
      self.model_path, self.trained = "(in memory)", model_path
    else:
      self.model_path, self.trained = model_path, trained_lib.load(model_path)
    trained_lib.require_waveform_input(self.trained, self.model_path,
                                       "prediction")
    model = self.trained.model
    self.labels = self.trained.labels
    self.species = [row["species"] for row in self.labels]
    self.windows = self.trained.windows(
        stride_frames(hop_seconds, model.frontend))
    self.batch_size = batch_size
    self.chunk_samples = max(1, int(chunk_seconds * audio.SAMPLE_RATE))
    self.prior: prior_lib.GeoPrior | None = None
    if geo_prior:
      self.prior = prior_lib.load(geo_prior, self.species)
      print(self.prior.check_coverage(), file=sys.stderr)
    self.location = location_input.from_config(
        self.trained.config, self._training_prior)
    variables = self.trained.variables
    self._apply = compilation.jit(lambda w, location=None: model.apply(
        variables, w, location=location,
        method=classifier_lib.Classifier.infer))

  def _training_prior(self, source: str) -> prior_lib.GeoPrior:
    """The prior a `prior_logits` model was trained with, from its config."""
    if source == prior_lib.SYNTHETIC_TRUTH:
      raise InputError(
          f"{self.model_path} was trained with location_input "
          "'prior_logits' over the synthetic corpus's true ranges "
          "(geo_prior 'synthetic_truth'), which prediction cannot rebuild "
          "without that dataset; train it with a range model as geo_prior")
    return prior_lib.load(source, self.species)

  def unlocated_warnings(self, unlocated: Sequence[str], total: int
                         ) -> list[str]:
    """What happens to the `unlocated` of `total` recordings (paths given no
    location), one warning line each for the prior and the model's location
    input; none when neither uses a location."""
    if not unlocated:
      return []
    some = (f"{len(unlocated)} of {total} recordings have no location "
            f"(e.g. {unlocated[0]})")
    out = []
    if self.prior is not None:
      out.append(f"warning: {some}: their geo prior column is empty and "
                 "nothing is filtered")
    if self.location is not None:
      out.append(f"warning: {some}: the model, trained with location_input "
                 f"{self.trained.config.location_input!r}, classifies them "
                 "as at an unknown location")
    return out

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
      out = jax.device_get(self._apply(waves, locations))
      embeddings, logits = out.embedding, out.logits
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
      decoded: list[audio.BlockDecoder] = []  # Once the file is decoded.
      try:
        for chunk_layout, windows in self._file_windows(path, decoded):
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
        queue.append(FileEvent(index, path, END,
                               clipping=decoded[-1].clipping_report()))
      yield from delivered()
    if batch:
      run_batch()
    yield from delivered()

  def _file_windows(self, path: str, decoded: list[audio.BlockDecoder]
                    ) -> Iterator[tuple[windows_lib.Layout, np.ndarray]]:
    """(layout, windows) of `path`, chunk by chunk; re-cut from the start
    with a new layout if the header's length was wrong (a few compressed
    files). The decoder that decoded the whole file is appended to
    `decoded`."""
    def cut(decoder, num_samples):
      layout = windows_lib.Layout.of(num_samples, self.windows)
      for windows in windows_lib.chunked_windows(decoder, layout,
                                                    self.chunk_samples):
        yield layout, windows
      decoded.append(decoder)

    with audio.open_audio_file(path, report_clipping=False) as decoder:
      try:
        yield from cut(decoder, decoder.num_samples)
        return
      except windows_lib.LengthChanged as e:
        actual = e.actual
    if actual == 0:
      raise audio.AudioError("no samples", f"{path}: audio has no samples")
    with audio.open_audio_file(path, report_clipping=False) as decoder:
      yield from cut(decoder, actual)


class _Chunk:
  """A chunk's windows waiting for the batches that classify them."""

  def __init__(self, index: int, path: str, layout: windows_lib.Layout,
               first: int, count: int, prior: np.ndarray | None,
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
    thresholds: `[classes]` per-species cut-offs replacing `min_confidence`
      (`read_thresholds`; NaN: that species keeps `min_confidence`), or
      None: `min_confidence` for all.
  """
  min_confidence: float = 0.25
  top_k: int = 0
  allowed: np.ndarray | None = None
  geo_filter: bool = False
  geo_threshold: float = 0.1
  thresholds: np.ndarray | None = None

  def cutoffs(self, num_classes: int) -> np.ndarray:
    """`[classes]` the probability each species' rows must reach."""
    if self.thresholds is None:
      return np.full(num_classes, self.min_confidence)
    return np.where(np.isnan(self.thresholds), self.min_confidence,
                    self.thresholds)


def detections(table: WindowTable, labels: Sequence[dict],
               selection: Selection, file_name: str
               ) -> list[tables.Detection]:
  """Detection rows of a window table, by window then confidence.

  A window's species allowed (species list, geo filter) are ranked by
  probability; of the first `top_k`, those at or above their own cut-off
  (`Selection.cutoffs`) are rows. `top_k` counts before the cut-offs, so a
  per-species threshold never lets a lower-ranked species in.
  """
  keep = np.ones(table.probabilities.shape[1], bool)
  if selection.allowed is not None:
    keep &= selection.allowed
  if selection.geo_filter and table.geo_prior is not None:
    keep &= ~(table.geo_prior < selection.geo_threshold)
  cutoffs = selection.cutoffs(len(keep))
  rows = []
  for w in range(len(table.start_s)):
    p = np.where(keep, table.probabilities[w], -1.0)
    order = np.argsort(-p, kind="stable")
    if selection.top_k:
      order = order[:selection.top_k]
    order = order[(p[order] >= cutoffs[order]) & (p[order] >= 0)]
    for c in order:
      rows.append(tables.Detection(
          start_s=float(table.start_s[w]), end_s=float(table.end_s[w]),
          species=labels[c]["species"],
          common_name=labels[c].get("common_name", ""),
          confidence=float(p[c]), file=file_name,
          geo_prior=(None if table.geo_prior is None
                     else float(table.geo_prior[c]))))
  return rows


# ---------------------------------------------------------------------------
# Inputs: files, locations, species lists, the label list's version.
# ---------------------------------------------------------------------------

def find_audio(path: str) -> list[tuple[str, str]]:
  """`audio.find_audio` of the command's --input, its problems named so.

  Raises:
    InputError: nothing to read, or listed files that do not exist.
  """
  try:
    return audio.find_audio(path)
  except audio.NoAudioError as e:
    raise InputError(f"--input={e.path}: {e.reason}") from None


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
      problem = sphere.location_problem(lat, lon)
      if problem:
        problems.append(f"{path}:{line}: {problem}")
      elif not row["file"]:
        problems.append(f"{path}:{line}: no file name")
      else:
        out[row["file"]] = (lat, lon)
  if problems:
    raise InputError("bad rows in the locations file:\n  "
                     + "\n  ".join(problems[:20]))
  return out


def label_matcher(labels: Sequence[dict]
                  ) -> Callable[[str], int | None]:
  """name -> the index of the label it names, or None.

  A name is a label's scientific name, its common name, or BirdNET's
  `Scientific name_Common name`, ignoring case (the first label wins where
  two share a name): what users copy from BirdNET's lists and ours.
  """
  index = {}
  for i, row in enumerate(labels):
    for key in ("species", "common_name"):
      if row.get(key):
        index.setdefault(row[key].lower(), i)

  def match(name: str) -> int | None:
    for n in (name, name.split("_")[0]):
      if n.lower() in index:
        return index[n.lower()]
    return None
  return match


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
  match = label_matcher(labels)
  allowed = np.zeros(len(labels), bool)
  unknown = []
  for name in names:
    found = match(name)
    if found is None:
      unknown.append(name)
    else:
      allowed[found] = True
  if not allowed.any():
    raise InputError(f"--species_list={path}: none of its {len(names)} "
                     f"names is a label of the model (e.g. {names[:3]})")
  return allowed, unknown


@dataclasses.dataclass(frozen=True)
class ThresholdFile:
  """Per-species thresholds read from a file (`read_thresholds`).

  Attributes:
    thresholds: `[classes]` (NaN: not given, --min_confidence applies).
    unknown: names in the file that are no label, in file order.
    sha256: the digest of the file's bytes (settings.json records it, so a
      resumed run with an edited file is refused).
  """
  thresholds: np.ndarray
  unknown: list[str]
  sha256: str


def read_thresholds(path: str, labels: Sequence[dict]) -> ThresholdFile:
  """The `species,threshold,...` CSV `evaluate` writes (thresholds.csv).

  Only `species` and `threshold` are read (the other columns inform a user
  editing it); species are matched as `label_matcher` does. An empty
  threshold, or a label the file does not name, keeps --min_confidence, as
  evaluate means where it found none.

  Raises:
    InputError: an unreadable file, a header without `species` and
      `threshold`, a threshold that is not a number in [0, 1], or a label
      named twice; the message names the file and row.
  """
  flag = f"--thresholds={path}"
  try:
    with open(path, "rb") as f:
      content = f.read()
  except OSError as e:
    raise InputError(f"{flag}: {e.strerror}") from None
  try:
    text = content.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    raise InputError(f"{flag}: not UTF-8 text ({e.reason} at byte "
                     f"{e.start})") from None
  reader = csv.DictReader(io.StringIO(text, newline=""))
  match = label_matcher(labels)
  thresholds = np.full(len(labels), np.nan)
  named_at: dict[int, int] = {}
  unknown = []
  try:
    if not reader.fieldnames or not {"species", "threshold"} <= set(
        reader.fieldnames):
      raise InputError(f"{flag}:1: the header must name the columns "
                       f"species, threshold (found {reader.fieldnames})")
    for row in reader:
      where = f"{flag}:{reader.line_num}"
      name = (row["species"] or "").strip()
      cell = (row["threshold"] or "").strip()
      if not name:
        if cell:
          raise InputError(f"{where}: a threshold without a species")
        continue
      value = math.nan
      if cell:
        try:
          value = float(cell)
        except ValueError:
          value = math.nan
        if not 0 <= value <= 1:  # NaN too.
          raise InputError(f"{where}: threshold {cell!r} of {name!r} is "
                           "not a number between 0 and 1")
      found = match(name)
      if found is None:
        unknown.append(name)
        continue
      if found in named_at:
        raise InputError(f"{where}: {name!r} is "
                         f"{labels[found]['species']!r}, given a threshold "
                         f"on line {named_at[found]} too")
      named_at[found] = reader.line_num
      thresholds[found] = value
  except csv.Error as e:
    raise InputError(f"{flag}:{reader.line_num}: {e}") from None
  return ThresholdFile(thresholds, unknown,
                       hashlib.sha256(content).hexdigest()[:16])


def label_digest(labels: Sequence[dict]) -> str:
  """The label list's version: sha256 of its species names, in order."""
  text = "\n".join(row["species"] for row in labels)
  return hashlib.sha256(text.encode()).hexdigest()[:16]
