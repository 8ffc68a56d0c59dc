"""A self-describing model bundle: `python -m inatsounds_jax.export`.

    python -m inatsounds_jax.export --workdir=DIR --out=BUNDLE [--tflite] \\
        [--tflite_batch=N] [--overwrite]

writes BUNDLE/ with

- `model.jax_exported`: a `jax.export` serialisation of the whole model,
  frontend inside: float32 waveform `[batch, window_samples]` at 22,050 Hz in
  [-1, 1] (symbolic batch) -> (logits `[batch, classes]`, embedding
  `[batch, dim]`, the pooled features before the head). It runs in any
  process with jax and numpy (`jax.export.deserialize(bytes).call(x)`),
  on the platforms listed in `config.json` (CPU, CUDA and TPU together when
  this JAX can lower for them). Load only bundles you trust. On CPU,
  `jax.jit(exported.call, compiler_options=CPU_COMPILER_OPTIONS)` runs
  XLA's faster convolutions; the dict is `compilation.CPU_COMPILER_OPTIONS`
  (one XLA debug option: copy it when the library is not installed; a JAX
  whose XLA lacks the option refuses to compile with it).
- `labels.csv`: index, species, common name, supercategory, taxonomy.
- `config.json`: sample rate, window, default hop, frontend preset and
  parameters, model name, multiclass or multilabel, library version, the
  training data, the training config the module is rebuilt from, and every
  other file's size and sha256 (checked on load: a truncated or changed
  bundle is refused whole, before any file is read).
- `variables/`: the Flax variables (orbax); `load(BUNDLE)` returns the
  module and variables for JAX projects that fine-tune or build on them.
- `model.tflite` (with `--tflite`): the same function through jax2tf and
  the TFLite converter (builtin ops), for any batch, or with
  `--tflite_batch=N` for batches of N windows exactly: XNNPACK plans a
  fixed-shape graph ahead and runs it faster (`BENCHMARKS.md`), and
  `TFLiteModel` pads a shorter batch. config.json's `tflite_batch` says
  which (null: any).

The bundle is written into a new folder beside BUNDLE and moved in only when
complete. BUNDLE must be new, an empty folder or, with --overwrite, an
earlier bundle holding bundle files only; a folder holding anything else,
the workdir or a folder holding it is refused, so export never deletes a
user's files.

`predict --model=BUNDLE` needs nothing else. The bundle's file names and
its reader are `trained.py`'s (every job loads models there); this module
writes bundles.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
import uuid

from absl import app
from absl import flags
from etils import epath
import jax
from jax import export as jax_export
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

import inatsounds_jax
from inatsounds_jax import checkpoints
from inatsounds_jax import cli
from inatsounds_jax import registry
from inatsounds_jax import storage
from inatsounds_jax import trained as trained_lib
from inatsounds_jax.models import classifier as classifier_lib
from inatsounds_jax.models import conv

DEFAULT_HOP_SECONDS = 1.5
# Platforms tried in order until one set lowers (an export for CPU alone
# refuses to run on GPU, so the widest set this JAX supports is used).
PLATFORM_SETS = (("cpu", "cuda", "tpu"), ("cpu", "cuda"), ("cpu",))


def inference_fn(model: classifier_lib.Classifier, variables: dict):
  """float32 waveforms `[b, samples]` -> (logits, embedding), pure."""
  def fn(waveform):
    out = model.apply(variables, waveform,
                      method=classifier_lib.Classifier.infer)
    return out.logits, out.embedding
  return fn


def export_function(model: classifier_lib.Classifier, variables: dict
                    ) -> tuple[jax_export.Exported, tuple[str, ...]]:
  """The model as a `jax.export.Exported` with a symbolic batch."""
  batch, = jax_export.symbolic_shape("batch")
  spec = jax.ShapeDtypeStruct((batch, model.window_samples), jnp.float32)
  fn = jax.jit(inference_fn(model, variables))
  error = None
  for platforms in PLATFORM_SETS:
    try:
      return jax_export.export(fn, platforms=platforms)(spec), platforms
    except Exception as e:  # pylint: disable=broad-except
      error = e  # This JAX cannot lower for one of them; try fewer.
  raise RuntimeError(f"jax.export failed for every platform set: {error}")


def to_tflite(model: classifier_lib.Classifier, variables: dict,
              batch_size: int | None = None) -> bytes:
  """The model through jax2tf as a TFLite flatbuffer (builtin ops).

  Traced with the native convolutions (`conv.native_ops`): TFLite's own
  depthwise and pooling kernels beat the XLA-CPU formulations there.

  Args:
    batch_size: None for any batch (polymorphic); N for batches of exactly
      N windows, which XNNPACK runs faster.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from jax.experimental import jax2tf  # pylint: disable=import-outside-toplevel
  if batch_size is not None and batch_size < 1:
    raise ValueError(f"a TFLite batch of {batch_size} windows; give 1 or "
                     "more (or none for any batch)")
  converted = jax2tf.convert(
      inference_fn(model, variables),
      polymorphic_shapes=(None if batch_size else
                          [f"(b, {model.window_samples})"]),
      with_gradient=False)

  def named(waveform):
    logits, embedding = converted(waveform)
    return {"logits": logits, "embedding": embedding}

  function = tf.function(named, autograph=False, input_signature=[
      tf.TensorSpec([batch_size, model.window_samples], tf.float32,
                    name="waveform")])
  # Through a SavedModel, so the flatbuffer keeps a signature whose outputs
  # are named (a concrete function's come out as Identity_N).
  module = tf.Module()
  module.predict = function
  with tempfile.TemporaryDirectory() as saved, conv.native_ops():
    tf.saved_model.save(module, saved, signatures={"serving_default":
                                                   function})
    converter = tf.lite.TFLiteConverter.from_saved_model(saved)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


class TFLiteModel:
  """`model.tflite` in a TFLite interpreter: waveforms -> (logits, embedding).

  Uses `ai_edge_litert` when installed (TFLite's successor), else
  `tf.lite`. A model for any batch is resized to each call's; a model for a
  fixed batch (`batch_size`) is given each call's windows in batches of its
  size, the last one padded with zeros (their outputs are dropped).
  """

  def __init__(self, path_or_bytes: str | bytes, num_threads: int = 2):
    try:
      from ai_edge_litert import interpreter as litert  # pylint: disable=import-outside-toplevel
      interpreter_class = litert.Interpreter
    except ImportError:
      import tensorflow as tf  # pylint: disable=import-outside-toplevel
      interpreter_class = tf.lite.Interpreter
    content = path_or_bytes
    if isinstance(path_or_bytes, str):
      content = epath.Path(path_or_bytes).read_bytes()
    self._runner = interpreter_class(
        model_content=content, num_threads=num_threads).get_signature_runner()
    batch = int(self._runner.get_input_details()["waveform"][
        "shape_signature"][0])
    self.batch_size: int | None = batch if batch > 0 else None

  def __call__(self, waveform) -> tuple[np.ndarray, np.ndarray]:
    waveform = np.asarray(waveform, np.float32)
    if self.batch_size is None:
      outputs = self._runner(waveform=waveform)
      return outputs["logits"], outputs["embedding"]
    n, size = len(waveform), self.batch_size
    pieces = []
    for first in range(0, n, size):
      batch = waveform[first:first + size]
      if len(batch) < size:
        batch = np.concatenate([batch, np.zeros(
            (size - len(batch),) + batch.shape[1:], np.float32)])
      outputs = self._runner(waveform=batch)
      pieces.append((outputs["logits"], outputs["embedding"]))
    return tuple(np.concatenate(p)[:n] for p in zip(*pieces))


class TargetError(registry.ConfigError):
  """A bundle target that export must not write (it would lose files)."""


def check_target(workdir: str | None, out: str, overwrite: bool,
                 flag: str = "out") -> None:
  """Refuses a target whose files export would replace.

  `out` may be new, an empty folder, or (with `overwrite`) an earlier
  bundle holding bundle files only. Never the workdir (None: a model not
  read from one) or a folder holding it (replacing it would delete the
  checkpoints). Messages name `out` as the command's flag `flag`.

  Raises:
    TargetError: naming what the target holds and what to do.
  """
  target = storage.resolve(out)
  source = storage.resolve(workdir) if workdir is not None else None
  if source is not None and (target == source or os.fspath(source).startswith(
      os.fspath(target).rstrip("/") + "/")):
    raise TargetError(
        f"--{flag}={out} is the training workdir {workdir} or a folder holding "
        f"it; export into a new folder (e.g. {source / 'bundle'})")
  if not target.exists():
    return
  if not target.is_dir():
    raise TargetError(f"--{flag}={out} is a file; give a new folder")
  held = sorted(p.name for p in target.iterdir())
  if not held:
    return
  others = [name for name in held if name not in trained_lib.BUNDLE_ENTRIES]
  if others or not trained_lib.is_bundle(out):
    raise TargetError(
        f"--{flag}={out} holds {', '.join(others[:5] or held[:5])}"
        f"{' ...' if len(others or held) > 5 else ''}, which is not an "
        "earlier bundle; export writes into a new or empty folder, or "
        "replaces an earlier bundle (with --overwrite)")
  if not overwrite:
    raise TargetError(f"--{flag}={out} holds an earlier bundle; pass "
                      "--overwrite to replace it")


def _scratch_folder(out: epath.Path) -> epath.Path:
  """A new folder beside `out` (so the final move stays on one file
  system), created now so that an unwritable place fails before any work.

  Raises:
    TargetError: the folder cannot be created.
  """
  scratch = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
  try:
    scratch.mkdir(parents=True)
  except OSError as e:
    raise TargetError(f"--out={out}: cannot write in {out.parent} "
                      f"({e.strerror or e})") from None
  return scratch


def export_bundle(workdir: str, out: str, tflite: bool = False,
                  overwrite: bool = False,
                  tflite_batch: int | None = None) -> dict:
  """Writes the bundle of `workdir`'s best checkpoint into `out`
  (`write_bundle`); `out` is checked before the model is loaded.

  Returns:
    The bundle's config.json contents.

  Raises:
    As `write_bundle`.
  """
  check_target(workdir, out, overwrite)
  return write_bundle(trained_lib.load_workdir(workdir), out, tflite=tflite,
                      overwrite=overwrite, source=workdir,
                      tflite_batch=tflite_batch)


def write_bundle(trained: trained_lib.TrainedModel, out: str, *,
                 tflite: bool = False, overwrite: bool = False,
                 source: str | None = None,
                 description: dict | None = None,
                 tflite_batch: int | None = None, flag: str = "out") -> dict:
  """Writes `trained` (read from the workdir `source`, or None: built in
  memory, e.g. a custom classifier) as a bundle into `out` (the command's
  flag `flag`, for messages).

  The bundle is written into a new folder beside `out` and moved there
  only when complete, so `out` holds a whole bundle or what it held
  before; an earlier bundle is replaced only with `overwrite`
  (`check_target`). `description`: further config.json fields (they
  replace the generic ones of the same name, e.g. `training_data`). With
  `tflite`, `model.tflite` takes any batch, or batches of exactly
  `tflite_batch` windows (`to_tflite`).

  Returns:
    The bundle's config.json contents.

  Raises:
    TargetError: `out` holds other files, is the workdir, or is not
      writable.
    trained.BundleError: the model has a location input
      (`config.location_input`).
    trained.InputKindError: the model takes images, not waveforms.
  """
  check_target(source, out, overwrite, flag)
  where = source or "the model"
  trained_lib.require_waveform_input(trained, where, "a bundle")
  config = trained.config
  if config.get("location_input"):
    # The exported function takes waveforms only; dropping the location
    # would silently classify every recording as unlocated.
    raise trained_lib.BundleError(
        f"{where} was trained with location_input "
        f"{config.location_input!r}, which a bundle cannot carry yet (its "
        "function takes waveforms only); predict from the workdir "
        "(`predict --model=WORKDIR`), which passes locations")
  target = storage.resolve(out)
  tmp = _scratch_folder(target)
  try:
    written = _write_bundle(tmp, trained, tflite, tflite_batch,
                            description or {})
    if target.exists():  # Empty, or an earlier bundle (`check_target`).
      previous = target.parent / f".{target.name}.replaced-{tmp.name[-8:]}"
      target.rename(previous)
      tmp.rename(target)
      previous.rmtree()
    else:
      tmp.rename(target)
  finally:
    if tmp.exists():
      tmp.rmtree()
  return written


def _write_bundle(tmp: epath.Path, trained: trained_lib.TrainedModel,
                  tflite: bool, tflite_batch: int | None,
                  extra: dict) -> dict:
  """Every bundle file into the folder `tmp`; returns config.json's
  contents (with the other files' sizes and checksums), `extra`'s fields
  over the generic ones."""
  model, variables, config = (trained.model, trained.variables,
                              trained.config)
  exported, platforms = export_function(model, variables)
  embedding_dim = int(exported.out_avals[1].shape[1])
  (tmp / trained_lib.EXPORTED_FILE).write_bytes(exported.serialize())
  labels_csv = io.StringIO()
  writer = csv.writer(labels_csv, lineterminator="\n")
  writer.writerow(trained_lib.BUNDLE_LABEL_COLUMNS)
  writer.writerows(trained_lib.label_rows(trained.labels))
  (tmp / trained_lib.BUNDLE_LABELS_FILE).write_text(labels_csv.getvalue(),
                                                    encoding="utf-8")
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(tmp / trained_lib.VARIABLES_DIR, jax.device_get(variables))
  if tflite:
    (tmp / trained_lib.TFLITE_FILE).write_bytes(
        to_tflite(model, variables, tflite_batch))
  fe = model.frontend
  description = {
      "bundle_format": trained_lib.BUNDLE_FORMAT,
      "library_version": inatsounds_jax.__version__,
      "model_name": model.backbone,
      "sample_rate": fe.sample_rate,
      "window_samples": model.window_samples,
      "window_frames": model.window_frames,
      "window_seconds": model.window_samples / fe.sample_rate,
      "default_hop_seconds": DEFAULT_HOP_SECONDS,
      "frontend_preset": config.frontend_preset,
      "frontend": fe.to_dict(),
      "image_size": list(model.image_size),
      "image_channels": model.image.channels,
      "num_classes": model.num_classes,
      "embedding_dim": embedding_dim,
      "output": "multilabel" if trained.multilabel else "multiclass",
      "activation": "sigmoid" if trained.multilabel else "softmax",
      "input": "float32 [batch, window_samples] waveform in [-1, 1]",
      "outputs": ["logits [batch, num_classes]",
                  "embedding [batch, embedding_dim]"],
      "platforms": list(platforms),
      **({"tflite_batch": tflite_batch} if tflite else {}),
      "jax_version": jax.__version__,
      "checkpoint_step": trained.step,
      "training_data": {"dataset": config.get("dataset", ""),
                        "options": config.get("dataset_options", {}).to_dict()
                        if config.get("dataset_options") else {}},
      "training_config": config.to_dict(),
  }
  description.update(extra)
  description["files"] = trained_lib.file_digests(tmp)
  storage.write_json(tmp / trained_lib.BUNDLE_CONFIG_FILE, description)
  return description


# ---------------------------------------------------------------------------
# Reading a bundle.
# ---------------------------------------------------------------------------

def load(path: str) -> tuple[classifier_lib.Classifier, dict]:
  """(Flax module, variables) of a bundle: `module.apply(variables, x)`.

  Raises:
    trained.BundleError: not a bundle this version reads.
  """
  trained = trained_lib.read_bundle(path)
  return trained.model, trained.variables


def load_exported(path: str) -> jax_export.Exported:
  """The bundle's `jax.export` artefact, its checksum checked.

  Raises:
    trained.BundleError: not a bundle this version reads, or the artefact
      is damaged.
  """
  trained_lib.check_files(path, trained_lib.read_description(path),
                          only=(trained_lib.EXPORTED_FILE,))
  return jax_export.deserialize(bytearray(
      (storage.resolve(path) / trained_lib.EXPORTED_FILE).read_bytes()))


def _define_flags() -> None:
  """The command's flags, defined only when this module is the program: the
  library module is imported beside `main.py`, which has a --workdir too."""
  flags.DEFINE_string("workdir", None, "Training workdir.")
  flags.DEFINE_string("out", None, "Bundle folder to write.")
  flags.DEFINE_bool("tflite", False, "Also write model.tflite.")
  flags.DEFINE_integer("tflite_batch", 0,
                       "With --tflite: 0 for any batch, or N for batches "
                       "of exactly N windows (XNNPACK runs them faster).")
  flags.DEFINE_bool("overwrite", False,
                    "Replace an earlier bundle at --out (only its files).")
  cli.define_compilation_cache_flag()
  flags.register_validator("tflite_batch", lambda n: n >= 0,
                           "give 0 (any batch) or a batch of 1 or more")
  flags.register_multi_flags_validator(
      ["tflite", "tflite_batch"],
      lambda v: v["tflite"] or not v["tflite_batch"],
      "--tflite_batch needs --tflite")


def main(argv):
  del argv
  cli.start_command()
  try:
    description = export_bundle(flags.FLAGS.workdir, flags.FLAGS.out,
                                flags.FLAGS.tflite, flags.FLAGS.overwrite,
                                flags.FLAGS.tflite_batch or None)
  except (OSError, ValueError, checkpoints.DamagedCheckpointError) as e:
    cli.fail(str(e), e)
  print(f"wrote {flags.FLAGS.out}: {description['model_name']}, "
        f"{description['num_classes']} classes, platforms "
        f"{', '.join(description['platforms'])}"
        + (", model.tflite" if flags.FLAGS.tflite else "")
        + (f" (batch {flags.FLAGS.tflite_batch})"
           if flags.FLAGS.tflite_batch else ""))


if __name__ == "__main__":
  _define_flags()
  flags.mark_flags_as_required(["workdir", "out"])
  app.run(main, flags_parser=cli.parse_flags)
