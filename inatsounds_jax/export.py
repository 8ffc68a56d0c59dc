"""A self-describing model bundle: `python -m inatsounds_jax.export`.

    python -m inatsounds_jax.export --workdir=DIR --out=BUNDLE [--tflite]

writes BUNDLE/ with

- `model.jax_exported`: a `jax.export` serialisation of the whole model,
  frontend inside: float32 waveform `[batch, window_samples]` at 22,050 Hz in
  [-1, 1] (symbolic batch) -> (logits `[batch, classes]`, embedding
  `[batch, dim]`, the pooled features before the head). It runs in any
  process with jax and numpy (`jax.export.deserialize(bytes).call(x)`),
  on the platforms listed in `config.json` (CPU, CUDA and TPU together when
  this JAX can lower for them). Load only bundles you trust. On CPU,
  `jax.jit(exported.call, compiler_options=CPU_COMPILER_OPTIONS)` runs
  XLA's faster convolutions; the dict is `models.conv.CPU_COMPILER_OPTIONS`
  (one XLA debug option: copy it when the library is not installed; a JAX
  whose XLA lacks the option refuses to compile with it).
- `labels.csv`: index, species, common name, supercategory, taxonomy.
- `config.json`: sample rate, window, default hop, frontend preset and
  parameters, model name, multiclass or multilabel, library version, the
  training data, and the training config the module is rebuilt from.
- `variables/`: the Flax variables (orbax); `load(BUNDLE)` returns the
  module and variables for JAX projects that fine-tune or build on them.
- `model.tflite` (with `--tflite`): the same function through jax2tf and
  the TFLite converter (builtin ops, polymorphic batch).

`predict --model=BUNDLE` needs nothing else.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import tempfile

from absl import app
from absl import flags
from etils import epath
import jax
from jax import export as jax_export
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

import inatsounds_jax
from inatsounds_jax import losses
from inatsounds_jax import storage
from inatsounds_jax import train
from inatsounds_jax.models import classifier as classifier_lib
from inatsounds_jax.models import conv

BUNDLE_FORMAT = 1  # Changes when a bundle written before cannot be read.
CONFIG_FILE = "config.json"
LABELS_FILE = "labels.csv"
EXPORTED_FILE = "model.jax_exported"
TFLITE_FILE = "model.tflite"
VARIABLES_DIR = "variables"
DEFAULT_HOP_SECONDS = 1.5
# Platforms tried in order until one set lowers (an export for CPU alone
# refuses to run on GPU, so the widest set this JAX supports is used).
PLATFORM_SETS = (("cpu", "cuda", "tpu"), ("cpu", "cuda"), ("cpu",))


class BundleError(ValueError):
  """A folder that is not a bundle this library version can read."""


def inference_fn(model: classifier_lib.Classifier, variables: dict):
  """float32 waveforms `[b, samples]` -> (logits, embedding), pure."""
  def fn(waveform):
    embedding, logits = model.apply(
        variables, waveform,
        method=classifier_lib.Classifier.embed_and_classify)
    return logits, embedding
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


def to_tflite(model: classifier_lib.Classifier, variables: dict) -> bytes:
  """The model through jax2tf as a TFLite flatbuffer (builtin ops).

  Traced with the native convolutions (`conv.native_ops`): TFLite's own
  depthwise and pooling kernels beat the XLA-CPU formulations there.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from jax.experimental import jax2tf  # pylint: disable=import-outside-toplevel
  converted = jax2tf.convert(
      inference_fn(model, variables),
      polymorphic_shapes=[f"(b, {model.window_samples})"],
      with_gradient=False)

  def named(waveform):
    logits, embedding = converted(waveform)
    return {"logits": logits, "embedding": embedding}

  function = tf.function(named, autograph=False, input_signature=[
      tf.TensorSpec([None, model.window_samples], tf.float32,
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
  `tf.lite`. The signature runner resizes the batch to each call's.
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

  def __call__(self, waveform) -> tuple[np.ndarray, np.ndarray]:
    outputs = self._runner(waveform=np.asarray(waveform, np.float32))
    return outputs["logits"], outputs["embedding"]


def _label_rows(labels: list[dict]) -> list[list[str]]:
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


def export_bundle(workdir: str, out: str, tflite: bool = False) -> dict:
  """Writes the bundle of `workdir`'s best checkpoint into `out`.

  Returns:
    The bundle's config.json contents.

  Raises:
    BundleError: the model has a location input (`config.location_input`).
  """
  trained = train.load_model_from_workdir(workdir)
  model, variables, config = (trained.model, trained.variables,
                              trained.config)
  if config.get("location_input"):
    # The exported function takes waveforms only; dropping the location
    # would silently classify every recording as unlocated.
    raise BundleError(
        f"{workdir} was trained with location_input "
        f"{config.location_input!r}, which a bundle cannot carry yet (its "
        "function takes waveforms only); predict from the workdir "
        "(`predict --model=WORKDIR`), which passes locations")
  exported, platforms = export_function(model, variables)
  embedding_dim = int(exported.out_avals[1].shape[1])
  # Written beside `out`, then renamed: a bundle is complete or absent.
  out = storage.resolve(out)
  tmp = out.parent / (out.name + ".partial")
  if tmp.exists():
    tmp.rmtree()
  tmp.mkdir(parents=True)
  (tmp / EXPORTED_FILE).write_bytes(exported.serialize())
  labels_csv = io.StringIO()
  writer = csv.writer(labels_csv, lineterminator="\n")
  writer.writerow(["index", "species", "common_name", "supercategory",
                   "taxonomy"])
  writer.writerows(_label_rows(trained.labels))
  (tmp / LABELS_FILE).write_text(labels_csv.getvalue(), encoding="utf-8")
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(tmp / VARIABLES_DIR, jax.device_get(variables))
  if tflite:
    (tmp / TFLITE_FILE).write_bytes(to_tflite(model, variables))
  fe = model.frontend
  description = {
      "bundle_format": BUNDLE_FORMAT,
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
      "jax_version": jax.__version__,
      "checkpoint_step": trained.step,
      "training_data": {"dataset": config.get("dataset", ""),
                        "options": config.get("dataset_options", {}).to_dict()
                        if config.get("dataset_options") else {}},
      "training_config": config.to_dict(),
  }
  storage.write_json(tmp / CONFIG_FILE, description)
  if out.exists():
    out.rmtree()
  tmp.rename(out)
  return description


# ---------------------------------------------------------------------------
# Reading a bundle.
# ---------------------------------------------------------------------------

def is_bundle(path: str) -> bool:
  """True for a folder written by `export_bundle` (any format version)."""
  config = storage.resolve(path) / CONFIG_FILE
  if not config.exists():
    return False
  try:
    return "bundle_format" in storage.read_json(config)
  except json.JSONDecodeError:
    return False


def read_bundle(path: str) -> train.TrainedModel:
  """The module, variables and labels of a bundle, on the default device.

  Raises:
    BundleError: not a bundle, or one of another format version.
  """
  if not is_bundle(path):
    raise BundleError(f"{path} is not a model bundle (no {CONFIG_FILE} with "
                      "bundle_format)")
  folder = storage.resolve(path)
  description = storage.read_json(folder / CONFIG_FILE)
  if description["bundle_format"] != BUNDLE_FORMAT:
    raise BundleError(
        f"{path} is bundle format {description['bundle_format']} (written by "
        f"inatsounds_jax {description.get('library_version', '?')}); this "
        f"version ({inatsounds_jax.__version__}) reads format "
        f"{BUNDLE_FORMAT}: export it again with this version")
  config = ml_collections.ConfigDict(description["training_config"])
  labels = [{k: v for k, v in row.items() if k != "index"}
            for row in csv.DictReader(io.StringIO(
                (folder / LABELS_FILE).read_text(encoding="utf-8"),
                newline=""))]
  multilabel = description["output"] == "multilabel"
  if losses.LOSSES.get(config.loss).multilabel != multilabel:
    raise BundleError(f"{path}: config.json's output and loss disagree")
  model = train.make_model(config, len(labels), multilabel)
  abstract = jax.eval_shape(lambda: model.init(
      {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(0)},
      jnp.zeros((1, model.window_samples), jnp.int16)))
  with ocp.StandardCheckpointer() as ckpt:
    variables = ckpt.restore(folder / VARIABLES_DIR, abstract)
  return train.TrainedModel(
      model=model, variables=variables, config=config, labels=labels,
      multilabel=multilabel, step=description["checkpoint_step"])


def load(path: str) -> tuple[classifier_lib.Classifier, dict]:
  """(Flax module, variables) of a bundle: `module.apply(variables, x)`."""
  trained = read_bundle(path)
  return trained.model, trained.variables


def load_exported(path: str) -> jax_export.Exported:
  """The bundle's `jax.export` artefact (needs only jax)."""
  return jax_export.deserialize(bytearray(
      (storage.resolve(path) / EXPORTED_FILE).read_bytes()))


def _define_flags() -> None:
  """The command's flags, defined only when this module is the program: the
  library module is imported beside `main.py`, which has a --workdir too."""
  flags.DEFINE_string("workdir", None, "Training workdir.")
  flags.DEFINE_string("out", None, "Bundle folder to write.")
  flags.DEFINE_bool("tflite", False, "Also write model.tflite.")


def main(argv):
  del argv
  try:
    description = export_bundle(flags.FLAGS.workdir, flags.FLAGS.out,
                                flags.FLAGS.tflite)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"error: {e}")
  print(f"wrote {flags.FLAGS.out}: {description['model_name']}, "
        f"{description['num_classes']} classes, platforms "
        f"{', '.join(description['platforms'])}"
        + (", model.tflite" if flags.FLAGS.tflite else ""))


if __name__ == "__main__":
  _define_flags()
  flags.mark_flags_as_required(["workdir", "out"])
  app.run(main)
