"""Soundscape evaluation of a model, or of prediction tables, on annotations.

    python -m inatsounds_jax.evaluate --model=WORKDIR_OR_BUNDLE \\
        --audio=DIR --annotations=DIR_OR_CSV --output=DIR \\
        [--species_map=CSV] [--species_column=NAME] \\
        [--every_recording_annotated] [--hop_seconds=1.5] \\
        [--min_overlap=0.0] [--segment_seconds=S] [--target_precision=0.9] \\
        [--bootstrap=1000] [--latitude=.. --longitude=.. | --locations=CSV] \\
        [--geo_prior=DIR] [--geo_threshold=0.1] [--batch_size=32]
    python -m inatsounds_jax.evaluate --predictions=DIR_OR_TABLE ... \\
        [--window_seconds=S] [--hop_seconds=S] \\
        [--latitude=.. --longitude=.. | --locations=CSV] [--geo_prior=DIR]

The iNatSounds paper's downstream protocol (Chasmai et al. 2025, s.5.2):
a model trained on weak single-species labels, judged on strongly
annotated soundscapes (`soundscapes.py` holds every rule: scored species,
window and segment truth, max pooling, the prior view, tables' windows,
thresholds, outputs). With --predictions the tables that
`inatsounds_jax.predict` or BirdNET-Analyzer wrote are judged instead, on
the same annotations, with and without the library's range model as
prior (--geo_prior: BirdNET's output judged with our SINR prior). --audio
is needed in both modes: the recordings' names match the annotations and
tables, and their lengths bound the windows and the files.

The command only parses flags and calls `soundscapes.run`. Every flag is
checked at parsing, before any work, each bad one in one `error:` line
naming it; any other problem that stops the command ends it in one
`error:` line too (--verbosity=1 also prints the traceback), as does a run
where nothing could be evaluated (no annotated recording read, or no
annotated species among the labels), with exit status 1. Problems that
stop only part of the run (unknown species, damaged tables, missing or
undecodable recordings) are reported in problems.tsv, mapping.tsv and the
summary, and the rest is evaluated.
"""

from __future__ import annotations

import math

from absl import app
from absl import flags

from inatsounds_jax import cli
from inatsounds_jax import soundscapes


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """The command's flags and their checks, on `flag_values`.

  Defined only when this module is the program (and by the tests on their
  own `FlagValues`): the library is imported beside `main.py`, whose flags
  share absl's registry.
  """
  fv = {"flag_values": flag_values}
  flags.DEFINE_string("model", None, "Training workdir or bundle.", **fv)
  flags.DEFINE_string("predictions", None,
                      "Instead of --model: a folder of prediction tables "
                      "(inatsounds_jax.predict's or BirdNET-Analyzer's), or "
                      "one table.", **fv)
  flags.DEFINE_string("audio", None, "The annotated recordings: a folder "
                      "(recursive), a recording or a .txt list.", **fv)
  flags.DEFINE_string("annotations", None, "Raven tables (a folder) or one "
                      "table or CSV naming its recordings.", **fv)
  flags.DEFINE_string("output", None, "Output folder.", **fv)
  flags.DEFINE_string("species_map", "", "CSV: codes or names -> "
                      "scientific names.", **fv)
  flags.DEFINE_string("species_column", None, "The annotations' species "
                      "column (default: the first known spelling).", **fv)
  flags.DEFINE_bool("every_recording_annotated", False,
                    "Recordings no annotation names have no calls (a CSV "
                    "of events only), instead of being left out.", **fv)
  flags.DEFINE_float("hop_seconds", None,
                     "Window hop (default: 1.5 s for a model; the tables' "
                     "settings.json or rows for --predictions).", **fv)
  flags.DEFINE_float("window_seconds", None,
                     "--predictions only: the tables' window length "
                     "(default: settings.json's, else the rows').", **fv)
  flags.DEFINE_float("min_overlap", 0.0, "A window holds a call overlapping "
                     "it by this fraction of the shorter of the two.", **fv)
  flags.DEFINE_float("segment_seconds", None, "Pooled level: segments of "
                     "this length (default: whole recordings).", **fv)
  flags.DEFINE_float("target_precision", 0.9, "Per-species thresholds reach "
                     "this precision.", **fv)
  flags.DEFINE_integer("bootstrap", 1000, "Resamples of recordings for the "
                       "intervals (0: none).", **fv)
  flags.DEFINE_integer("seed", 0, "The bootstrap's seed.", **fv)
  flags.DEFINE_float("latitude", None, "Latitude of all recordings.", **fv)
  flags.DEFINE_float("longitude", None, "Longitude of all recordings.", **fv)
  flags.DEFINE_string("locations", "",
                      "CSV with columns file, latitude, longitude.", **fv)
  flags.DEFINE_string("geo_prior", "", "Range model folder: adds the view "
                      "'prior'.", **fv)
  flags.DEFINE_float("geo_threshold", 0.1, "The prior view drops species "
                     "whose prior is below this.", **fv)
  flags.DEFINE_integer("batch_size", 32, "Windows per model call.", **fv)
  for name, check, message in (
      ("min_overlap", lambda x: 0 <= x <= 1, "give a fraction in [0, 1]"),
      ("segment_seconds", lambda x: x is None or x > 0,
       "give a segment longer than 0 s"),
      ("target_precision", lambda x: 0 < x <= 1,
       "give a precision in (0, 1]"),
      ("bootstrap", lambda x: x == 0 or x >= 2,
       "give 0 (no intervals) or 2 or more resamples"),
      ("hop_seconds", lambda x: x is None or x > 0,
       "give a hop longer than 0 s"),
      ("window_seconds", lambda x: x is None or x > 0,
       "give a window longer than 0 s"),
      ("geo_threshold", lambda x: 0 <= x <= 1,
       "give a probability between 0 and 1"),
      ("batch_size", lambda x: x >= 1, "give 1 or more windows per call")):
    flags.register_validator(name, check, message, **fv)
  flags.register_multi_flags_validator(
      ["model", "predictions"],
      lambda v: bool(v["model"]) != bool(v["predictions"]),
      "give --model or --predictions (one of them)", **fv)
  flags.register_multi_flags_validator(
      ["latitude", "longitude", "locations"],
      cli.check_location_flags,
      **fv)
  flags.register_multi_flags_validator(
      ["predictions", "window_seconds"], _check_mode_flags,
      **fv)
  flags.mark_flags_as_required(["audio", "annotations", "output"], **fv)


def _check_mode_flags(values: dict) -> bool:
  """--window_seconds is refused with a model."""
  if not values["predictions"] and values["window_seconds"] is not None:
    raise flags.ValidationError(
        "--window_seconds applies to --predictions (a model's window is its "
        "own)")
  return True


def options(f: flags.FlagValues
            ) -> tuple[soundscapes.Inputs, soundscapes.Settings]:
  """The run's inputs and settings from parsed flags."""
  inputs = soundscapes.Inputs(
      audio=f.audio, annotations=f.annotations, output=f.output,
      model=f.model or "", predictions=f.predictions or "",
      species_map=f.species_map, species_column=f.species_column,
      every_recording_annotated=f.every_recording_annotated,
      hop_seconds=f.hop_seconds, window_seconds=f.window_seconds,
      latitude=math.nan if f.latitude is None else f.latitude,
      longitude=math.nan if f.longitude is None else f.longitude,
      locations=f.locations, geo_prior=f.geo_prior, batch_size=f.batch_size)
  settings = soundscapes.Settings(
      min_overlap=f.min_overlap, segment_seconds=f.segment_seconds,
      target_precision=f.target_precision, bootstrap=f.bootstrap,
      seed=f.seed, geo_threshold=f.geo_threshold)
  return inputs, settings


def main(argv):
  del argv
  cli.start_command()
  try:
    inputs, settings = options(flags.FLAGS)
    evaluation = soundscapes.run(inputs, settings, progress_bar=True)
  except Exception as e:  # pylint: disable=broad-except
    cli.fail_on(e)
  print(soundscapes.summary(evaluation, flags.FLAGS.output))


if __name__ == "__main__":
  define_flags()
  cli.define_compilation_cache_flag()
  app.run(main, flags_parser=cli.parse_flags)
