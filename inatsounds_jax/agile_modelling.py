"""Agile modelling: search a store by example, label, train, label more.

    store = agile_modelling.embed("STORE", "MODEL", "RECORDINGS")
    rows = agile_modelling.search(store, "call.wav", start_s=2.0, end_s=5.0)
    agile_modelling.write_windows("search.csv", rows)   # the user labels it
    report = agile_modelling.train_round(
        "STORE", "MODEL", ["search.csv"], "round_1")
    # round_1/model: a bundle (predict --model=round_1/model);
    # round_1/next.csv: the windows to label next; round 2 trains on
    # round_1/labels.csv and the labelled round_1/next.csv.

The loop of Perch's agile modelling (Dumoulin et al. 2025, "The Search for
Squawk: Agile Modeling in Bioacoustics", arXiv:2505.03071; its library is
perch-hoplite): the recordings' windows are embedded once
(`embedding_store`, the base model's embeddings, the prediction's
windows); a clip (or a span of one) finds the windows nearest it; the user
labels them in the CSV; a classifier on the stored embeddings of the
labelled windows scores every stored window; its most confident windows
per class (`detections.csv`) and its least certain ones (`next.csv`) go to
the user, who labels those next.

Labels CSVs (every CSV written here is one): columns `recording` (the
path the store holds), `start`, `end` (seconds) and `label`; others are
ignored. A row labels the stored windows its span names
(`embedding_store.windows_in`): a window's own row names it alone, a
longer span every window inside it, a call shorter than a window the
windows holding it. `label` is a species (BirdNET's
`Genus species_Common Name` gives the common name too), or `negative`
(also `noise`, `other`, `background`, `silence`): none of the species; a
window with several rows carries all their species. Rows that cannot be
used (an unknown recording, `end` not after `start`, no label, a span
holding no window) are reported by file and row, and the rest are used.

Probes (`probe`):

- `linear`: `custom_classifier.fit_head` (sigmoid cross-entropy; a
  labelled window without a species is negative for every class, and so
  is every window of the other classes).
- `prototype`: one prototype per class, the mean of its windows'
  embeddings centred on the store's mean and scaled to unit length (the
  search's geometry), itself scaled to unit length; a window's score is
  sigmoid(temperature x cosine(window, prototype)): 0.5 for a window
  orthogonal to the prototype (as near the class as the store's average
  window), near 1 along it. Nothing is trained, and negative windows do
  not enter it. Bird-MAE (Rauch et al. 2025, "Can Masked Autoencoders
  Also Listen to Birds?", arXiv:2504.12880) learns its prototypes on
  frozen features and finds prototypical probing far ahead of linear
  probing with few labels; the class mean is its training-free form.

Every probe is one linear layer, so a round's classifier is an ordinary
bundle (`custom_classifier.custom_model`, its head replaced; sigmoid
outputs). No backbone normalises its embedding, and a linear layer cannot
divide by each window's length, so the prototype head takes every
window's centred length to be the mean length of the labelled windows:
its classes rank within a window exactly as the cosines do, and across
windows as the dot product with the prototype does (`Prototypes.cosine`
is the exact score; `benchmarks/few_shot.py` measures both). The store is
scored with the round's head itself, so `detections.csv` holds what the
bundle predicts.

Uncertainty (`next.csv`): margin sampling on sigmoid outputs, each
window's margin the smallest |p - 0.5| over the classes (the class nearest
its decision), smallest first, labelled windows left out.

A round's folder:

    ROUND/model/          the bundle
    ROUND/labels.csv      every labelled window it trained on (a labels CSV)
    ROUND/detections.csv  the top windows of each class
    ROUND/next.csv        the most uncertain unlabelled windows, `label`
                          empty, `class` the class nearest its boundary
    ROUND/report.json     classes, counts, problems, settings
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import os
import sys
from collections.abc import Sequence

import numpy as np

import inatsounds_jax
from inatsounds_jax import audio
from inatsounds_jax import custom_classifier
from inatsounds_jax import embedding_store
from inatsounds_jax import export
from inatsounds_jax import inference
from inatsounds_jax import registry
from inatsounds_jax import storage
from inatsounds_jax import trained as trained_lib

PROBES = ("linear", "prototype")
NEGATIVE_LABELS = ("negative",) + custom_classifier.NEGATIVE_FOLDERS
WINDOW_COLUMNS = ("recording", "start", "end", "score", "label")
REQUIRED_COLUMNS = ("recording", "start", "end", "label")
MODEL_DIR = "model"
LABELS_FILE = "labels.csv"
DETECTIONS_FILE = "detections.csv"
NEXT_FILE = "next.csv"
REPORT_FILE = "report.json"
_HEAD_DEFAULTS = custom_classifier.Settings("", "", "")


class AgileError(registry.ConfigError):
  """Labels, a store or a round folder the loop cannot use."""


@dataclasses.dataclass(frozen=True)
class RoundSettings:
  """How a round's classifier is trained and what it shows next.

  Attributes:
    probe: one of `PROBES` (module docstring).
    steps, learning_rate, weight_decay: the linear probe's optimisation
      (`custom_classifier.fit_head`).
    temperature: the prototype probe's logit per unit of cosine.
    detections_per_class: rows of each class in detections.csv.
    next_windows: rows of next.csv.
    overwrite: replace an earlier round in the folder.
  """
  probe: str = "linear"
  steps: int = _HEAD_DEFAULTS.steps
  learning_rate: float = _HEAD_DEFAULTS.learning_rate
  weight_decay: float = _HEAD_DEFAULTS.weight_decay
  temperature: float = 10.0
  detections_per_class: int = 20
  next_windows: int = 20
  overwrite: bool = False


# ---------------------------------------------------------------------------
# Embedding and search.
# ---------------------------------------------------------------------------

def open_store(folder: str, model: str | trained_lib.TrainedModel | None
               ) -> embedding_store.EmbeddingStore:
  """The store at `folder`, to read (`model` None) or with the model that
  made it (to embed new clips), at the store's own hop.

  Raises:
    embedding_store.StoreError: not a store, or one of another model.
  """
  store = embedding_store.EmbeddingStore.open(folder)
  if model is None:
    return store
  if isinstance(model, str):
    model = trained_lib.load(model)
  return embedding_store.EmbeddingStore.create_or_open(
      folder, model, hop_seconds=store.hop_seconds)


def embed(folder: str, model: str | trained_lib.TrainedModel, inputs: str,
          hop_seconds: float = inference.DEFAULT_HOP_SECONDS,
          batch_size: int = 32, log=None, predictions: str = ""
          ) -> embedding_store.EmbeddingStore:
  """Embeds the recordings under `inputs` (a file, folder or list:
  `audio.find_audio`) into the store at `folder` (new, or resumed: only
  what it lacks is embedded); unreadable files are logged and left out.
  `predictions`: a folder `predict --embeddings` wrote with the same model
  and hop, whose embeddings are taken first
  (`EmbeddingStore.add_from_predictions`).

  Raises:
    embedding_store.StoreError: `folder` holds another model's store or
      other files.
    audio.NoAudioError: no recording under `inputs`.
  """
  log = log or functools.partial(print, file=sys.stderr)
  if isinstance(model, str):
    model = trained_lib.load(model)
  store = embedding_store.EmbeddingStore.create_or_open(
      folder, model, hop_seconds=hop_seconds, batch_size=batch_size)
  if predictions:
    added, _ = store.add_from_predictions(predictions)
    log(f"took the embeddings of {added} recordings from {predictions}")
  paths = [path for path, _ in audio.find_audio(inputs)]
  for path, reason in store.add(paths):
    log(f"skipped {path}: {reason}")
  return store


def search(store: embedding_store.EmbeddingStore, example: str, k: int = 20,
           start_s: float | None = None, end_s: float | None = None
           ) -> list[dict]:
  """The `k` stored windows nearest the example clip's windows (in
  [start_s, end_s] when given; `EmbeddingStore.embed_clip`), best first,
  as labels CSV rows with `label` empty. The example's own windows are
  searched too: a stored example finds itself first."""
  query = store.embed_clip(example, start_s, end_s)
  return [{"recording": hit.path, "start": hit.start_s, "end": hit.end_s,
           "score": hit.score, "label": ""}
          for hit in store.search(query, k)]


def write_windows(path: str, rows: Sequence[dict],
                  columns: Sequence[str] = WINDOW_COLUMNS) -> None:
  """Writes window rows as a labels CSV (`columns` in order)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, columns, lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    for row in rows:
      writer.writerow({c: _cell(row.get(c, "")) for c in columns})


def _cell(value):
  return round(value, 6) if isinstance(value, float) else value


# ---------------------------------------------------------------------------
# Labels.
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class Labels:
  """Labelled windows of a store.

  Attributes:
    classes: label rows (species, common_name), sorted by species.
    windows: (recording digest, window index) -> the classes it carries
      (empty: a negative), in the order first labelled.
    problems: "FILE row N: reason" of every row left out.
  """
  classes: list[dict]
  windows: dict[tuple[str, int], set[int]]
  problems: list[str]


def read_labels(paths: Sequence[str],
                store: embedding_store.EmbeddingStore) -> Labels:
  """The labelled windows of labels CSVs (module docstring).

  Raises:
    AgileError: a file that cannot be read or lacks a required column.
  """
  by_path = {}
  for row in store.recordings.values():
    by_path.setdefault(row.path, row.digest)
    by_path.setdefault(os.path.abspath(row.path), row.digest)
  times_of: dict[str, np.ndarray] = {}
  named: dict[tuple[str, int], list[dict]] = {}
  problems = []
  for path in paths:
    for number, row in _csv_rows(path):
      where = f"{path} row {number}"
      digest = by_path.get(row["recording"]) or by_path.get(
          os.path.abspath(row["recording"]))
      label = row["label"].strip()
      try:
        start, end = float(row["start"]), float(row["end"])
      except ValueError:
        problems.append(f"{where}: start {row['start']!r} and end "
                        f"{row['end']!r} must be seconds")
        continue
      if not label:
        problems.append(f"{where}: no label (left out)")
      elif digest is None:
        problems.append(f"{where}: {row['recording']!r} is not in the store "
                        f"{store.folder} (embed it first)")
      elif not end > start:
        problems.append(f"{where}: end {end} is not after start {start}")
      else:
        if digest not in times_of:
          times_of[digest] = store.windows_of(digest)[1]
        chosen = np.flatnonzero(embedding_store.windows_in(
            times_of[digest], start, end))
        if not len(chosen):
          problems.append(f"{where}: no stored window lies in or holds "
                          f"{start}..{end} s of {row['recording']}")
        for index in chosen:
          named.setdefault((digest, int(index)), []).append(
              None if label.lower() in NEGATIVE_LABELS
              else custom_classifier.parse_label(label))
  species = {}
  for found in named.values():
    for label in found:
      if label is not None and label["common_name"]:
        species[label["species"]] = label
      elif label is not None:
        species.setdefault(label["species"], label)
  classes = [species[name] for name in sorted(species)]
  index = {row["species"]: k for k, row in enumerate(classes)}
  windows = {key: {index[label["species"]] for label in found
                   if label is not None}
             for key, found in named.items()}
  return Labels(classes=classes, windows=windows, problems=problems)


def _csv_rows(path: str):
  """(row number, row) of a labels CSV; the header is row 1."""
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      reader = csv.DictReader(f)
      missing = [c for c in REQUIRED_COLUMNS
                 if c not in (reader.fieldnames or [])]
      if missing:
        raise AgileError(f"{path}: no column {', '.join(missing)} (a labels "
                         f"CSV has {', '.join(REQUIRED_COLUMNS)})")
      rows = [(number, {k: (v or "") for k, v in row.items()})
              for number, row in enumerate(reader, start=2)]
  except OSError as e:
    raise AgileError(f"cannot read {path}: {e.strerror}") from None
  return rows


def labelled_windows(store: embedding_store.EmbeddingStore, labels: Labels
                     ) -> tuple[np.ndarray, np.ndarray]:
  """(embeddings `[windows, dim]`, multi-hot targets `[windows, classes]`)
  of the labelled windows, in `labels.windows`' order."""
  embeddings, targets = [], []
  cached: dict[str, np.ndarray] = {}
  for (digest, index), classes in labels.windows.items():
    if digest not in cached:
      cached[digest] = store.windows_of(digest)[0]
    embeddings.append(cached[digest][index])
    hot = np.zeros(len(labels.classes), np.float32)
    hot[sorted(classes)] = 1.0
    targets.append(hot)
  return np.stack(embeddings), np.stack(targets)


# ---------------------------------------------------------------------------
# Probes.
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Prototypes:
  """Class prototypes in the search's geometry (module docstring).

  Attributes:
    directions: `[classes, dim]` unit prototypes.
    mean: `[dim]` the centre (the store's mean embedding).
    length: the labelled windows' mean centred length (the head's stand-in
      for each window's own).
  """
  directions: np.ndarray
  mean: np.ndarray
  length: float

  @classmethod
  def fit(cls, embeddings: np.ndarray, targets: np.ndarray,
          mean: np.ndarray) -> Prototypes:
    centred = embeddings - mean
    lengths = np.linalg.norm(centred, axis=1)
    unit = centred / np.maximum(lengths, 1e-12)[:, None]
    sums = targets.T @ unit
    directions = sums / np.maximum(
        np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return cls(directions=directions.astype(np.float32),
               mean=np.asarray(mean, np.float32),
               length=float(max(lengths.mean(), 1e-12)))

  def cosine(self, embeddings: np.ndarray) -> np.ndarray:
    """`[windows, classes]` the exact cosine of each centred window with
    each prototype."""
    centred = embeddings - self.mean
    unit = centred / np.maximum(
        np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)
    return unit @ self.directions.T

  def head(self, temperature: float) -> custom_classifier.Head:
    """logits = temperature x (embedding - mean) . direction / length."""
    kernel = self.directions.T * (temperature / self.length)
    return custom_classifier.Head(
        kernel=kernel.astype(np.float32),
        bias=(-self.mean @ kernel).astype(np.float32))


def fit_probe(embeddings: np.ndarray, targets: np.ndarray,
              mean: np.ndarray, settings: RoundSettings
              ) -> custom_classifier.Head:
  """The round's head (`settings.probe`) on labelled windows; `mean`: the
  store's mean embedding (the prototypes' centre)."""
  if settings.probe == "prototype":
    return Prototypes.fit(embeddings, targets, mean).head(
        settings.temperature)
  return custom_classifier.fit_head(
      embeddings, targets, steps=settings.steps,
      learning_rate=settings.learning_rate,
      weight_decay=settings.weight_decay)


def sigmoid(logits: np.ndarray) -> np.ndarray:
  return 1.0 / (1.0 + np.exp(-logits))


def uncertain_windows(probabilities: np.ndarray, labelled: np.ndarray,
                      k: int) -> tuple[np.ndarray, np.ndarray]:
  """Margin sampling: (indices of the `k` unlabelled windows with the
  smallest margin, smallest first; each window's nearest class).

  Args:
    probabilities: `[windows, classes]` sigmoid outputs.
    labelled: `[windows]` bool, windows already labelled (never chosen).
    k: how many.
  """
  distance = np.abs(probabilities - 0.5)
  nearest = distance.argmin(axis=1)
  margin = distance.min(axis=1)
  margin = np.where(labelled, np.inf, margin)
  order = np.argsort(margin, kind="stable")[:k]
  order = order[np.isfinite(margin[order])]
  return order, nearest[order]


# ---------------------------------------------------------------------------
# Rounds.
# ---------------------------------------------------------------------------

def score_store(store: embedding_store.EmbeddingStore,
                head: custom_classifier.Head, classes: Sequence[dict],
                labelled: Labels, round_folder: str,
                settings: RoundSettings) -> dict:
  """Scores every stored window with `head` (columns: `classes`); writes
  detections.csv and next.csv (without `labelled`'s windows) into
  `round_folder`; returns their row counts.

  Memory holds every window's scores (windows x classes floats)."""
  paths, starts, ends, owners, scores, labelled_rows = [], [], [], [], [], []
  for row, embeddings, times in store.iter_windows():
    paths.append(row.path)
    starts.append(times[:, 0])
    ends.append(times[:, 1])
    owners.append(np.full(len(times), len(paths) - 1))
    scores.append(sigmoid(head.logits(embeddings)))
    labelled_rows.append([(row.digest, i) in labelled.windows
                          for i in range(len(times))])
  starts, ends = np.concatenate(starts), np.concatenate(ends)
  owners, scores = np.concatenate(owners), np.concatenate(scores)
  is_labelled = np.concatenate(labelled_rows).astype(bool)

  def window(i, score, **extra):
    return dict(recording=paths[owners[i]], start=float(starts[i]),
                end=float(ends[i]), score=float(score), label="", **extra)

  detections = []
  for k, label in enumerate(classes):
    top = np.argsort(-scores[:, k], kind="stable")[
        :settings.detections_per_class]
    detections += [window(i, scores[i, k], **{
        "class": label["species"], "labelled": bool(is_labelled[i])})
                   for i in top]
  chosen, nearest = uncertain_windows(scores, is_labelled,
                                      settings.next_windows)
  upcoming = [window(i, scores[i, c], **{
      "class": classes[c]["species"],
      "margin": float(abs(scores[i, c] - 0.5))})
              for i, c in zip(chosen, nearest)]
  write_windows(os.path.join(round_folder, DETECTIONS_FILE), detections,
                ("class",) + WINDOW_COLUMNS[:4] + ("labelled", "label"))
  write_windows(os.path.join(round_folder, NEXT_FILE), upcoming,
                WINDOW_COLUMNS[:4] + ("class", "margin", "label"))
  return {"windows_scored": int(len(scores)),
          "detections": len(detections), "next": len(upcoming)}


def _labelled_rows(store: embedding_store.EmbeddingStore, labels: Labels
                   ) -> list[dict]:
  """labels.csv's rows: one per labelled window and label."""
  rows = []
  for (digest, index), classes in labels.windows.items():
    times = store.windows_of(digest)[1][index]
    for label in ([labels.classes[k] for k in sorted(classes)] or [None]):
      name = "negative" if label is None else "_".join(
          filter(None, (label["species"], label["common_name"])))
      rows.append({"recording": store.recordings[digest].path,
                   "start": float(times[0]), "end": float(times[1]),
                   "label": name})
  return rows


def _check_round_folder(folder: str, overwrite: bool) -> None:
  if os.path.isdir(folder) and os.listdir(folder) and not overwrite:
    raise AgileError(f"{folder} holds {sorted(os.listdir(folder))[:3]}; "
                     "give a new round folder, or --overwrite to replace "
                     "that round")


def train_round(store_folder: str, base: str, label_files: Sequence[str],
                round_folder: str, settings: RoundSettings = RoundSettings(),
                log=None) -> dict:
  """One round: labels -> a probe on the stored embeddings -> the round's
  bundle, labels.csv, detections.csv, next.csv and report.json in
  `round_folder` (module docstring).

  Args:
    store_folder: the store the labels name windows of.
    base: the model (workdir or bundle) that made the store.
    label_files: labels CSVs.
    round_folder: new (or, with `settings.overwrite`, an earlier round).
    settings: the probe and what to show.
    log: a callable taking a line; default stderr.

  Returns:
    The report (also report.json and the bundle's `custom_training`).

  Raises:
    AgileError: no usable label, an unknown probe, a used round folder.
    embedding_store.StoreError: the store was made by another model.
    custom_classifier.CustomError: a base whose head cannot be replaced.
  """
  log = log or functools.partial(print, file=sys.stderr)
  if settings.probe not in PROBES:
    raise AgileError(f"probe {settings.probe!r}; choose one of "
                     f"{', '.join(PROBES)}")
  _check_round_folder(round_folder, settings.overwrite)
  model = trained_lib.load(base)
  store = open_store(store_folder, model)
  labels = read_labels(label_files, store)
  for line in labels.problems:
    log(f"warning: {line}")
  if not labels.classes:
    raise AgileError(f"{', '.join(label_files)}: no window is labelled "
                     "with a species (fill the label column)")
  embeddings, targets = labelled_windows(store, labels)
  for k, row in enumerate(labels.classes):
    if targets[:, k].all() and settings.probe == "linear":
      log(f"warning: every labelled window is {row['species']!r}: the "
          "linear probe has no negative of it (label some windows "
          "'negative')")
  head = fit_probe(embeddings, targets, store.mean_embedding(), settings)
  custom = custom_classifier.custom_model(model, labels.classes, head, base)
  os.makedirs(round_folder, exist_ok=True)
  write_windows(os.path.join(round_folder, LABELS_FILE),
                _labelled_rows(store, labels), REQUIRED_COLUMNS)
  scored = score_store(store, head, labels.classes, labels, round_folder,
                       settings)
  report = {
      "library_version": inatsounds_jax.__version__,
      "probe": settings.probe,
      "settings": dataclasses.asdict(settings),
      "base": base,
      "store": {"folder": store_folder,
                "model_fingerprint": store.description["model_fingerprint"]},
      "label_files": list(label_files),
      "classes": [dict(row, windows=int(targets[:, k].sum()))
                  for k, row in enumerate(labels.classes)],
      "negative_windows": int((targets.sum(axis=1) == 0).sum()),
      "problems": labels.problems,
      "scored": scored,
  }
  storage.write_json(os.path.join(round_folder, REPORT_FILE), report)
  export.write_bundle(custom, os.path.join(round_folder, MODEL_DIR),
                      overwrite=settings.overwrite, description={
                          "training_data": {"dataset": "agile labels",
                                            "options": {
                                                "labels": list(label_files),
                                                "store": store_folder}},
                          "custom_training": report})
  return report


def rescore_round(store_folder: str, round_folder: str,
                  settings: RoundSettings = RoundSettings()) -> dict:
  """Scores the store again with an earlier round's bundle (e.g. after
  embedding more recordings): its detections.csv and next.csv, the
  windows in its labels.csv left out of next.csv.

  Raises:
    AgileError: not a round folder, or a round of another store's model.
  """
  try:
    with open(os.path.join(round_folder, REPORT_FILE), encoding="utf-8") as f:
      report = json.load(f)
  except (OSError, json.JSONDecodeError):
    raise AgileError(f"{round_folder} is not a round folder (no readable "
                     f"{REPORT_FILE})") from None
  store = open_store(store_folder, None)
  if (report["store"]["model_fingerprint"]
      != store.description["model_fingerprint"]):
    raise AgileError(f"{round_folder} was trained on another model's "
                     f"embeddings than {store_folder}'s")
  bundle = os.path.join(round_folder, MODEL_DIR)
  model = trained_lib.load(bundle)
  labels = read_labels([os.path.join(round_folder, LABELS_FILE)], store)
  return score_store(store, custom_classifier.model_head(model, bundle),
                     model.labels, labels, round_folder, settings)
