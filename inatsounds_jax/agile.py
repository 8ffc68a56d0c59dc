"""Agile modelling from the command line: `python -m inatsounds_jax.agile`.

    # 1. Embed a folder of recordings (resumable: a second run embeds only
    #    what is new).
    python -m inatsounds_jax.agile embed --store=STORE --model=MODEL \\
        --input=RECORDINGS [--hop_seconds=SECONDS] [--predictions=DIR]
    #    (--predictions: take what `predict --embeddings` wrote there
    #    with the same model and hop, computing only the rest)
    # 2. Search by example (a clip, or a span of it): the nearest windows,
    #    with an empty `label` column to fill.
    python -m inatsounds_jax.agile search --store=STORE --model=MODEL \\
        --example=CLIP.wav [--start=2.0 --end=5.0] --k=20 \\
        --output=search.csv
    # 3. Train a round on the labelled CSVs: ROUND/model is a bundle
    #    (`predict --model=ROUND/model`), ROUND/next.csv the windows to
    #    label next, ROUND/detections.csv the top windows of each class.
    python -m inatsounds_jax.agile train --store=STORE --model=MODEL \\
        --labels=search.csv --output=round_1 [--probe=linear|prototype]
    # 4. Label round_1/next.csv, then the next round on all labels so far.
    python -m inatsounds_jax.agile train --store=STORE --model=MODEL \\
        --labels=round_1/labels.csv,round_1/next.csv --output=round_2
    # Score the store again with a round (after embedding more recordings).
    python -m inatsounds_jax.agile score --store=STORE --round=round_2

MODEL is the base model (a training workdir or a bundle) that made the
store. `agile_modelling.py` says what each step does and what the CSVs
hold.
"""

from __future__ import annotations

from absl import app
from absl import flags

from inatsounds_jax import agile_modelling
from inatsounds_jax import cli
from inatsounds_jax import custom_classifier
from inatsounds_jax import inference

STEPS = ("embed", "search", "train", "score")
# The flags each step cannot do without.
REQUIRED = {"embed": ("store", "model", "input"),
            "search": ("store", "example", "output"),
            "train": ("store", "model", "labels", "output"),
            "score": ("store", "round")}


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  fv = {"flag_values": flag_values}
  defaults = agile_modelling.RoundSettings()
  flags.DEFINE_string("store", None, "The embedding store (a folder).", **fv)
  flags.DEFINE_string("model", None, "The base model that makes the "
                      "store's embeddings: training workdir or bundle.", **fv)
  flags.DEFINE_string("input", None, "embed: recordings (a file, folder or "
                      "list).", **fv)
  flags.DEFINE_float("hop_seconds", inference.DEFAULT_HOP_SECONDS,
                     "embed: the windows' hop (a new store's; an existing "
                     "one keeps its own).", **fv)
  flags.DEFINE_integer("batch_size", 32, "embed: windows per model call.",
                       **fv)
  flags.DEFINE_string("predictions", "", "embed: a prediction folder "
                      "(predict --embeddings, same model and hop) whose "
                      "embeddings are taken instead of computed.", **fv)
  flags.DEFINE_string("example", None, "search: the example clip.", **fv)
  flags.DEFINE_float("start", None, "search: the example's span start (s).",
                     **fv)
  flags.DEFINE_float("end", None, "search: the example's span end (s).", **fv)
  flags.DEFINE_integer("k", 20, "search: windows to return.", **fv)
  flags.DEFINE_string("output", None, "search: the CSV to write; train: the "
                      "round's folder.", **fv)
  flags.DEFINE_list("labels", None, "train: labels CSVs.", **fv)
  flags.DEFINE_enum("probe", defaults.probe, agile_modelling.PROBES,
                    "train: linear (a trained head) or prototype (class "
                    "means).", **fv)
  custom_classifier.define_head_flags(flag_values, "train: ")
  flags.DEFINE_float("temperature", defaults.temperature, "train: the "
                     "prototype probe's logit per unit of cosine.", **fv)
  flags.DEFINE_integer("detections", defaults.detections_per_class,
                       "train, score: detections.csv rows per class.", **fv)
  flags.DEFINE_integer("next", defaults.next_windows, "train, score: "
                       "next.csv rows (margin sampling).", **fv)
  flags.DEFINE_string("round", None, "score: a round's folder.", **fv)
  flags.DEFINE_bool("overwrite", False, "train: replace an earlier round "
                    "in --output.", **fv)
  cli.define_compilation_cache_flag(flag_values)


def round_settings(f: flags.FlagValues) -> agile_modelling.RoundSettings:
  return agile_modelling.RoundSettings(
      probe=f.probe, steps=f.steps, learning_rate=f.learning_rate,
      weight_decay=f.weight_decay, temperature=f.temperature,
      detections_per_class=f.detections, next_windows=f.next,
      overwrite=f.overwrite)


def run(step: str, f: flags.FlagValues) -> str:
  """Runs `step`; returns what it made, a line for the terminal."""
  if step == "embed":
    store = agile_modelling.embed(f.store, f.model, f.input,
                                  hop_seconds=f.hop_seconds,
                                  batch_size=f.batch_size,
                                  predictions=f.predictions)
    return (f"{store.folder}: {len(store.recordings)} recordings, "
            f"hop {store.hop_seconds} s")
  if step == "search":
    store = agile_modelling.open_store(f.store, f.model)
    rows = agile_modelling.search(store, f.example, f.k, f.start, f.end)
    agile_modelling.write_windows(f.output, rows)
    return f"wrote {f.output}: {len(rows)} windows; fill its label column"
  if step == "train":
    report = agile_modelling.train_round(f.store, f.model, f.labels,
                                         f.output, round_settings(f))
    return (f"wrote {f.output}: {report['probe']} probe on "
            f"{len(report['classes'])} classes "
            f"({report['negative_windows']} negative windows); label "
            f"{f.output}/{agile_modelling.NEXT_FILE} next")
  scored = agile_modelling.rescore_round(f.store, f.round, round_settings(f))
  return (f"scored {scored['windows_scored']} windows into "
          f"{f.round}/{agile_modelling.DETECTIONS_FILE} and "
          f"{agile_modelling.NEXT_FILE}")


def main(argv):
  if len(argv) != 2 or argv[1] not in STEPS:
    cli.fail(f"give one step: {' | '.join(STEPS)} (got {argv[1:]})",
             ValueError(argv))
  step = argv[1]
  missing = [name for name in REQUIRED[step] if flags.FLAGS[name].value is None]
  if missing:
    cli.fail(f"{step} needs --{', --'.join(missing)}", ValueError(missing))
  cli.start_command()
  try:
    line = run(step, flags.FLAGS)
  except Exception as e:  # pylint: disable=broad-except
    cli.fail_on(e)
  print(line)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
