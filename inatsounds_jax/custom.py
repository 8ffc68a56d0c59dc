"""Teach a model your own sounds: `python -m inatsounds_jax.custom`.

    python -m inatsounds_jax.custom --train=FOLDERS --base=MODEL \\
        --output=BUNDLE [--validation=FOLDERS | --validation_fraction=0.2] \\
        [--keep_base_classes] [--work_dir=DIR] [--overwrite]
    python -m inatsounds_jax.custom --mode=finetune --train=FOLDERS \\
        --base=MODEL --output=BUNDLE [--loss=assume_negative_bce] \\
        [--epochs=10] [--finetune_learning_rate=3e-4]

FOLDERS holds one folder per class, named by its label (BirdNET's
`Genus species_Common Name` works), and optionally `noise` (or `other`,
`background`, `silence`) for sounds that are none of them; MODEL is a
training workdir or a bundle. BUNDLE is an ordinary bundle
(`predict --model=BUNDLE`); the work folder (default `BUNDLE.work`) keeps
the embeddings, so a second run embeds only new recordings, and holds
`report.json` and `thresholds.csv` (for `predict --thresholds`).
`--mode=finetune` trains the whole model through the library's training
loop instead (any multilabel loss; the run, in the work folder, resumes
where it stopped). `custom_classifier.py` says what happens.
"""

from __future__ import annotations

from absl import app
from absl import flags

from inatsounds_jax import cli
from inatsounds_jax import custom_classifier
from inatsounds_jax import input_pipeline


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  fv = {"flag_values": flag_values}
  defaults = custom_classifier.Settings("", "", "")
  flags.DEFINE_string("train", None, "Class folders to train on.", **fv)
  flags.DEFINE_string("base", None, "Base model: training workdir or "
                      "bundle.", **fv)
  flags.DEFINE_string("output", None, "The bundle to write.", **fv)
  flags.DEFINE_enum("mode", defaults.mode, ["linear", "finetune"],
                    "linear: a head on the base model's frozen embeddings; "
                    "finetune: the whole model, through the training loop.",
                    **fv)
  flags.DEFINE_string("loss", defaults.loss, "finetune: a multilabel loss "
                      "of the registry.", **fv)
  flags.DEFINE_float("epochs", defaults.epochs, "finetune: epochs.", **fv)
  flags.DEFINE_float("finetune_learning_rate",
                     defaults.finetune_learning_rate,
                     "finetune: Adam's learning rate.", **fv)
  flags.DEFINE_integer("finetune_batch_size", defaults.finetune_batch_size,
                       "finetune: windows per step.", **fv)
  flags.DEFINE_float("chunk_seconds", defaults.chunk_seconds,
                     "finetune: recordings are cut into examples this "
                     "long.", **fv)
  flags.DEFINE_string("work_dir", "", "Embeddings and report (default "
                      "OUTPUT.work).", **fv)
  flags.DEFINE_string("validation", "", "Class folders to validate on "
                      "(default: --validation_fraction of --train).", **fv)
  flags.DEFINE_float("validation_fraction", defaults.validation_fraction,
                     "Share of each class's recordings that validates.",
                     **fv)
  flags.DEFINE_bool("keep_base_classes", False, "Keep the base model's "
                    "classes; the new ones follow them.", **fv)
  flags.DEFINE_float("hop_seconds", defaults.hop_seconds,
                     "Window hop, as prediction's.", **fv)
  custom_classifier.define_head_flags(flag_values, "linear: ")
  flags.DEFINE_float("target_precision", defaults.target_precision,
                     "Thresholds reach this precision where they can.", **fv)
  flags.DEFINE_integer("seed", defaults.seed, "Validation split and "
                       "initialisation.", **fv)
  flags.DEFINE_integer("batch_size", defaults.batch_size,
                       "Windows per model call.", **fv)
  flags.DEFINE_bool("overwrite", False, "Replace an earlier bundle at "
                    "--output.", **fv)
  flags.mark_flags_as_required(["train", "base", "output"], **fv)


def settings(f: flags.FlagValues) -> custom_classifier.Settings:
  """The run's settings from parsed flags."""
  return custom_classifier.Settings(
      train=f.train, base=f.base, output=f.output, work_dir=f.work_dir,
      validation=f.validation, validation_fraction=f.validation_fraction,
      keep_base_classes=f.keep_base_classes, hop_seconds=f.hop_seconds,
      steps=f.steps, learning_rate=f.learning_rate,
      weight_decay=f.weight_decay, target_precision=f.target_precision,
      seed=f.seed, batch_size=f.batch_size, overwrite=f.overwrite,
      mode=f.mode, loss=f.loss, epochs=f.epochs,
      finetune_learning_rate=f.finetune_learning_rate,
      finetune_batch_size=f.finetune_batch_size,
      chunk_seconds=f.chunk_seconds)


def main(argv):
  del argv
  cli.start_command()
  run = settings(flags.FLAGS)
  try:
    if run.mode == "finetune":
      input_pipeline.hide_gpus_from_tensorflow()  # JAX needs their memory.
      report = custom_classifier.train_finetune(run)
    else:
      report = custom_classifier.train_linear(run)
  except Exception as e:  # pylint: disable=broad-except
    cli.fail_on(e)
  print(custom_classifier.summary(report, run))


if __name__ == "__main__":
  define_flags()
  cli.define_compilation_cache_flag()
  app.run(main, flags_parser=cli.parse_flags)
