"""Species predictions for recordings, from a training workdir or a bundle.

    python -m inatsounds_jax.predict --model=WORKDIR_OR_BUNDLE \\
        --input=FILE_OR_FOLDER_OR_LIST.txt --output=FOLDER \\
        [--format=raven,csv] [--embeddings=npz|parquet] [--hop_seconds=1.5] \\
        [--min_confidence=0.25] [--thresholds=thresholds.csv] [--top_k=N] \\
        [--species_list=FILE] \\
        [--latitude=.. --longitude=.. | --locations=CSV] \\
        [--geo_prior=DIR [--geo_filter] [--geo_threshold=0.1]]

Recordings (wav, flac, ogg, mp3; any rate and channel count) are classified
by `inference.Predictor` (its docstring: windows every hop on the dense
evaluation layout, softmax or sigmoid probabilities, the prior's column).
Its stream delivers a recording chunk by chunk; the command reduces each
chunk straight to the rows it writes (`inference.detections`:
--min_confidence, --thresholds, --top_k, --species_list, the prior) and
appends them, and the embeddings and logits, to the recording's output
files, so its memory stays flat in file length.

--thresholds=FILE gives each species its own cut-off instead of
--min_confidence: FILE is the `thresholds.csv` that
`python -m inatsounds_jax.evaluate` writes, or any CSV with columns
`species` and `threshold` (others are ignored, so it can be edited by
hand; `inference.read_thresholds`). A window's probability at or above its
species' threshold is a row. Species are named as in --species_list
(scientific, common, or BirdNET's `Scientific_Common`); an empty threshold,
or a label the file does not name, keeps --min_confidence, and names that
are no label are said in one `warning:` line. A threshold outside [0, 1] or
not a number ends the command in one `error:` line naming the file and row.
--top_k still ranks a window's species before the thresholds apply.
settings.json records the file's absolute path and a digest of its
content, so resuming with an edited file is refused like any other change.

Samples beyond full scale (a float recording louder than [-1, 1], or the
overshoot of resampling a full-scale one) are clipped to full scale, as
the decoder does for training; such a recording is predicted all the same,
and said once: a `warning:` line and an `errors.tsv` row of kind `clipped`.

A model trained with a location input (`config.location_input`,
`geo/location_input.py`) is given each recording's location (--latitude/
--longitude or --locations; a recording without one is classified as with
an unknown location, as in training). `prior_logits` models rebuild their
training prior from the range-model workdir their config names; one trained
on the synthetic corpus's true ranges is refused.

The output folder mirrors the input's relative paths. A recording's files
are named after its path relative to --input without its extension
(`sub/good.wav` -> `sub/good.BirdNET.results.csv`), or with it where two
recordings would otherwise share a name (`good.wav` and `good.mp3` in one
folder -> `good.wav.BirdNET.results.csv` and `good.mp3.BirdNET.results.csv`;
names are compared ignoring case, as some file systems do). The folder also
holds `settings.json` (the input, the model, the label list digest, every
option, the library version), `errors.tsv` (file, kind, reason) and, with
`csv`, the combined CSV. A run started again skips recordings whose outputs
all exist (each file is filled under a `.partial` name and renamed when its
recording is done, so a killed run leaves nothing that looks complete) and
refuses another input or other settings (a settings.json written before the
input was recorded resumes). One run at a time writes into a folder
(`workdir_lock`): a second one started meanwhile is refused, naming the
first.

Every problem that stops the command (a bad flag, model, bundle or input)
ends it in one `error:` line; --verbosity=1 also prints the traceback.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tqdm

import inatsounds_jax
from inatsounds_jax import audio
from inatsounds_jax import cli
from inatsounds_jax import inference
from inatsounds_jax import storage
from inatsounds_jax import tables
from inatsounds_jax import workdir_lock

# Settings recorded since a release: a settings.json without them resumes.
_ADDED_SETTINGS = ("input",)


@dataclasses.dataclass(frozen=True)
class RunOptions:
  """What the command writes, and where the recordings are."""
  formats: tuple[str, ...] = ("raven", "csv")
  embeddings: str = ""
  selection: inference.Selection = inference.Selection()
  latitude: float = math.nan
  longitude: float = math.nan
  locations: str = ""


# ---------------------------------------------------------------------------
# The output folder: settings, file names, per-recording files.
# ---------------------------------------------------------------------------

def _settings(predictor: inference.Predictor, input_path: str,
              options: RunOptions, extra: dict | None) -> dict:
  """What settings.json records: the input, the model, the windows, every
  option."""
  fe = predictor.windows.frontend
  return {
      "input": os.path.abspath(input_path),
      "model": os.fspath(storage.resolve(predictor.model_path)),
      "model_name": predictor.trained.model.backbone,
      "checkpoint_step": predictor.trained.step,
      "labels": len(predictor.labels),
      "label_list_sha256": inference.label_digest(predictor.labels),
      "activation": predictor.activation,
      "sample_rate": fe.sample_rate,
      "window_samples": predictor.windows.window_samples,
      "window_seconds": predictor.windows.window_samples / fe.sample_rate,
      "hop_frames": predictor.windows.eval_stride_frames,
      "hop_seconds": predictor.hop_seconds,
      "min_confidence": options.selection.min_confidence,
      "top_k": options.selection.top_k,
      "formats": list(options.formats),
      "embeddings": options.embeddings,
      "latitude": None if math.isnan(options.latitude) else options.latitude,
      "longitude": (None if math.isnan(options.longitude)
                    else options.longitude),
      "locations": options.locations,
      "geo_prior": predictor.prior is not None,
      "geo_filter": options.selection.geo_filter,
      "geo_threshold": options.selection.geo_threshold,
      "library_version": inatsounds_jax.__version__,
      **(extra or {}),
  }


def _record_settings(output: str, settings: dict) -> None:
  """Writes settings.json; refuses a folder holding another run's results."""
  path = os.path.join(output, tables.SETTINGS_FILE)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    changed = sorted(k for k in set(old) | set(settings)
                     if k not in ("started", "library_version")
                     and (k in old or k not in _ADDED_SETTINGS)
                     and old.get(k) != settings.get(k))
    if changed:
      raise inference.InputError(
          f"{output} holds results made with other settings ("
          + ", ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}"
                      for k in changed[:6])
          + "); use another --output, or the same settings to resume")
  storage.write_json(path, settings)


# ---------------------------------------------------------------------------
# The run, step by step.
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class _Todo:
  """A recording to predict: where it is, where it was made, its outputs."""
  path: str
  latitude: float
  longitude: float
  outputs: dict[str, str]


@dataclasses.dataclass
class _Plan:
  """The recordings to predict; those done before and their detections."""
  todo: list[_Todo]
  skipped: int
  detections_before: int
  outputs: list[dict[str, str]]  # Every recording's, in input order.


def _plan(files: Sequence[tuple[str, str]], output: str, options: RunOptions,
          locations: dict[str, tuple[float, float]]) -> _Plan:
  """A recording is done when all its outputs exist."""
  plan = _Plan([], 0, 0, [])
  names = tables.output_names([relative for _, relative in files])
  for (path, relative), name in zip(files, names):
    paths = tables.output_paths(os.path.join(output, name), options.formats,
                                options.embeddings)
    plan.outputs.append(paths)
    if all(os.path.exists(p) for p in paths.values()):
      plan.skipped += 1
      plan.detections_before += next(
          (tables.count_rows(paths[f]) for f in options.formats), 0)
      continue
    lat, lon = locations.get(relative) or locations.get(path) or (
        locations.get(os.path.basename(path))
        or (options.latitude, options.longitude))
    plan.todo.append(_Todo(path, lat, lon, paths))
  return plan


def _progress_bar(todo: list[_Todo]) -> tqdm.tqdm:
  """A bar over the hours of audio the headers declare (an unreadable
  header counts 0: decoding will report the file)."""
  total_s = sum(audio.header_seconds(t.path) for t in todo)
  return tqdm.tqdm(total=total_s / 3600, unit="h audio", desc="predict",
                   disable=not todo,
                   bar_format="{l_bar}{bar}| {n:.3f}/{total:.3f} h audio "
                   "[{elapsed}<{remaining}] {postfix}")


def _predict_and_write(predictor: inference.Predictor, todo: list[_Todo],
                       options: RunOptions
                       ) -> tuple[dict, list[tuple[str, str, str]]]:
  """Classifies `todo`, writing each recording's files as its chunks come.

  Returns:
    ({"done", "failed", "detections"}, (file, kind, reason) of failures
    and of recordings predicted with samples clipped).
  """
  fe = predictor.windows.frontend
  band = tables.Band(fe.lower_edge_hz, fe.upper_edge_hz)
  with_prior = predictor.prior is not None
  counts = {"done": 0, "failed": 0, "detections": 0}
  errors = []
  writing: tables.RecordingFiles | None = None
  with _progress_bar(todo) as bar:
    for event in predictor.stream([(t.path, t.latitude, t.longitude)
                                   for t in todo]):
      item = todo[event.index]
      if event.kind == inference.BEGIN:
        if writing is not None:  # A re-cut: the first pass is void.
          writing.discard()
        else:
          covered = 0.0  # Seconds of the recording on the progress bar.
        writing = tables.RecordingFiles(item.outputs, band, with_prior)
      elif event.kind == inference.WINDOWS:
        table = event.table
        writing.add(inference.detections(table, predictor.labels,
                                         options.selection,
                                         os.path.abspath(item.path)),
                    {"start_s": table.start_s, "end_s": table.end_s,
                     "embeddings": table.embeddings, "logits": table.logits})
        end = table.end_s[-1]
        # Headers may round a resampled length down: never past the total.
        bar.update(min(max(0.0, end - covered) / 3600, bar.total - bar.n))
        covered = max(covered, end)
      elif event.kind == inference.END:
        writing.commit()
        counts["done"] += 1
        counts["detections"] += writing.detections
        writing = None
        if event.clipping:  # Predicted all the same: said once, kept.
          errors.append((item.path, "clipped", event.clipping))
          bar.write(f"warning: {event.clipping}", file=sys.stderr)
      else:
        if writing is not None:
          writing.discard()
          writing = None
        counts["failed"] += 1
        kind = getattr(event.error, "kind", type(event.error).__name__)
        errors.append((item.path, kind, str(event.error)))
        bar.write(f"error: {event.error}", file=sys.stderr)
      if event.kind in (inference.END, inference.ERROR):
        bar.set_postfix_str(f"files {counts['done'] + counts['failed']}"
                            f"/{len(todo)}")
  return counts, errors


def run(predictor: inference.Predictor, input_path: str, output: str,
        options: RunOptions, settings_extra: dict | None = None) -> dict:
  """Predicts every recording under `input_path` into `output`.

  Returns:
    Counts: {"done", "skipped", "failed", "detections" (of the recordings
    done now), "detections_before" (of those skipped)}.

  Raises:
    inference.InputError: bad inputs, or `output` holds other settings.
    workdir_lock.FolderInUseError: another run writes into `output`.
    workdir_lock.FolderNotWritableError: `output` cannot be written.
  """
  for name in options.formats:
    tables.FORMATS.get(name)
  if options.embeddings:
    tables.EMBEDDING_FORMATS.get(options.embeddings)
  files = inference.find_audio(input_path)
  locations = (inference.read_locations(options.locations)
               if options.locations else {})
  # One run at a time in a folder: two would write each other's files.
  with workdir_lock.hold(output, "prediction", "--output"):
    _record_settings(output, _settings(predictor, input_path, options,
                                       settings_extra))
    plan = _plan(files, output, options, locations)
    for line in predictor.unlocated_warnings(
        [t.path for t in plan.todo
         if math.isnan(t.latitude) or math.isnan(t.longitude)],
        len(plan.todo)):
      print(line, file=sys.stderr)
    started = time.time()
    counts, errors = _predict_and_write(predictor, plan.todo, options)
    # Rows of recordings done before (a clipped one's) stay; a recording
    # processed now has only this run's.
    processed = {t.path for t in plan.todo}
    tables.write_errors(output, [row for row in tables.read_errors(output)
                                 if row[0] not in processed] + errors)
    if "csv" in options.formats:
      tables.combine_csv([p["csv"] for p in plan.outputs
                          if os.path.exists(p["csv"])],
                         os.path.join(output, tables.COMBINED_CSV))
  logging.info("%d files predicted, %d skipped (done before), %d failed, "
               "%.1f s", counts["done"], plan.skipped, counts["failed"],
               time.time() - started)
  return dict(counts, skipped=plan.skipped,
              detections_before=plan.detections_before)


# ---------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------

def _define_flags() -> None:
  """The command's flags, defined only when this module is the program: the
  library module is imported beside `main.py`, whose flags share absl's
  registry."""
  flags.DEFINE_string("model", None, "Training workdir or bundle.")
  flags.DEFINE_string("input", None,
                      "A recording, a folder (recursive) or a .txt list.")
  flags.DEFINE_string("output", None, "Output folder.")
  flags.DEFINE_list("format", ["raven", "csv"],
                    f"Outputs: {tables.FORMATS.names()}.")
  flags.DEFINE_string("embeddings", "",
                      "Also write per-window embeddings and logits: "
                      f"{tables.EMBEDDING_FORMATS.names()} ('' none).")
  flags.DEFINE_float("hop_seconds", inference.DEFAULT_HOP_SECONDS,
                     "Window hop (rounded to spectrogram frames).")
  flags.DEFINE_float("min_confidence", 0.25,
                     "Detections below are not written.")
  flags.DEFINE_integer("top_k", 0,
                       "At most this many species per window (0 all).")
  flags.DEFINE_string("species_list", "",
                      "Only these species (one name a line).")
  flags.DEFINE_string("thresholds", "",
                      "CSV of per-species thresholds (columns species, "
                      "threshold: evaluate's thresholds.csv) replacing "
                      "--min_confidence where given.")
  flags.DEFINE_float("latitude", None, "Latitude of all files.")
  flags.DEFINE_float("longitude", None, "Longitude of all files.")
  flags.DEFINE_string("locations", "",
                      "CSV with columns file, latitude, longitude.")
  flags.DEFINE_string("geo_prior", "", "Range model folder.")
  flags.DEFINE_bool("geo_filter", False,
                    "Drop species whose prior is below --geo_threshold "
                    "(else the prior is only reported).")
  flags.DEFINE_float("geo_threshold", 0.1, "Threshold of --geo_filter.")
  flags.DEFINE_integer("batch_size", 32, "Windows per call.")
  cli.define_compilation_cache_flag()
  _validate_flags()


def _validate_flags() -> None:
  """Bad values end the command at parsing, before any work, in one line
  naming the flag."""
  for name, check, message in (
      ("hop_seconds", lambda x: x > 0, "give a hop longer than 0 s"),
      ("min_confidence", lambda x: 0 <= x <= 1,
       "give a probability between 0 and 1"),
      ("top_k", lambda x: x >= 0, "give 0 (every species) or more"),
      ("batch_size", lambda x: x >= 1, "give 1 or more windows per call")):
    flags.register_validator(name, check, message)
  flags.register_multi_flags_validator(
      ["latitude", "longitude", "locations"], cli.check_location_flags)
  flags.register_multi_flags_validator(
      ["geo_filter", "geo_prior"],
      lambda v: not v["geo_filter"] or v["geo_prior"],
      "--geo_filter needs --geo_prior")


def _warn_unknown(path: str, unknown: Sequence[str]) -> None:
  """One `warning:` line naming a species file's names that are no label
  (ignored: a list made for another model still serves)."""
  if unknown:
    print(f"warning: {len(unknown)} names in {path} are not labels of the "
          f"model and are ignored: {', '.join(unknown)}", file=sys.stderr)


def _main_options() -> tuple[inference.Predictor, RunOptions, dict]:
  f = flags.FLAGS
  predictor = inference.Predictor(f.model, hop_seconds=f.hop_seconds,
                                  batch_size=f.batch_size,
                                  geo_prior=f.geo_prior or None)
  allowed = thresholds = None
  extra = {}
  if f.species_list:
    allowed, unknown = inference.read_species_list(f.species_list,
                                                   predictor.labels)
    _warn_unknown(f.species_list, unknown)
    extra.update({"species_list": os.path.abspath(f.species_list),
                  "species_list_unknown": unknown,
                  "species_list_used": int(allowed.sum())})
  if f.thresholds:
    read = inference.read_thresholds(f.thresholds, predictor.labels)
    _warn_unknown(f.thresholds, read.unknown)
    thresholds = read.thresholds
    extra.update({"thresholds": os.path.abspath(f.thresholds),
                  "thresholds_sha256": read.sha256,
                  "thresholds_used": int((~np.isnan(thresholds)).sum())})
  options = RunOptions(
      formats=tuple(f.format), embeddings=f.embeddings,
      selection=inference.Selection(
          min_confidence=f.min_confidence, top_k=f.top_k,
          allowed=allowed, geo_filter=f.geo_filter,
          geo_threshold=f.geo_threshold, thresholds=thresholds),
      latitude=math.nan if f.latitude is None else f.latitude,
      longitude=math.nan if f.longitude is None else f.longitude,
      locations=f.locations)
  return predictor, options, extra


def main(argv):
  del argv
  cli.start_command()
  try:
    predictor, options, extra = _main_options()
    counts = run(predictor, flags.FLAGS.input, flags.FLAGS.output, options,
                 extra)
  except KeyboardInterrupt as e:
    cli.stop("prediction interrupted (Ctrl-C); run the same command again "
             "to go on: recordings done are kept", e, 130)
  except Exception as e:  # pylint: disable=broad-except
    cli.fail_on(e)
  print(f"{counts['done']} recordings predicted ({counts['detections']} "
        f"detections), {counts['skipped']} already done "
        f"({counts['detections_before']} detections), {counts['failed']} "
        f"failed (see {os.path.join(flags.FLAGS.output, tables.ERRORS_FILE)})")
  if counts["failed"] and not counts["done"] and not counts["skipped"]:
    sys.exit(1)


if __name__ == "__main__":
  _define_flags()
  flags.mark_flags_as_required(["model", "input", "output"])
  app.run(main, flags_parser=cli.parse_flags)
