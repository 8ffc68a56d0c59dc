"""Per-window embeddings of recordings, kept on disk, searched by example.

    model = trained.load("WORKDIR_OR_BUNDLE")
    store = embedding_store.EmbeddingStore.create_or_open(
        "STORE", model, hop_seconds=1.5)
    problems = store.add(audio_paths)    # what is missing; resumable
    added, problems = store.add_from_predictions("PREDICTIONS")
    hits = store.search_by_example("call.wav", k=20)

A store holds, for every recording, the embedding of each of its windows
(`Classifier.infer`'s embedding, the input of the model's head) and the
windows' times. Windows are the prediction's (`inference.Predictor`: the
dense evaluation layout at the store's hop), so an embedding found here is
the one `predict --embeddings` writes for the same window, and
`add_from_predictions` takes a prediction folder's embeddings instead of
computing them (its settings.json must name the same model and hop).

Layout (local files; written by `add`, read memory-mapped):

    STORE/store.json      what made the embeddings: the model's
                          fingerprint, window, hop, embedding size
    STORE/index.json      the recordings (content digest, path, duration,
                          shard, first row, rows) and the shards, in order
    STORE/shards/NNNNN.embeddings.npy  float32 [rows, dim]
    STORE/shards/NNNNN.times.npy       float64 [rows, 2] window start, end (s)

A recording is known by its content (sha256 of its bytes): the same file
under two paths is embedded once, and a changed file again. `add` embeds
the recordings the index lacks, a group of them per shard; a shard's files
are written before the index names them (replaced whole), so an
interrupted `add` loses at most the group it was embedding. A store made
by another model (other variables, window or hop) is refused, never mixed.

Search is exact: cosine similarity of the query with every stored window,
shard by shard (memory holds one shard and the best `k` so far), both
centred on the store's mean embedding first: what every window shares
(the background, the features' offset) would otherwise dominate the
angle, most of all for embeddings not trained for it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator, Sequence

import jax
import numpy as np

from inatsounds_jax import audio
from inatsounds_jax import inference
from inatsounds_jax import registry
from inatsounds_jax import storage
from inatsounds_jax import tables
from inatsounds_jax import trained as trained_lib

STORE_FORMAT = 1
DESCRIPTION_FILE = "store.json"
INDEX_FILE = "index.json"
SHARDS_DIR = "shards"
EMBEDDINGS_SUFFIX = ".embeddings.npy"
TIMES_SUFFIX = ".times.npy"


class StoreError(registry.ConfigError):
  """A store this model or library version must not read or extend."""


def content_digest(path: str) -> str:
  """sha256 of a file's bytes: a recording's identity in a store.

  Raises:
    audio.AudioError: the file cannot be read (the message names it).
  """
  try:
    with open(path, "rb") as f:
      return hashlib.file_digest(f, "sha256").hexdigest()
  except OSError as e:
    raise audio.AudioError("unreadable file",
                           f"cannot read {path}: {e.strerror}") from e


def model_fingerprint(model: trained_lib.TrainedModel,
                      hop_seconds: float) -> str:
  """What decides a model's embeddings: its variables, its config and the
  hop; two stores share embeddings only when this agrees."""
  digest = hashlib.sha256()
  digest.update(json.dumps(model.config.to_dict(), sort_keys=True,
                           default=str).encode())
  digest.update(repr(float(hop_seconds)).encode())
  for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(
      jax.device_get(model.variables)), key=lambda item: str(item[0])):
    digest.update(str(path).encode())
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()[:32]


@dataclasses.dataclass(frozen=True)
class Recording:
  """A recording's windows in the store.

  Attributes:
    digest: `content_digest` of its file.
    path: the file it was read from (the first path it was added as).
    duration_s: its decoded length.
    shard: the shard holding its windows.
    first_row: its first window's row in the shard.
    num_rows: its windows.
  """
  digest: str
  path: str
  duration_s: float
  shard: int
  first_row: int
  num_rows: int


@dataclasses.dataclass(frozen=True)
class Hit:
  """A stored window near a query: its recording, times and similarity."""
  path: str
  digest: str
  start_s: float
  end_s: float
  score: float


def windows_in(times: np.ndarray, start_s: float, end_s: float
               ) -> np.ndarray:
  """`[windows]` bool: the windows (`times` `[windows, 2]`, start and end
  seconds) a span names: those inside it (a window's own span names it
  alone, a long span every window it covers), else, for a span shorter
  than a window, those holding it whole. Times agree to a tenth of a
  millisecond (a CSV's rounding)."""
  tolerance = 1e-4
  inside = (times[:, 0] >= start_s - tolerance) & (
      times[:, 1] <= end_s + tolerance)
  if inside.any():
    return inside
  return (times[:, 0] <= start_s + tolerance) & (
      times[:, 1] >= end_s - tolerance)


class EmbeddingStore:
  """A store's recordings and their windows' embeddings (module docstring).

  Open one with `open` (read only: search, read embeddings) or
  `create_or_open` (with the model that embeds, to `add` recordings).
  """

  def __init__(self, folder: str, description: dict,
               model: trained_lib.TrainedModel | None = None,
               batch_size: int = 32):
    self.folder = folder
    self.description = description
    self._model = model
    self._batch_size = batch_size
    self._predictor: inference.Predictor | None = None
    self._mean: np.ndarray | None = None
    index = _read_json(os.path.join(folder, INDEX_FILE), folder)
    self.num_shards = index["num_shards"]
    self.recordings = {row["digest"]: Recording(**row)
                       for row in index["recordings"]}

  @property
  def hop_seconds(self) -> float:
    return self.description["hop_seconds"]

  @property
  def embedding_dim(self) -> int:
    return self.description["embedding_dim"]

  @classmethod
  def open(cls, folder: str) -> EmbeddingStore:
    """A store to read (search, embeddings); `add` needs `create_or_open`.

    Raises:
      StoreError: not a store, or one of another format.
    """
    description = _read_json(os.path.join(folder, DESCRIPTION_FILE), folder)
    if description.get("store_format") != STORE_FORMAT:
      raise StoreError(f"{folder}: store format "
                       f"{description.get('store_format')!r}; this version "
                       f"reads {STORE_FORMAT}: make the store again")
    return cls(folder, description)

  @classmethod
  def create_or_open(cls, folder: str, model: trained_lib.TrainedModel,
                     hop_seconds: float = inference.DEFAULT_HOP_SECONDS,
                     batch_size: int = 32) -> EmbeddingStore:
    """The store at `folder` for `model`'s embeddings at `hop_seconds`:
    a new one, or the one an earlier run left (to resume).

    Raises:
      StoreError: `folder` holds a store of another model or hop, or other
        files.
      trained.InputKindError: a model that takes spectrogram images.
    """
    trained_lib.require_waveform_input(model, folder, "an embedding store")
    fingerprint = model_fingerprint(model, hop_seconds)
    description_path = os.path.join(folder, DESCRIPTION_FILE)
    if os.path.exists(description_path):
      store = cls.open(folder)
      if store.description["model_fingerprint"] != fingerprint:
        raise StoreError(
            f"{folder} holds embeddings of another model or hop (made by "
            f"{store.description['model']}, hop "
            f"{store.description['hop_seconds']} s); give a new folder, or "
            "the model and hop that made it")
      store._model, store._batch_size = model, batch_size
      return store
    if os.path.isdir(folder) and os.listdir(folder):
      raise StoreError(f"{folder} holds {sorted(os.listdir(folder))[:3]} and "
                       "is not an embedding store; give a new or empty folder")
    os.makedirs(os.path.join(folder, SHARDS_DIR), exist_ok=True)
    windows = model.windows(inference.stride_frames(hop_seconds,
                                                    model.model.frontend))
    storage.write_json(os.path.join(folder, INDEX_FILE),
                       {"num_shards": 0, "recordings": []})
    description = {
        "store_format": STORE_FORMAT,
        "model": str(model.config.get("model", "")),
        "model_fingerprint": fingerprint,
        "hop_seconds": hop_seconds,
        "window_seconds": windows.window_samples / audio.SAMPLE_RATE,
        "sample_rate": audio.SAMPLE_RATE,
        "embedding_dim": None,  # Known from the first embeddings.
    }
    storage.write_json(description_path, description)
    return cls(folder, description, model, batch_size)

  # -- Adding ------------------------------------------------------------------

  def add(self, paths: Sequence[str], flush_every: int = 64
          ) -> list[tuple[str, str]]:
    """Embeds the recordings at `paths` the store lacks; returns the
    problems (path, reason) of files that could not be read or decoded,
    which are left out (and tried again by a later `add`).

    Every `flush_every` recordings become a shard, recorded in the index,
    so a later `add` resumes after the last one.
    """
    if self._model is None:
      raise StoreError(f"{self.folder} was opened to read; open it with "
                       "create_or_open(folder, model) to add recordings")
    problems, pending, seen = [], [], set(self.recordings)
    for path in paths:
      try:
        digest = content_digest(path)
      except audio.AudioError as e:
        problems.append((path, str(e)))
        continue
      if digest not in seen:
        seen.add(digest)
        pending.append((path, digest))
    for start in range(0, len(pending), flush_every):
      problems += self._add_shard(pending[start:start + flush_every])
    return problems

  def _add_shard(self, group: list[tuple[str, str]]
                 ) -> list[tuple[str, str]]:
    if self._predictor is None:
      self._predictor = inference.Predictor(
          self._model, hop_seconds=self.hop_seconds,
          batch_size=self._batch_size)
    digests = dict(group)
    found, problems = [], []
    for path, result in self._predictor.predict_files(
        [(path, np.nan, np.nan) for path, _ in group]):
      if isinstance(result, Exception):
        problems.append((path, str(result)))
        continue
      found.append((path, digests[path], float(result.duration_s),
                    result.embeddings,
                    np.stack([result.start_s, result.end_s], axis=1)))
    self._write_shard(found)
    return problems

  def _write_shard(self, found: list[tuple[str, str, float, np.ndarray,
                                           np.ndarray]]) -> None:
    """One shard of (path, digest, duration, embeddings, times) per
    recording, then the index naming it."""
    if not found:
      return
    rows, first = [], 0
    for path, digest, duration, embeddings, _ in found:
      rows.append(Recording(digest=digest, path=path, duration_s=duration,
                            shard=self.num_shards, first_row=first,
                            num_rows=len(embeddings)))
      first += len(embeddings)
    base = self._shard_base(self.num_shards)
    np.save(base + EMBEDDINGS_SUFFIX,
            np.concatenate([f[3] for f in found]).astype(np.float32))
    np.save(base + TIMES_SUFFIX,
            np.concatenate([f[4] for f in found]).astype(np.float64))
    if self.description["embedding_dim"] is None:
      self.description["embedding_dim"] = int(found[0][3].shape[1])
      storage.write_json(os.path.join(self.folder, DESCRIPTION_FILE),
                         self.description)
    self.num_shards += 1
    self._mean = None
    self.recordings.update((row.digest, row) for row in rows)
    storage.write_json(os.path.join(self.folder, INDEX_FILE), {
        "num_shards": self.num_shards,
        "recordings": [dataclasses.asdict(r)
                       for r in self.recordings.values()]})

  def add_from_predictions(self, folder: str, flush_every: int = 64
                           ) -> tuple[int, list[tuple[str, str]]]:
    """Takes the embeddings `predict --embeddings` wrote into `folder`
    instead of computing them: (recordings added, problems).

    The folder's settings.json must name this store's model (the same
    variables and config) and hop; each recording of its `--input` whose
    embeddings file is complete and which the store lacks is added (the
    windows are the same ones: the prediction's). Recordings without a
    file (not predicted yet, or failed) are problems, for `add`.

    Raises:
      StoreError: no settings.json, another model or hop, or a store
        opened to read only.
    """
    if self._model is None:
      raise StoreError(f"{self.folder} was opened to read; open it with "
                       "create_or_open(folder, model) to add recordings")
    settings_path = os.path.join(folder, tables.SETTINGS_FILE)
    try:
      with open(settings_path, encoding="utf-8") as f:
        settings = json.load(f)
    except (OSError, ValueError) as e:
      raise StoreError(f"{settings_path}: not a prediction folder's "
                       f"settings ({e})") from None
    fmt = settings.get("embeddings") or ""
    if not fmt:
      raise StoreError(f"{folder}: predict wrote no embeddings there (run "
                       "it with --embeddings=npz or parquet)")
    hop = float(settings.get("hop_seconds", -1.0))
    frontend = self._model.model.frontend
    if (inference.stride_frames(hop, frontend) != inference.stride_frames(
        self.hop_seconds, frontend)
        or model_fingerprint(trained_lib.load(settings["model"]),
                             self.hop_seconds)
        != self.description["model_fingerprint"]):
      raise StoreError(
          f"{folder} holds embeddings of {settings.get('model')} at a "
          f"{hop} s hop; this store is of {self.description['model']} at "
          f"{self.hop_seconds} s")
    files = inference.find_audio(settings["input"])
    names = tables.output_names([relative for _, relative in files])
    found, problems, seen, added = [], [], set(self.recordings), 0
    for (path, _), name in zip(files, names):
      arrays_path = tables.output_paths(os.path.join(folder, name), [],
                                        fmt)[fmt]
      if not os.path.exists(arrays_path):
        problems.append((path, f"no embeddings file {arrays_path}"))
        continue
      try:
        digest = content_digest(path)
      except audio.AudioError as e:
        problems.append((path, str(e)))
        continue
      if digest in seen:
        continue
      seen.add(digest)
      arrays = tables.read_embeddings(arrays_path)
      times = np.stack([arrays["start_s"], arrays["end_s"]], axis=1)
      found.append((path, digest, float(audio.header_seconds(path)
                                        or times[-1, 1]),
                    arrays["embeddings"], times))
      if len(found) == flush_every:
        self._write_shard(found)
        added, found = added + len(found), []
    self._write_shard(found)
    return added + len(found), problems

  # -- Reading -----------------------------------------------------------------

  def _shard_base(self, shard: int) -> str:
    return os.path.join(self.folder, SHARDS_DIR, f"{shard:05d}")

  def shard(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings `[rows, dim]`, times `[rows, 2]`) of a shard,
    memory-mapped."""
    base = self._shard_base(shard)
    return (np.load(base + EMBEDDINGS_SUFFIX, mmap_mode="r"),
            np.load(base + TIMES_SUFFIX, mmap_mode="r"))

  def windows_of(self, digest: str) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings `[windows, dim]`, times `[windows, 2]`) of a recording
    (by `content_digest`), in memory."""
    row = self.recordings[digest]
    embeddings, times = self.shard(row.shard)
    rows = slice(row.first_row, row.first_row + row.num_rows)
    return np.array(embeddings[rows]), np.array(times[rows])

  def embed_clip(self, path: str, start_s: float | None = None,
                 end_s: float | None = None) -> np.ndarray:
    """The mean embedding of a clip's windows (a query by example), from
    the store when it holds the clip, else from the model (which adds it
    to the store); with `start_s`/`end_s`, of the windows that span names
    (`windows_in`).

    Raises:
      audio.AudioError: the clip cannot be read.
      StoreError: a clip the store lacks, in a store opened to read, or a
        span naming no window.
    """
    digest = content_digest(path)
    if digest not in self.recordings:
      if self._model is None:
        raise StoreError(f"{path} is not in {self.folder}: open the store "
                         "with its model (create_or_open) to embed it")
      problems = self.add([path])
      if problems:
        raise audio.AudioError("unreadable audio", problems[0][1])
    embeddings, times = self.windows_of(digest)
    if start_s is None and end_s is None:
      return embeddings.mean(axis=0)
    chosen = windows_in(times, -np.inf if start_s is None else start_s,
                        np.inf if end_s is None else end_s)
    if not chosen.any():
      raise StoreError(
          f"{path}: no window lies in or holds {start_s}..{end_s} s (its "
          f"{len(times)} windows span {times[0, 0]:.2f}..{times[-1, 1]:.2f}"
          " s)")
    return embeddings[chosen].mean(axis=0)

  def mean_embedding(self) -> np.ndarray:
    """`[dim]` the mean of every stored window's embedding."""
    if self._mean is None:
      total, count = 0.0, 0
      for shard in range(self.num_shards):
        embeddings, _ = self.shard(shard)
        total = total + np.asarray(embeddings, np.float64).sum(axis=0)
        count += len(embeddings)
      self._mean = (total / max(count, 1)).astype(np.float32)
    return self._mean

  def search(self, query: np.ndarray, k: int = 10,
             exclude: Sequence[str] = ()) -> list[Hit]:
    """The `k` stored windows most similar to `query` `[dim]` (cosine,
    centred: module docstring), best first; windows of recordings whose
    digest is in `exclude` are skipped (e.g. the example itself)."""
    mean = self.mean_embedding()
    query = np.asarray(query, np.float32) - mean
    query = query / max(float(np.linalg.norm(query)), 1e-12)
    by_shard: dict[int, list[Recording]] = {}
    for row in self.recordings.values():
      by_shard.setdefault(row.shard, []).append(row)
    best: list[tuple[float, Recording, float, float]] = []
    for shard, rows in sorted(by_shard.items()):
      embeddings, times = self.shard(shard)
      owner = np.empty(len(embeddings), np.int64)
      for i, row in enumerate(rows):
        owner[row.first_row:row.first_row + row.num_rows] = i
      centred = np.asarray(embeddings, np.float32) - mean
      scores = centred @ query / np.maximum(
          np.linalg.norm(centred, axis=1), 1e-12)
      excluded = [i for i, row in enumerate(rows) if row.digest in exclude]
      scores[np.isin(owner, excluded)] = -np.inf
      top = np.argsort(-scores, kind="stable")[:k]
      best += [(float(scores[i]), rows[owner[i]], float(times[i, 0]),
                float(times[i, 1])) for i in top if np.isfinite(scores[i])]
      best = sorted(best, key=lambda hit: -hit[0])[:k]
    return [Hit(path=row.path, digest=row.digest, start_s=start, end_s=end,
                score=score) for score, row, start, end in best]

  def search_by_example(self, path: str, k: int = 10) -> list[Hit]:
    """`search` with a clip's mean embedding, its own windows excluded."""
    return self.search(self.embed_clip(path), k,
                       exclude=(content_digest(path),))

  def iter_windows(self) -> Iterator[tuple[Recording, np.ndarray,
                                           np.ndarray]]:
    """(recording, embeddings, times) of every stored recording, shard by
    shard (memory holds one recording's windows)."""
    for row in sorted(self.recordings.values(),
                      key=lambda r: (r.shard, r.first_row)):
      yield (row,) + self.windows_of(row.digest)


def _read_json(path: str, folder: str):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except FileNotFoundError:
    raise StoreError(f"{folder} is not an embedding store (no "
                     f"{os.path.basename(path)})") from None
  except json.JSONDecodeError as e:
    raise StoreError(f"{path}: damaged ({e.msg} at line {e.lineno})"
                     ) from None
