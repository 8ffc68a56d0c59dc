"""Custom classifiers: a model's embeddings, the user's sounds, a new head.

    settings = custom_classifier.Settings(train="FOLDERS", base="MODEL",
                                          output="BUNDLE")
    report = custom_classifier.train_linear(settings)

The training sounds are laid out as BirdNET-Analyzer's `train` takes them:
one folder per class under `train`, the folder's name the label (BirdNET's
`Genus species_Common Name` gives the species and its common name), a
folder named like `NEGATIVE_FOLDERS` (noise, other, background, silence)
for sounds that are none of the classes; a recording in several class
folders (the same bytes) carries all their labels. Any audio the library
decodes, at any rate; clips or whole recordings, every window of which
(the prediction's windows, `inference.Predictor`) carries its folder's
labels.

Linear mode (`train_linear`): the base model's embeddings of every window
(`embedding_store`, kept in the work folder, so a second run embeds only
what is new), then a linear head on them with optax, and a bundle that is
the base model with that head: the same module family (`trained.
build_model` with the new class count), its head's kernel and bias
replaced, or extended after the base classes (`keep_base_classes`). The
embedding is the head's input (`layers.backbone_output`), so the bundle
computes exactly the head that was trained; this is checked on one window
before the bundle is written.

Outputs are sigmoids (multilabel; negatives' windows are all-zero
targets), so no class is forced on a window of noise. Keeping the classes
of a base trained with a softmax loss keeps its softmax: the new columns
are trained under it, each window's likelihood being the probability of
any of its labels (a negative window's labels: the base classes).

Validation (`validation` folders, or `validation_fraction` of each class's
recordings) gives each new class its window AP and a threshold (the target
precision's, else the best F1's: `metrics`), written as `thresholds.csv`
for `predict --thresholds`, with the per-class counts and the settings in
`report.json` and in the bundle's config.json (`custom_training`).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import functools
import math
import os
import sys
from collections.abc import Sequence

from absl import flags
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

import inatsounds_jax
from inatsounds_jax import audio
from inatsounds_jax import embedding_store
from inatsounds_jax import export
from inatsounds_jax import inference
from inatsounds_jax import jobs
from inatsounds_jax import losses
from inatsounds_jax import metrics
from inatsounds_jax import registry
from inatsounds_jax import storage
from inatsounds_jax import trained as trained_lib
from inatsounds_jax.models import classifier as classifier_lib

# Folder names (any case) of sounds that are none of the classes, as in
# BirdNET-Analyzer's training.
NEGATIVE_FOLDERS = ("noise", "other", "background", "silence")
# The multilabel loss a custom head is trained with (every unlabelled
# entry negative), recorded in its config so the bundle says "sigmoid".
MULTILABEL_LOSS = "assume_negative_bce"
STORE_DIR = "embeddings"
REPORT_FILE = "report.json"
THRESHOLDS_FILE = "thresholds.csv"
THRESHOLD_COLUMNS = ("species", "threshold", "common_name", "rule",
                     "precision", "recall", "f1", "validation_positives")


class CustomError(registry.ConfigError):
  """Training folders, a base model or settings a custom head cannot use."""


@dataclasses.dataclass(frozen=True)
class Settings:
  """How a custom classifier is made (recorded in its report and bundle).

  Attributes:
    train: the class folders.
    base: the base model (a training workdir or a bundle).
    output: the bundle to write.
    work_dir: the embedding store and the report ("": `output` + ".work").
    validation: class folders to validate on ("": `validation_fraction`
      of each class's recordings).
    validation_fraction: of each class's recordings (one stays in
      training), when `validation` is "".
    keep_base_classes: the base model's classes first, the new ones after.
    hop_seconds: the windows' hop (as prediction's).
    steps, learning_rate, weight_decay: the head's optimisation (Adam with
      decoupled weight decay, full batch, on standardised embeddings).
    target_precision: thresholds reach it where they can.
    seed: the validation split's.
    batch_size: windows per model call while embedding.
    overwrite: replace an earlier bundle at `output`.
    mode: "linear" (a head on frozen embeddings) or "finetune" (the whole
      model through the training loop).
    loss: finetune's loss, a multilabel one of `losses.LOSSES`.
    epochs, finetune_learning_rate, finetune_batch_size: finetune's
      schedule (Adam, the base recipe's warm-up and decay).
    chunk_seconds: finetune's examples (`tfds_builders/soundscapes`): a
      recording is cut into chunks this long, a random window of each
      trained per epoch.
  """
  train: str
  base: str
  output: str
  work_dir: str = ""
  validation: str = ""
  validation_fraction: float = 0.2
  keep_base_classes: bool = False
  hop_seconds: float = inference.DEFAULT_HOP_SECONDS
  steps: int = 500
  learning_rate: float = 0.01
  weight_decay: float = 1e-3
  target_precision: float = 0.9
  seed: int = 0
  batch_size: int = 32
  overwrite: bool = False
  mode: str = "linear"
  loss: str = MULTILABEL_LOSS
  epochs: float = 10.0
  finetune_learning_rate: float = 3e-4
  finetune_batch_size: int = 16
  chunk_seconds: float = 10.0

  @property
  def work_folder(self) -> str:
    return self.work_dir or self.output.rstrip("/") + ".work"


def define_head_flags(flag_values: flags.FlagValues, help_prefix: str = ""
                      ) -> None:
  """`--steps`, `--learning_rate` and `--weight_decay`: the linear head's
  optimisation (`fit_head`), `Settings`' defaults; the one definition the
  `custom` and `agile` commands share. `help_prefix` names the step that
  reads them (e.g. "train: ")."""
  defaults = Settings("", "", "")
  fv = {"flag_values": flag_values}
  flags.DEFINE_integer("steps", defaults.steps,
                       f"{help_prefix}the linear head's optimisation steps.",
                       **fv)
  flags.DEFINE_float("learning_rate", defaults.learning_rate,
                     f"{help_prefix}the linear head's learning rate.", **fv)
  flags.DEFINE_float("weight_decay", defaults.weight_decay,
                     f"{help_prefix}the linear head's decoupled weight "
                     "decay.", **fv)


# ---------------------------------------------------------------------------
# Class folders.
# ---------------------------------------------------------------------------

def parse_label(folder_name: str) -> dict:
  """A label row from a class folder's name: BirdNET's
  `Genus species_Common Name` gives both names, anything else is the
  species alone."""
  species, _, common = folder_name.partition("_")
  return {"species": species.strip(), "common_name": common.strip()}


@dataclasses.dataclass
class ClassFolders:
  """Recordings of class folders, by content (`embedding_store.
  content_digest`).

  Attributes:
    labels: the classes in folder-name order (label rows).
    folders: each class's folder.
    paths: digest -> a path of the recording.
    classes: digest -> the class indices it carries (empty: a negative).
    warnings: lines about what was left out or looks wrong.
    problems: (path, reason) of files that cannot be read.
  """
  labels: list[dict]
  folders: list[str]
  paths: dict[str, str]
  classes: dict[str, set[int]]
  warnings: list[str]
  problems: list[tuple[str, str]]

  def count(self, k: int | None) -> int:
    """Recordings of class `k` (None: negatives)."""
    return sum(1 for found in self.classes.values()
               if (k in found if k is not None else not found))


def read_class_folders(root: str, known: Sequence[dict] | None = None
                       ) -> ClassFolders:
  """The class folders under `root` (module docstring).

  `known`: the training classes, when reading validation folders (others
  are left out with a warning, in that order).

  Raises:
    CustomError: `root` is no folder, holds no class folder with audio,
      or two folders name one species.
  """
  if not os.path.isdir(root):
    raise CustomError(f"{root}: no such folder (give a folder of class "
                      "folders)")
  out = ClassFolders([], [], {}, {}, [], [])
  index = {row["species"]: i for i, row in enumerate(known or [])}
  if known is not None:
    out.labels = list(known)
  loose = [n for n in sorted(os.listdir(root))
           if os.path.isfile(os.path.join(root, n))
           and n.lower().endswith(audio.AUDIO_EXTENSIONS)]
  if loose:
    out.warnings.append(f"{root}: {len(loose)} recordings outside class "
                        f"folders are left out (e.g. {loose[0]})")
  for name in sorted(os.listdir(root)):
    folder = os.path.join(root, name)
    if not os.path.isdir(folder) or name.startswith("."):
      continue
    try:
      files = [path for path, _ in audio.find_audio(folder)]
    except audio.NoAudioError:
      out.warnings.append(f"{folder}: no audio files; the class is left out")
      continue
    negative = name.lower() in NEGATIVE_FOLDERS
    k = None
    if not negative:
      label = parse_label(name)
      if known is not None:
        k = index.get(label["species"])
        if k is None:
          out.warnings.append(f"{folder}: {label['species']!r} is not a "
                              "training class; left out of validation")
          continue
      elif label["species"] in index:
        raise CustomError(
            f"{folder} and {out.folders[index[label['species']]]} both "
            f"name {label['species']!r}; merge them into one folder")
      else:
        k = index[label["species"]] = len(out.labels)
        out.labels.append(label)
        out.folders.append(folder)
    for path in files:
      try:
        digest = embedding_store.content_digest(path)
      except audio.AudioError as e:
        out.problems.append((path, str(e)))
        continue
      out.paths.setdefault(digest, path)
      found = out.classes.setdefault(digest, set())
      if k is not None:
        found.add(k)
  for k, row in enumerate(out.labels if known is None else []):
    if out.count(k) == 1:
      out.warnings.append(f"{out.folders[k]}: one recording of "
                          f"{row['species']!r}; it trains, and nothing "
                          "validates the class")
  if known is None and not out.labels:
    raise CustomError(f"{root}: no class folder holds audio (one folder "
                      "per class, named by its label)")
  return out


def split_validation(folders: ClassFolders, fraction: float, seed: int
                     ) -> tuple[list[str], list[str]]:
  """(training digests, validation digests): `fraction` of each class's
  recordings (and of the negatives) validate, at least one of each class
  trains, and a recording of several classes goes one way."""
  rng = np.random.default_rng(seed)
  validation: set[str] = set()
  assigned: set[str] = set()
  for k in list(range(len(folders.labels))) + [None]:
    members = sorted(d for d, found in folders.classes.items()
                     if (k in found if k is not None else not found))
    total = len(members)
    wanted = min(round(fraction * total), total - 1) - sum(
        1 for d in members if d in validation)
    free = [d for d in members if d not in assigned]
    for d in rng.permutation(free)[:max(wanted, 0)]:
      validation.add(str(d))
    assigned.update(members)
  training = sorted(set(folders.classes) - validation)
  return training, sorted(validation)


# ---------------------------------------------------------------------------
# The base model's head.
# ---------------------------------------------------------------------------

def _flat_shapes(config, num_classes: int, multilabel: bool) -> dict:
  model = trained_lib.build_model(config, num_classes, multilabel)
  shapes = jax.eval_shape(functools.partial(trained_lib.init_variables,
                                            model), jax.random.PRNGKey(0))
  return flax.traverse_util.flatten_dict(shapes)


def head_paths(base: trained_lib.TrainedModel, source: str
               ) -> tuple[tuple, tuple]:
  """(kernel path, bias path) of the base model's head in its variables:
  the two variables whose shapes follow the class count.

  Raises:
    CustomError: a model without embeddings (not a classifier), one with a
      location input, or a head that is not one dense layer.
  """
  if not isinstance(base.model, classifier_lib.Classifier):
    raise CustomError(f"{source}: a {type(base.model).__name__} gives no "
                      "embeddings for a classifier's head; give a "
                      "classifier's workdir or bundle")
  if base.config.get("location_input"):
    raise CustomError(f"{source} adds a location input to its logits; a "
                      "custom head reads the sound alone: give a base "
                      "trained without location_input")
  now = _flat_shapes(base.config, len(base.labels), base.multilabel)
  more = _flat_shapes(base.config, len(base.labels) + 1, base.multilabel)
  changed = sorted(path for path, shape in now.items()
                   if more[path].shape != shape.shape)
  kernel = [p for p in changed if len(now[p].shape) == 2]
  bias = [p for p in changed if len(now[p].shape) == 1]
  if len(changed) != 2 or len(kernel) != 1 or len(bias) != 1:
    raise CustomError(f"{source}: the head of backbone "
                      f"{base.config.model!r} is not one dense layer "
                      f"({['/'.join(p) for p in changed]}); linear mode "
                      "cannot replace it")
  return kernel[0], bias[0]


# ---------------------------------------------------------------------------
# Training the head.
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Head:
  """A linear head on raw embeddings: logits = embedding @ kernel + bias."""
  kernel: np.ndarray  # [dim, classes]
  bias: np.ndarray  # [classes]

  def logits(self, embeddings: np.ndarray) -> np.ndarray:
    return embeddings @ self.kernel + self.bias


def model_head(model: trained_lib.TrainedModel, source: str) -> Head:
  """A classifier's own head (`head_paths`) as a `Head`.

  Raises:
    CustomError: as `head_paths`.
  """
  kernel_path, bias_path = head_paths(model, source)
  flat = flax.traverse_util.flatten_dict(jax.device_get(model.variables))
  return Head(kernel=np.asarray(flat[kernel_path], np.float32),
              bias=np.asarray(flat[bias_path], np.float32))


def _log_probabilities_of_any(logits: jax.Array, targets: jax.Array
                              ) -> jax.Array:
  """log P(the window is one of its targets) under a softmax."""
  return (jax.nn.logsumexp(jnp.where(targets > 0, logits, -jnp.inf), -1)
          - jax.nn.logsumexp(logits, -1))


def fit_head(embeddings: np.ndarray, targets: np.ndarray, *, steps: int,
             learning_rate: float, weight_decay: float,
             base_head: Head | None = None) -> Head:
  """A linear head for multi-hot `targets` `[windows, classes]`.

  Without `base_head`: sigmoid cross-entropy. With it (a softmax base whose
  classes stay): the new columns after the base's under one softmax, each
  window's loss -log P(any of its labels); a window without labels (a
  negative) counts the base classes as its labels.

  Trained on standardised embeddings and folded back into raw ones, so the
  step size suits any backbone's scale.
  """
  mean = embeddings.mean(axis=0)
  std = embeddings.std(axis=0)
  std = np.where(std > 1e-6, std, 1.0)
  x = jnp.asarray((embeddings - mean) / std, jnp.float32)
  y = jnp.asarray(targets, jnp.float32)
  classes = targets.shape[1]
  params = {"kernel": jnp.zeros((x.shape[1], classes)),
            "bias": jnp.zeros((classes,))}
  if base_head is None:
    def loss_fn(p):
      logits = x @ p["kernel"] + p["bias"]
      return optax.sigmoid_binary_cross_entropy(logits, y).mean()
  else:
    base_logits = jnp.asarray(base_head.logits(embeddings), jnp.float32)
    negative = (y.sum(-1, keepdims=True) == 0).astype(jnp.float32)
    wanted = jnp.concatenate([jnp.broadcast_to(negative, base_logits.shape),
                              y], axis=1)

    def loss_fn(p):
      logits = jnp.concatenate([base_logits, x @ p["kernel"] + p["bias"]],
                               axis=1)
      return -_log_probabilities_of_any(logits, wanted).mean()

  optimizer = optax.adamw(learning_rate, weight_decay=weight_decay)

  @jax.jit
  def train(params):
    def step(carry, _):
      params, state = carry
      grads = jax.grad(loss_fn)(params)
      updates, state = optimizer.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), None
    (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)),
                                  None, length=steps)
    return params

  fitted = jax.device_get(train(params))
  kernel = fitted["kernel"] / std[:, None]
  return Head(kernel=kernel.astype(np.float32),
              bias=(fitted["bias"] - mean @ kernel).astype(np.float32))


# ---------------------------------------------------------------------------
# The job.
# ---------------------------------------------------------------------------

def _windows(store: embedding_store.EmbeddingStore, folders: ClassFolders,
             digests: Sequence[str]) -> tuple[np.ndarray, np.ndarray,
                                              list[str]]:
  """(embeddings, multi-hot targets, digest of each window) of the stored
  recordings among `digests`."""
  embeddings, targets, owners = [], [], []
  for digest in digests:
    if digest not in store.recordings:
      continue  # Not decodable: reported by the store.
    rows = store.windows_of(digest)[0]
    hot = np.zeros((len(rows), len(folders.labels)), np.float32)
    hot[:, sorted(folders.classes[digest])] = 1.0
    embeddings.append(rows)
    targets.append(hot)
    owners += [digest] * len(rows)
  if not embeddings:
    dim = store.embedding_dim or 0
    return (np.zeros((0, dim), np.float32),
            np.zeros((0, len(folders.labels)), np.float32), owners)
  return np.concatenate(embeddings), np.concatenate(targets), owners


def _scores(head: Head, embeddings: np.ndarray, new_columns: slice,
            base_head: Head | None) -> np.ndarray:
  """The bundle's probabilities of the new classes."""
  logits = head.logits(embeddings)
  if base_head is None:
    return 1.0 / (1.0 + np.exp(-logits))
  logits = np.concatenate([base_head.logits(embeddings), logits], axis=1)
  return jax.nn.softmax(logits, axis=-1)[:, new_columns]


def _threshold_rows(labels: list[dict], scores: np.ndarray,
                    positives: np.ndarray, target: float) -> list[dict]:
  """thresholds.csv's rows: the target precision's threshold where
  reached, else the best F1's; empty where no positive validated."""
  at_precision = metrics.threshold_at_precision(scores, positives, target)
  at_f1 = metrics.threshold_at_best_f1(scores, positives)
  rows = []
  for k, label in enumerate(labels):
    reached = not np.isnan(at_precision.threshold[k])
    point = at_precision if reached else at_f1
    found = not np.isnan(point.threshold[k])
    rows.append({
        "species": label["species"], "common_name": label["common_name"],
        "threshold": float(point.threshold[k]) if found else None,
        "rule": ("precision" if reached else "best_f1") if found else "",
        "precision": _number(point.precision[k]),
        "recall": _number(point.recall[k]), "f1": _number(point.f1[k]),
        "validation_positives": int(point.num_positives[k])})
  return rows


def _number(value) -> float | None:
  """A JSON-safe float (None for NaN)."""
  return None if np.isnan(value) else float(value)


def _write_thresholds(path: str, rows: list[dict]) -> None:
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(THRESHOLD_COLUMNS)
    for row in rows:
      writer.writerow(["" if row[c] is None else row[c]
                       for c in THRESHOLD_COLUMNS])


def custom_model(base: trained_lib.TrainedModel, labels: list[dict],
                 head: Head, source: str, keep_base_classes: bool = False
                 ) -> trained_lib.TrainedModel:
  """The base model with `head` as its head (after the base's classes when
  they are kept), as an ordinary trained model of the same family."""
  kernel_path, bias_path = head_paths(base, source)
  config = copy.deepcopy(base.config)
  multilabel = base.multilabel or not keep_base_classes
  if not base.multilabel and multilabel:
    config.loss = MULTILABEL_LOSS
    config.loss_options = type(config)()
  all_labels = (list(base.labels) if keep_base_classes else []) + [
      dict(row, supercategory="", taxonomy="") for row in labels]
  model = trained_lib.build_model(config, len(all_labels), multilabel)
  variables = flax.traverse_util.flatten_dict(
      jax.device_get(base.variables))
  kernel, bias = head.kernel, head.bias
  if keep_base_classes:
    kernel = np.concatenate([variables[kernel_path], kernel], axis=1)
    bias = np.concatenate([variables[bias_path], bias])
  variables[kernel_path] = kernel.astype(variables[kernel_path].dtype)
  variables[bias_path] = bias.astype(variables[bias_path].dtype)
  custom = trained_lib.TrainedModel(
      model=model, variables=flax.traverse_util.unflatten_dict(variables),
      config=config, labels=all_labels, multilabel=multilabel,
      step=base.step)
  _check_head_is_the_model(custom, kernel, bias)
  return custom


def _check_head_is_the_model(custom: trained_lib.TrainedModel,
                             kernel: np.ndarray, bias: np.ndarray) -> None:
  """The model's logits of a window are its embedding through the new
  head: what was trained is what the bundle computes."""
  noise = np.random.default_rng(0).integers(
      -3000, 3000, (1, custom.model.window_samples)).astype(np.int16)
  out = jax.device_get(custom.model.apply(
      custom.variables, noise, method=classifier_lib.Classifier.infer))
  expected = out.embedding @ kernel + bias
  if not np.allclose(out.logits, expected, rtol=1e-3, atol=1e-3):
    raise CustomError(f"backbone {custom.config.model!r}: its logits are "
                      "not its head applied to its embedding; linear mode "
                      "cannot replace its head")


def _check_collisions(base: trained_lib.TrainedModel, labels: list[dict],
                      folders: Sequence[str]) -> None:
  """New labels must not name a base class that stays (by scientific or
  common name, or BirdNET's form: `inference.label_matcher`)."""
  match = inference.label_matcher(base.labels)
  for label, folder in zip(labels, folders):
    for name in (label["species"], label["common_name"]):
      found = match(name) if name else None
      if found is not None:
        raise CustomError(
            f"{folder}: {name!r} is the base model's class "
            f"{base.labels[found]['species']!r}; with --keep_base_classes "
            "a new class must be new (rename the folder, or train without "
            "--keep_base_classes)")


def _class_report(folders: ClassFolders, training: Sequence[str],
                  validation_folders: ClassFolders,
                  validation: Sequence[str], y_train: np.ndarray,
                  y_val: np.ndarray, average_precision: np.ndarray,
                  thresholds: list[dict]) -> list[dict]:
  def recordings(source, digests, k):
    return sum(1 for d in digests if d in source.classes and (
        k in source.classes[d] if k is not None else not source.classes[d]))

  rows = []
  for k, label in enumerate(folders.labels):
    rows.append({
        "species": label["species"], "common_name": label["common_name"],
        "folder": folders.folders[k],
        "train_recordings": recordings(folders, training, k),
        "train_windows": int(y_train[:, k].sum()),
        "validation_recordings": recordings(validation_folders, validation,
                                            k),
        "validation_windows": int(y_val[:, k].sum()),
        "validation_ap": _number(average_precision[k]),
        "threshold": thresholds[k]["threshold"],
        "threshold_rule": thresholds[k]["rule"]})
  rows.append({
      "species": "(negatives)",
      "train_recordings": recordings(folders, training, None),
      "train_windows": int((y_train.sum(1) == 0).sum()),
      "validation_recordings": recordings(validation_folders, validation,
                                          None),
      "validation_windows": int((y_val.sum(1) == 0).sum())})
  return rows


@dataclasses.dataclass
class _Prepared:
  """What both modes start from: the base model and the folders split."""
  base: trained_lib.TrainedModel
  folders: ClassFolders
  validation_folders: ClassFolders
  training: list[str]
  validation: list[str]
  problems: list[tuple[str, str]]


def _prepare(settings: Settings, log) -> _Prepared:
  """Checks the target and settings, loads the base, reads and splits the
  class folders (warnings logged); nothing is written."""
  export.check_target(None, settings.output, settings.overwrite,
                      flag="output")
  if not 0.0 <= settings.validation_fraction < 1.0:
    raise CustomError(f"--validation_fraction={settings.validation_fraction}"
                      " must be in [0, 1)")
  base = trained_lib.load(settings.base)
  trained_lib.require_waveform_input(base, settings.base,
                                     "a custom classifier")
  head_paths(base, settings.base)  # Refuses an unusable base up front.
  folders = read_class_folders(settings.train)
  if settings.keep_base_classes:
    _check_collisions(base, folders.labels, folders.folders)
  if settings.validation:
    validation_folders = read_class_folders(settings.validation,
                                            known=folders.labels)
    training, validation = sorted(folders.classes), sorted(
        validation_folders.classes)
  else:
    validation_folders = folders
    training, validation = split_validation(
        folders, settings.validation_fraction, settings.seed)
  for line in folders.warnings + (validation_folders.warnings
                                  if settings.validation else []):
    log(f"warning: {line}")
  problems = folders.problems + (validation_folders.problems
                                 if settings.validation else [])
  return _Prepared(base, folders, validation_folders, training, validation,
                   problems)


def train_linear(settings: Settings, log=None) -> dict:
  """Makes a custom classifier's bundle in linear mode (module docstring).

  Args:
    settings: what to train from and where to write.
    log: a callable taking a line (warnings, progress); default stderr.

  Returns:
    The report (also `report.json` in the work folder and the bundle's
    config.json `custom_training`).

  Raises:
    CustomError: unusable folders, base model or settings (nothing written).
    export.TargetError: `output` holds files other than an earlier bundle.
    embedding_store.StoreError: the work folder's store is of another model.
  """
  log = log or functools.partial(print, file=sys.stderr)
  prepared = _prepare(settings, log)
  base, folders = prepared.base, prepared.folders
  validation_folders = prepared.validation_folders
  training, validation = prepared.training, prepared.validation
  store = embedding_store.EmbeddingStore.create_or_open(
      os.path.join(settings.work_folder, STORE_DIR), base,
      hop_seconds=settings.hop_seconds, batch_size=settings.batch_size)
  wanted = [folders.paths[d] for d in training] + [
      validation_folders.paths[d] for d in validation]
  missing = sum(1 for d in set(training) | set(validation)
                if d not in store.recordings)
  log(f"embedding {missing} of {len(wanted)} recordings "
      f"({len(wanted) - missing} already in {store.folder})")
  problems = prepared.problems + store.add(wanted)
  for path, reason in problems:
    log(f"skipped {path}: {reason}")

  x_train, y_train, _ = _windows(store, folders, training)
  x_val, y_val, _ = _windows(store, validation_folders, validation)
  untrained = [row["species"] for k, row in enumerate(folders.labels)
               if not y_train[:, k].any()]
  if untrained:
    raise CustomError(f"{settings.train}: no readable recording of "
                      f"{', '.join(map(repr, untrained))} is left to train "
                      "on (see the lines above)")
  base_head = None
  if settings.keep_base_classes and not base.multilabel:
    base_head = model_head(base, settings.base)
  head = fit_head(x_train, y_train, steps=settings.steps,
                  learning_rate=settings.learning_rate,
                  weight_decay=settings.weight_decay, base_head=base_head)

  first_new = len(base.labels) if settings.keep_base_classes else 0
  new_columns = slice(first_new, first_new + len(folders.labels))
  scores = _scores(head, x_val, new_columns, base_head)
  custom = custom_model(base, folders.labels, head, settings.base,
                        settings.keep_base_classes)
  report, thresholds = _report(settings, prepared, custom, y_train, y_val,
                               scores, problems)
  _write(settings, report, thresholds, custom)
  return report


def _report(settings: Settings, prepared: _Prepared,
            custom: trained_lib.TrainedModel, y_train: np.ndarray,
            y_val: np.ndarray, scores: np.ndarray,
            problems: list[tuple[str, str]]) -> tuple[dict, list[dict]]:
  """(the report, thresholds.csv's rows) from the validation windows'
  `scores` of the new classes and the windows' targets."""
  base, folders = prepared.base, prepared.folders
  positives = y_val > 0
  average_precision, _ = metrics.per_class_ap_and_best_f1(scores, positives)
  mean_ap = metrics.class_mean(average_precision, positives)
  thresholds = _threshold_rows(folders.labels, scores, positives,
                               settings.target_precision)
  report = {
      "mode": settings.mode,
      "library_version": inatsounds_jax.__version__,
      "settings": dataclasses.asdict(settings),
      "base": {"path": settings.base, "model": base.config.model,
               "classes": len(base.labels), "step": base.step,
               "output": "multilabel" if base.multilabel else "multiclass"},
      "output": "multilabel" if custom.multilabel else "multiclass",
      "classes": _class_report(folders, prepared.training,
                               prepared.validation_folders,
                               prepared.validation, y_train, y_val,
                               average_precision, thresholds),
      "validation": {"windows": len(y_val),
                     "class_mean_ap": _number(mean_ap.value),
                     "classes_validated": len(mean_ap.classes)},
      "problems": [{"file": path, "reason": reason}
                   for path, reason in problems],
      "warnings": folders.warnings,
  }
  return report, thresholds


def _write(settings: Settings, report: dict, thresholds: list[dict],
           custom: trained_lib.TrainedModel) -> None:
  """thresholds.csv and report.json in the work folder, then the bundle."""
  os.makedirs(settings.work_folder, exist_ok=True)
  _write_thresholds(os.path.join(settings.work_folder, THRESHOLDS_FILE),
                    thresholds)
  storage.write_json(os.path.join(settings.work_folder, REPORT_FILE), report)
  export.write_bundle(custom, settings.output, overwrite=settings.overwrite,
                      flag="output", description={
                          "training_data": {"dataset": "class folders",
                                            "options": {
                                                "train": settings.train,
                                                "validation":
                                                    settings.validation}},
                          "custom_training": report})


# ---------------------------------------------------------------------------
# Fine-tuning the whole model.
# ---------------------------------------------------------------------------

FINETUNE_DATA_DIR = "finetune_data"
FINETUNE_RUN_DIR = "finetune_run"
# The annotation CSV a finetune set is written as (annotations.py reads it).
_CSV_HEADER = ("Filename", "Start Time (s)", "End Time (s)", "Species")


def _seconds(path: str) -> float:
  """A recording's length: its header's, else decoded."""
  return audio.header_seconds(path) or len(
      audio.read_audio_file(path)) / audio.SAMPLE_RATE


def _annotated_set(folder: str, folders: ClassFolders,
                   digests: Sequence[str]) -> dict:
  """The recordings `digests` as an annotated set under `folder`: one link
  per recording (`audio/`), one event per class spanning the recording
  (`annotations.csv`; negatives have none, so every recording counts as
  annotated). Returns the soundscapes builder's fields."""
  audio_dir = os.path.join(folder, "audio")
  os.makedirs(audio_dir, exist_ok=True)
  rows = []
  for digest in digests:
    path = folders.paths[digest]
    name = digest[:16] + os.path.splitext(path)[1].lower()
    link = os.path.join(audio_dir, name)
    if not os.path.lexists(link):
      os.symlink(os.path.abspath(path), link)
    end = _seconds(path)
    rows += [(name, 0.0, end, folders.labels[k]["species"])
             for k in sorted(folders.classes[digest])]
  annotations_path = os.path.join(folder, "annotations.csv")
  with open(annotations_path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(_CSV_HEADER)
    writer.writerows(rows)
  return {"audio": audio_dir, "annotations": annotations_path,
          "every_recording_annotated": True}


def _finetune_config(settings: Settings, base: trained_lib.TrainedModel,
                     train_set: dict, validation_set: dict,
                     labels: list[dict]):
  """The base model's recipe, on the class folders' sets, from its
  weights: every window's targets are its recording's classes (`full`
  labels), validated by the strong-label evaluator."""
  c = copy.deepcopy(base.config)
  c.unlock()
  fields = {"labels": tuple((row["species"], row["common_name"])
                            for row in labels),
            "chunk_seconds": settings.chunk_seconds}
  c.update(dataset="soundscapes", data_dir=os.path.join(
      settings.work_folder, FINETUNE_DATA_DIR, "tfds"), manual_dir="",
           init_checkpoint=settings.base, loss=settings.loss,
           label_mode="full", num_epochs=float(settings.epochs),
           warmup_epochs=min(c.get("warmup_epochs", 0.0),
                             settings.epochs / 5),
           optimizer="adam", learning_rate=settings.finetune_learning_rate,
           batch_size=settings.finetune_batch_size,
           eval_batch_size=settings.finetune_batch_size, seed=settings.seed,
           geo_prior="", geo_ceiling_prior="", checkpoint_every_steps=1000,
           log_every_steps=10)
  # Assigned, not updated: a recipe's range-model job is a ConfigDict.
  c.range_model = None
  # The base's data-bound settings do not carry over: its loss's options,
  # its curated windows, its sources, asset rows and teacher.
  c.loss_options = {}
  c.train_window_filter = ""
  c.pretrain_sources = {}
  c.asset_reg.weight = 0.0
  c.dataset_options = {**train_set, **fields}
  c.train_split = "test"  # The builder's one split.
  c.mean_teacher.weight = 0.0
  c.evals = {"validation": {
      "type": "strong_label", "split": "test", "every_epochs": 1.0,
      "soundscapes": {**validation_set,
                      "chunk_seconds": settings.chunk_seconds}}}
  c.best_metric = "validation/no_prior/window_map"
  return c


def _predicted_windows(predictor: inference.Predictor, folders: ClassFolders,
                       digests: Sequence[str]
                       ) -> tuple[np.ndarray, np.ndarray, list]:
  """(probabilities, multi-hot targets, problems) of every window of the
  recordings `digests`, as prediction cuts them."""
  scores, targets, problems = [], [], []
  paths = [folders.paths[d] for d in digests]
  for digest, (path, table) in zip(digests, predictor.predict_files(
      [(p, math.nan, math.nan) for p in paths])):
    if isinstance(table, Exception):
      problems.append((path, str(table)))
      continue
    hot = np.zeros((len(table.probabilities), len(folders.labels)),
                   np.float32)
    hot[:, sorted(folders.classes[digest])] = 1.0
    scores.append(table.probabilities)
    targets.append(hot)
  width = len(predictor.labels)
  return (np.concatenate(scores) if scores else np.zeros((0, width)),
          np.concatenate(targets) if targets else
          np.zeros((0, len(folders.labels))), problems)


def train_finetune(settings: Settings, log=None) -> dict:
  """Makes a custom classifier's bundle by fine-tuning the whole base model
  (module docstring) through the library's training loop.

  The class folders become annotated sets (`_annotated_set`) built by
  `tfds_builders/soundscapes`, so the loop, its losses, devices, resume
  and evaluators are the ones every run uses; the run (in the work folder,
  resumable) starts from the base's weights (`init_checkpoint`: the head
  starts fresh for the new classes), keeps the checkpoint with the best
  validation window mAP, and is written as the bundle; validation AP and
  thresholds are then computed on the bundle's own windows, as in linear
  mode.

  Raises:
    CustomError: as `train_linear`, a single-label loss, no validation
      recordings, or `keep_base_classes` (linear mode only).
    registry.ConfigError: an unknown loss.
  """
  log = log or functools.partial(print, file=sys.stderr)
  if settings.keep_base_classes:
    raise CustomError("--keep_base_classes applies to --mode=linear (a "
                      "fine-tuned backbone changes the base classes' "
                      "outputs too)")
  if not losses.LOSSES.get(settings.loss).multilabel:
    names = [n for n in losses.LOSSES.names()
             if losses.LOSSES.get(n).multilabel]
    raise CustomError(f"--loss={settings.loss} is single-label; class "
                      "folders give multi-label targets: give one of "
                      f"{', '.join(names)}")
  prepared = _prepare(settings, log)
  if not prepared.validation:
    raise CustomError("--mode=finetune keeps the checkpoint that validates "
                      "best: give --validation folders or a "
                      "--validation_fraction that leaves recordings to "
                      "validate on")
  folders = prepared.folders
  data = os.path.join(settings.work_folder, FINETUNE_DATA_DIR)
  train_set = _annotated_set(os.path.join(data, "train"), folders,
                             prepared.training)
  validation_set = _annotated_set(os.path.join(data, "validation"),
                                  prepared.validation_folders,
                                  prepared.validation)
  config = _finetune_config(settings, prepared.base, train_set,
                            validation_set, folders.labels)
  run_dir = os.path.join(settings.work_folder, FINETUNE_RUN_DIR)
  log(f"fine-tuning {settings.base} on {len(prepared.training)} recordings "
      f"in {run_dir} (resumable)")
  jobs.load_job("classifier").train_and_evaluate(config, run_dir)
  tuned = trained_lib.load(run_dir)
  predictor = inference.Predictor(tuned, hop_seconds=settings.hop_seconds,
                                  batch_size=settings.batch_size)
  _, y_train, train_problems = _predicted_windows(predictor, folders,
                                                  prepared.training)
  scores, y_val, val_problems = _predicted_windows(
      predictor, prepared.validation_folders, prepared.validation)
  report, thresholds = _report(
      settings, prepared, tuned, y_train, y_val, scores,
      prepared.problems + train_problems + val_problems)
  report["finetune"] = {"workdir": run_dir, "step": tuned.step,
                        "loss": settings.loss, "epochs": settings.epochs}
  _write(settings, report, thresholds, tuned)
  return report


def summary(report: dict, settings: Settings) -> str:
  """What a run made, a few lines for the terminal."""
  new = [row for row in report["classes"] if "folder" in row]
  lines = [f"wrote {settings.output}: {len(new)} new classes "
           f"({report['output']}) on {report['base']['model']} "
           f"({settings.base})"]
  for row in report["classes"]:
    ap = row.get("validation_ap")
    lines.append(
        f"  {row['species']}: {row['train_recordings']} recordings "
        f"({row['train_windows']} windows) trained, "
        f"{row['validation_recordings']} validated"
        + (f", AP {ap:.3f}" if ap is not None else ""))
  mean_ap = report["validation"]["class_mean_ap"]
  lines.append("validation class-mean AP: "
               + (f"{mean_ap:.3f}" if mean_ap is not None else "none (no "
                  "validation recordings)")
               + f"; {os.path.join(settings.work_folder, THRESHOLDS_FILE)} "
               "for predict --thresholds")
  return "\n".join(lines)
