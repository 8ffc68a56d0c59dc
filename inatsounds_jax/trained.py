"""Trained models under every job: build, describe and load them.

A trained model is a module (built from its run's config by the run's
objective, `objectives/`), its variables, its labels and what it was trained
as. Training (`train.py`) builds its model here; export, prediction,
curation and every later job load one here, from a training workdir or an
exported bundle, without importing the training job:

    trained = trained.load("WORKDIR_OR_BUNDLE")
    out = trained.model.apply(trained.variables, waveforms,
                              method=Classifier.infer)

Loading restores the model's variables only (parameters, batch statistics,
or the EMA parameters when the run kept them), not the optimizer or the
loss state, so it needs the workdir alone, not the dataset. The workdir's
file names are `workdir.py`'s; a bundle's are below (`export.py` writes it).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import io
import json
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

import inatsounds_jax
from inatsounds_jax import checkpoints
from inatsounds_jax import config_defaults
from inatsounds_jax import losses
from inatsounds_jax import objectives
from inatsounds_jax import registry
from inatsounds_jax import storage
from inatsounds_jax import windows as windows_lib
from inatsounds_jax import workdir as workdir_lib
from inatsounds_jax.models import classifier as classifier_lib

# -- A bundle's layout (written by `export.export_bundle`) ---------------------
BUNDLE_FORMAT = 1  # Changes when a bundle written before cannot be read.
BUNDLE_CONFIG_FILE = "config.json"
BUNDLE_LABELS_FILE = "labels.csv"
BUNDLE_LABEL_COLUMNS = ("index", "species", "common_name", "supercategory",
                        "taxonomy")
EXPORTED_FILE = "model.jax_exported"
TFLITE_FILE = "model.tflite"
VARIABLES_DIR = "variables"
# Everything a bundle folder may hold at its top level.
BUNDLE_ENTRIES = (BUNDLE_CONFIG_FILE, BUNDLE_LABELS_FILE, EXPORTED_FILE,
                  TFLITE_FILE, VARIABLES_DIR)


class BundleError(registry.ConfigError):
  """A folder that is not a bundle this library version can read."""


class InputKindError(registry.ConfigError):
  """A model whose input is not what the caller feeds it (waveforms)."""


@dataclasses.dataclass(frozen=True)
class TrainedModel:
  """A model for inference: the module, its variables, its labels.

  (The module is a `Classifier`, or for an MAE pretraining workdir its
  `MaskedAutoencoder`.)

  Attributes:
    config: the run's config (as recorded in `WORKDIR/config.json` or the
      bundle's `training_config`), completed with today's defaults for
      fields added since.
    labels: the label rows (species, common name, ...), in output order.
    multilabel: the loss was multilabel (sigmoid outputs, else softmax).
    step: the checkpoint's training step.
  """
  model: Any
  variables: dict
  config: ml_collections.ConfigDict
  labels: list[dict]
  multilabel: bool
  step: int

  def windows(self, eval_stride_frames: int) -> windows_lib.WindowConfig:
    """The model's windows, `eval_stride_frames` apart when dense."""
    return window_config(self.model, eval_stride_frames)


def build_model(config: ml_collections.ConfigDict, num_classes: int,
                multilabel: bool):
  """The module `config`'s objective trains (`objectives/`)."""
  return objectives.get(config.objective).make_model(config, num_classes,
                                                     multilabel)


def window_config(model, eval_stride_frames: int
                  ) -> windows_lib.WindowConfig:
  """The model's windows (input pipeline, prediction), from its own window
  and frontend."""
  return windows_lib.WindowConfig(
      window_frames=model.window_frames,
      eval_stride_frames=eval_stride_frames, frontend=model.frontend)


def init_variables(model, rng: jax.Array) -> dict:
  """Fresh variables of `model` from its own example input (trace under
  `jax.eval_shape` for their shapes alone)."""
  example = model.example_input
  return model.init({"params": rng, "dropout": rng},
                    jnp.zeros((1,) + example.shape, example.dtype))


def require_waveform_input(trained: TrainedModel, source: str,
                           what: str) -> None:
  """Refuses a model that takes spectrogram images (an L48 classifier) where
  `what` feeds it waveforms.

  Raises:
    InputKindError: naming `source` and what to do.
  """
  if trained.model.input_kind != classifier_lib.WAVEFORM:
    raise InputKindError(
        f"{source}: the model takes {trained.model.input_kind} input "
        f"(frontend_preset {trained.config.frontend_preset!r}), and {what} "
        "feeds it audio waveforms; use a model trained on recordings")


def _with_defaults(saved: dict) -> ml_collections.ConfigDict:
  """A recorded config, with fields the library added since at their
  defaults (which keep the old behaviour: see `check_config_for_resume`)."""
  config = ml_collections.ConfigDict(saved)
  if "objective" not in config:
    config.objective = config_defaults.classifier().objective
  return config


# -- Loading -------------------------------------------------------------------

def load(path: str) -> TrainedModel:
  """A bundle, or a training workdir's best (else latest) checkpoint.

  Raises:
    FileNotFoundError: no such folder, or a workdir without its files or a
      checkpoint.
    BundleError: a bundle this version cannot read.
    checkpoints.DamagedCheckpointError: no intact checkpoint.
  """
  if not storage.resolve(path).is_dir():
    raise FileNotFoundError(f"{path}: no such folder (give a training "
                            "workdir or an exported bundle)")
  if is_bundle(path):
    return read_bundle(path)
  return load_workdir(path)


def load_workdir(workdir: str) -> TrainedModel:
  """The best (else latest) checkpoint of a training workdir, one device.

  Needs only the workdir (`config.json`, `classes.json`, checkpoints). The
  EMA parameters are used when the run kept them.

  Raises:
    FileNotFoundError: a file is missing or there is no checkpoint.
    checkpoints.DamagedCheckpointError: no intact checkpoint.
  """
  def read_json(name):
    path = workdir_lib.path(workdir, name)
    if not path.exists():
      raise FileNotFoundError(f"{path} not found: {workdir} is not a "
                              "training workdir")
    return storage.read_json(path)

  config = _with_defaults(read_json(workdir_lib.CONFIG_FILE))
  labels = read_json(workdir_lib.LABELS_FILE)
  multilabel = losses.LOSSES.get(config.loss).multilabel
  model = build_model(config, len(labels), multilabel)
  fresh = jax.eval_shape(functools.partial(init_variables, model),
                            jax.random.PRNGKey(0))
  use_ema = bool(config.ema_decay)
  # The saved training state's fields that hold the variables.
  abstract = {"params": fresh["params"]}
  if use_ema:
    abstract["ema_params"] = fresh["params"]
  if fresh.get("batch_stats"):
    abstract["batch_stats"] = fresh["batch_stats"]
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  sharding = jax.tree.map(lambda _: device, abstract)
  ckpt = checkpoints.RunCheckpoints(workdir, config.keep_checkpoints,
                                    config.best_metric,
                                    config.get("best_mode", "max"))
  restored = (ckpt.restore_best(abstract, sharding, partial=True) or
              ckpt.restore_latest(abstract, sharding, partial=True))
  if restored is None:
    raise FileNotFoundError(f"no checkpoint in {workdir}")
  saved, step = restored
  variables = {"params": saved["ema_params" if use_ema else "params"]}
  if "batch_stats" in saved:
    variables["batch_stats"] = saved["batch_stats"]
  return TrainedModel(model=model, variables=variables, config=config,
                      labels=labels, multilabel=multilabel, step=step)


def is_bundle(path: str) -> bool:
  """True for a folder written by `export.export_bundle` (any version)."""
  config = storage.resolve(path) / BUNDLE_CONFIG_FILE
  if not config.exists():
    return False
  try:
    return "bundle_format" in storage.read_json(config)
  except json.JSONDecodeError:
    return False


def _files_under(folder, prefix: str = ""):
  """(relative path, path) of every file under `folder`, sorted (a walk by
  listing, which remote storage serves as well as local disks)."""
  for path in sorted(folder.iterdir(), key=lambda p: p.name):
    relative = prefix + path.name
    if path.is_dir():
      yield from _files_under(path, relative + "/")
    else:
      yield relative, path


def file_digests(folder: storage.PathLike) -> dict[str, dict]:
  """{relative path: {"bytes", "sha256"}} of every file under a bundle
  folder but its config.json (which records them)."""
  folder = storage.resolve(folder)
  out = {}
  for relative, path in _files_under(folder):
    if relative == BUNDLE_CONFIG_FILE:
      continue
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
      while chunk := f.read(1 << 22):
        digest.update(chunk)
        size += len(chunk)
    out[relative] = {"bytes": size, "sha256": digest.hexdigest()}
  return out


def check_files(path: str, description: dict,
                only: tuple[str, ...] | None = None) -> None:
  """Refuses a bundle whose files differ from those it recorded (truncated,
  changed, missing), before anything reads them; `only`: just the files
  under these top-level names. A bundle that records none (written before
  checksums) passes.

  Raises:
    BundleError: naming the first damaged files and what to do.
  """
  recorded = description.get("files")
  if recorded is None:
    return
  found = file_digests(path)
  damaged = []
  for name, want in sorted(recorded.items()):
    if only is not None and name.split("/")[0] not in only:
      continue
    have = found.get(name)
    if have is None:
      damaged.append(f"{name} is missing")
    elif have["bytes"] != want["bytes"]:
      damaged.append(f"{name} has {have['bytes']} bytes, {want['bytes']} "
                     "were written (truncated?)")
    elif have["sha256"] != want["sha256"]:
      damaged.append(f"{name} differs from what was written (checksum)")
  if damaged:
    raise BundleError(f"{path}: the bundle is damaged: "
                      + "; ".join(damaged[:3])
                      + ("; ..." if len(damaged) > 3 else "")
                      + ". Copy it again, or export it again from its "
                      "workdir")


def read_description(path: str) -> dict:
  """A bundle's `config.json`, its format version checked.

  Raises:
    BundleError: not a bundle, or one of another format version.
  """
  if not is_bundle(path):
    raise BundleError(f"{path} is not a model bundle (no readable "
                      f"{BUNDLE_CONFIG_FILE} with bundle_format)")
  description = storage.read_json(storage.resolve(path) / BUNDLE_CONFIG_FILE)
  if description["bundle_format"] != BUNDLE_FORMAT:
    raise BundleError(
        f"{path} is bundle format {description['bundle_format']} (written by "
        f"inatsounds_jax {description.get('library_version', '?')}); this "
        f"version ({inatsounds_jax.__version__}) reads format "
        f"{BUNDLE_FORMAT}: export it again with this version")
  return description


def label_rows(labels: list[dict]) -> list[list[str]]:
  """`labels` as the bundle's `labels.csv` rows (`BUNDLE_LABEL_COLUMNS`)."""
  rows = []
  for i, row in enumerate(labels):
    taxonomy = row.get("taxonomy", "")
    if isinstance(taxonomy, (list, tuple)):
      taxonomy = ";".join(str(t) for t in taxonomy)
    elif isinstance(taxonomy, dict):
      taxonomy = ";".join(f"{k}={v}" for k, v in taxonomy.items())
    rows.append([str(i), row["species"], row.get("common_name", ""),
                 row.get("supercategory", ""), str(taxonomy)])
  return rows


def read_bundle(path: str) -> TrainedModel:
  """The module, variables and labels of a bundle, on the default device.

  Every file of the bundle is checked against its recorded size and
  checksum first, so a damaged bundle is refused whole.

  Raises:
    BundleError: not a bundle, one of another format version, or damaged.
  """
  description = read_description(path)
  check_files(path, description)
  folder = storage.resolve(path)
  config = _with_defaults(description["training_config"])
  labels = [{k: v for k, v in row.items() if k != "index"}
            for row in csv.DictReader(io.StringIO(
                (folder / BUNDLE_LABELS_FILE).read_text(encoding="utf-8"),
                newline=""))]
  multilabel = description["output"] == "multilabel"
  if losses.LOSSES.get(config.loss).multilabel != multilabel:
    raise BundleError(f"{path}: config.json's output and loss disagree")
  model = build_model(config, len(labels), multilabel)
  abstract = jax.eval_shape(functools.partial(init_variables, model),
                            jax.random.PRNGKey(0))
  with ocp.StandardCheckpointer() as ckpt:
    variables = ckpt.restore(folder / VARIABLES_DIR, abstract)
  return TrainedModel(
      model=model, variables=variables, config=config, labels=labels,
      multilabel=multilabel, step=description["checkpoint_step"])
