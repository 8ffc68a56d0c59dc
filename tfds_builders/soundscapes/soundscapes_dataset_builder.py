"""TFDS builder for strongly labelled soundscapes: chunks with their calls.

    tfds build tfds_builders/soundscapes --config=synthetic

From Python, any annotated set (the layout `python -m inatsounds_jax.evaluate`
reads: recordings, Raven selection tables or one Powdermill/SSW-style CSV,
an optional species map):

    data.prepare("soundscapes", data_dir=..., audio="DIR/recordings",
                 annotations="DIR/tables", species_map="DIR/map.csv",
                 chunk_seconds=10.0, labels=...)

or, in a run, `config.evals.<name>.soundscapes` (the strong-label
evaluator on the set, its species mapped onto the run's labels) or
`config.dataset = "soundscapes"` with these fields in
`config.dataset_options`.

The downstream sets of the iNatSounds paper (Chasmai et al. 2025, s.5.2:
Powdermill, SSW) are hours of audio with every call annotated in time. They
become records of the form the synthetic corpus's strongly labelled splits
have, so the strong-label evaluator, the input pipeline and the `full`
label mode read them with no code of their own. One split, `test`; one
example per chunk of `chunk_seconds` (the last chunk of a recording holds
the rest, shorter), in recording order (sorted paths) and time order:

- `audio`: the chunk, mono int16 at 22,050 Hz (`audio.py`'s canonical
  form). Recordings are decoded block by block and cut as they come, so
  memory is one chunk and one block, whatever a recording's length.
- `event_label`, `event_start`, `event_end`: every annotated call
  overlapping the chunk (by more than `annotations.TIME_EPSILON_S`), its
  label and its times in seconds from the chunk's start, as the table gives
  them: a call across an edge of the chunk keeps its true times (start
  below 0 or end past the chunk's length), so overlap with any window is
  the recording's.
- `label`: the label calling longest in the chunk (a weak label, for
  single-positive views); -1 (TFDS's "no label") where no labelled species
  calls. Train on chunks with `label_mode="full"`, whose targets are the
  events.
- `recording_id`: the recording's position in the set: every chunk of a
  recording shares it, so the evaluator's file level is the recording.
- `example_index`: the chunk's position in the split; `file_name` (the
  recording's path relative to `audio`), `start_sample`, `duration` (the
  chunk's seconds); `checklist` (empty), `latitude`, `longitude` (NaN:
  the sets give no location per recording).

The label space is `labels` ((species, common name) per label, in label
order: a model's labels, as the evaluator gives the run's), else the
scientific names of the species map, else the annotated species as
written, sorted. Species match labels as `annotations.map_species` matches
them (scientific name, common name, BirdNET's `Scientific_Common`, then the
species map).

Bad input never stops the build (`annotations.read_annotations` reads
every table): an unreadable, damaged or empty table, an unknown column
layout, a table or row naming a recording that is not there, a row with
end <= start, starting past its recording's end (ending past it: clipped),
a recording that does not decode, a recording no table names (absent
annotations are not evidence of absence: left out, unless
`every_recording_annotated`), and each annotated species not in the label
space (its calls kept out of every chunk) are each one row (file, row,
reason) of `build_report.tsv` next to the records, summarised at the end;
the rest is built. `species_mapping.tsv` says what each annotated species
mapped to. The other side files are the iNatSounds builder's
(`classes.json`, `label_counts.json`, `label_sources.json`), so
`inatsounds_jax.data` reads them the same way.

Records are never used for a source they were not built from: a set's
config is named by a digest of its fields and of its files (each table's
and the species map's bytes, each recording's path and size), so changed
files get records of their own.

The `synthetic` config writes the synthetic corpus's soundscapes
(`synthetic.write_soundscapes`: long multi-species recordings, Raven tables
naming species by code, the species map) into the download dir and builds
them with the corpus's labels, the `synthetic` iNatSounds config's for the
same `num_species` and `seed`, so everything is tested without a download.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import os
import sys

import numpy as np
import tensorflow_datasets as tfds

from inatsounds_jax import annotations as annotations_lib
from inatsounds_jax import audio as audio_lib
from inatsounds_jax import registry
from inatsounds_jax import synthetic
from tfds_builders.inat_sounds import inat_sounds_dataset_builder as inat

SPLIT = "test"
REPORT_NAME = inat.REPORT_NAME
MAPPING_NAME = "species_mapping.tsv"
# The side files are those of the iNatSounds records, so `data.py` reads
# them the same way.
CLASSES_NAME = inat.CLASSES_NAME
LABEL_COUNTS_NAME = inat.LABEL_COUNTS_NAME
LABEL_SOURCES_NAME = inat.LABEL_SOURCES_NAME
# Written next to the synthetic soundscapes' folder once they are complete
# (not inside it: `write_soundscapes` refuses folders holding other files).
_COMPLETE_SUFFIX = ".complete"


@dataclasses.dataclass
class SoundscapesConfig(tfds.core.BuilderConfig):
  """A set of annotated recordings (module docstring), or the synthetic one.

  Attributes:
    audio: the recordings: a folder (searched recursively), a file, or a
      text list (`audio.find_audio`); "" for the synthetic soundscapes.
    annotations: a folder of tables (recursively) or one table or CSV
      (`annotations.read_annotations`).
    species_map: a CSV of codes and other names -> scientific names
      (`annotations.SpeciesMap`); "" for none.
    labels: (species, common name) per label, in label order; empty: the
      species map's scientific names, else the annotated species, sorted.
    chunk_seconds: the length of an example.
    species_column, every_recording_annotated: as
      `annotations.read_annotations` takes them.
    num_species, num_recordings, seed: the synthetic corpus whose species
      call (its `CorpusConfig`); num_soundscapes, soundscape_seconds,
      soundscape_seed: the synthetic soundscapes (`write_soundscapes`).
  """
  audio: str = ""
  annotations: str = ""
  species_map: str = ""
  labels: tuple[tuple[str, str], ...] = ()
  chunk_seconds: float = 10.0
  species_column: str = ""
  every_recording_annotated: bool = False
  num_species: int = 50
  num_recordings: int = 2000
  seed: int = 0
  num_soundscapes: int = 8
  soundscape_seconds: float = 60.0
  soundscape_seed: int = 0


_FIELDS = tuple(f.name for f in dataclasses.fields(SoundscapesConfig)
                if f.name not in {f.name for f in dataclasses.fields(
                    tfds.core.BuilderConfig)})
_SYNTHETIC_FIELDS = ("num_species", "num_recordings", "seed",
                     "num_soundscapes", "soundscape_seconds",
                     "soundscape_seed")
_SET_FIELDS = ("audio", "annotations", "species_map", "labels",
               "species_column", "every_recording_annotated")


def _digest(value) -> str:
  return hashlib.sha256(json.dumps(value, sort_keys=True).encode()
                        ).hexdigest()[:16]


def _file_digest(path: str) -> str:
  with open(path, "rb") as f:  # Tables and species maps: small files.
    return hashlib.sha256(f.read()).hexdigest()


def source_fingerprint(audio: str, annotations: str, species_map: str
                       ) -> dict:
  """What a set's records depend on: each table's and the species map's
  SHA-256, each recording's relative path and size.

  Raises:
    registry.ConfigError: no recordings (`audio.NoAudioError`), or no such
      annotations or species map.
  """
  recordings = {relative: os.path.getsize(path)
                for path, relative in audio_lib.find_audio(audio)}
  if os.path.isdir(annotations):
    tables = {}
    for root, _, names in os.walk(annotations):
      for name in names:
        path = os.path.join(root, name)
        tables[os.path.relpath(path, annotations)] = _file_digest(path)
  elif os.path.isfile(annotations):
    tables = {os.path.basename(annotations): _file_digest(annotations)}
  else:
    raise registry.ConfigError(f"annotations {annotations!r}: no such file "
                               "or folder")
  if species_map and not os.path.isfile(species_map):
    raise registry.ConfigError(f"species map {species_map!r}: no such file")
  return {"recordings": recordings, "tables": tables,
          "species_map": _file_digest(species_map) if species_map else ""}


def config_for(**fields) -> SoundscapesConfig:
  """The config of `fields`: `synthetic` (named by its sizes where they
  are not the defaults) without `audio`, else a set named by a digest of its
  fields and its files (`source_fingerprint`).

  Raises:
    ValueError: an unknown field, or a set without `annotations`, or
      synthetic sizes with `audio`.
    registry.ConfigError: the set's files are missing.
  """
  unknown = sorted(set(fields) - set(_FIELDS))
  if unknown:
    raise ValueError(f"unknown soundscapes fields {unknown}; known: "
                     f"{sorted(_FIELDS)}")
  fields = dict(fields)
  if "labels" in fields:  # Lists from a config file or JSON.
    fields["labels"] = tuple((str(s), str(c)) for s, c in fields["labels"])
  fields.setdefault("chunk_seconds", SoundscapesConfig.chunk_seconds)
  if not fields["chunk_seconds"] > 0:
    raise ValueError(f"chunk_seconds={fields['chunk_seconds']}: give a "
                     "positive length")
  if not fields.get("audio"):
    if fields.get("annotations") or fields.get("species_map"):
      raise ValueError("annotations and species_map need audio (the "
                       "recordings they annotate)")
    default = SYNTHETIC
    changed = {k: v for k, v in fields.items()
               if v != getattr(default, k)}
    name = "synthetic" + (f"_{_digest(changed)}" if changed else "")
    return SoundscapesConfig(name=name, description=default.description,
                             **fields)
  given = sorted(set(fields) & set(_SYNTHETIC_FIELDS))
  if given:
    raise ValueError(f"{given} describe the synthetic soundscapes; a set "
                     "with audio takes none of them")
  if not fields.get("annotations"):
    raise ValueError("a soundscape set needs annotations (a folder of "
                     "Raven tables or one CSV) beside its audio")
  for key in ("audio", "annotations", "species_map"):
    if fields.get(key):
      fields[key] = os.path.abspath(fields[key])
  sources = source_fingerprint(fields["audio"], fields["annotations"],
                               fields.get("species_map", ""))
  return SoundscapesConfig(
      name=f"set_{_digest([fields, sources])}",
      description=f"Soundscapes {fields['audio']} annotated by "
      f"{fields['annotations']}", **fields)


SYNTHETIC = SoundscapesConfig(
    name="synthetic", description="The synthetic corpus's soundscapes "
    "(synthetic.write_soundscapes, species named by code), written into "
    "the download dir.")


@dataclasses.dataclass(frozen=True)
class _Set:
  """A set read and matched, before any audio is decoded."""
  files: list[tuple[str, str]]  # (path, relative), in recording order.
  read: annotations_lib.Annotations
  mapping: annotations_lib.LabelMapping
  labels: list[dict]  # {"species", "common_name"} per label.


class Builder(tfds.core.GeneratorBasedBuilder):
  """Chunks of annotated soundscapes with every call as a strong label."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [SYNTHETIC]

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self._set = None
    self._problems = []
    self._label_counts = None
    self._index_size = 0
    self._mean_audible = 0.0

  def _info(self) -> tfds.core.DatasetInfo:
    text = tfds.features.Text()
    per_event = lambda dtype: tfds.features.Tensor(shape=(None,), dtype=dtype)  # noqa: E731
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "audio": inat.audio_feature(),
            "label": tfds.features.ClassLabel(),
            "recording_id": np.int64,
            "example_index": np.int64,
            "event_label": per_event(np.int64),
            "event_start": per_event(np.float32),
            "event_end": per_event(np.float32),
            "checklist": per_event(np.int64),
            "file_name": text,
            "start_sample": np.int64,
            "duration": np.float32,
            "latitude": np.float32,
            "longitude": np.float32,
        }),
        supervised_keys=("audio", "label"),
    )

  # -- Sources ---------------------------------------------------------------

  def _synthetic_sources(self, download_dir: str) -> tuple[str, str, str]:
    """(audio, annotations, species map) of the synthetic soundscapes,
    written first where they are not yet complete."""
    cfg = self.builder_config
    out = os.path.join(download_dir, "soundscapes_synthetic",
                       cfg.name + "_" + _digest(
                           {k: getattr(cfg, k) for k in _SYNTHETIC_FIELDS}))
    if not os.path.exists(out + _COMPLETE_SUFFIX):
      print(f"Writing the synthetic soundscapes into {out} ...",
            file=sys.stderr)
      summary = synthetic.write_soundscapes(
          out, synthetic.CorpusConfig(num_species=cfg.num_species,
                                      num_recordings=cfg.num_recordings,
                                      seed=cfg.seed),
          cfg.num_soundscapes, cfg.soundscape_seconds, cfg.soundscape_seed,
          codes=True)
      with open(out + _COMPLETE_SUFFIX, "w") as f:
        json.dump(summary, f)
    return (os.path.join(out, synthetic.SOUNDSCAPE_AUDIO_DIR),
            os.path.join(out, synthetic.SOUNDSCAPE_TABLE_DIR),
            os.path.join(out, synthetic.SOUNDSCAPE_SPECIES_MAP))

  def _label_rows(self, read: annotations_lib.Annotations,
                  species_map: annotations_lib.SpeciesMap | None
                  ) -> list[dict]:
    cfg = self.builder_config
    if cfg.labels:
      return [{"species": s, "common_name": c} for s, c in cfg.labels]
    if not cfg.audio:  # Synthetic: the corpus's species, in id order.
      corpus = synthetic.CorpusConfig(num_species=cfg.num_species,
                                      num_recordings=cfg.num_recordings,
                                      seed=cfg.seed)
      return [{"species": s["name"], "common_name": s["common_name"]}
              for s in synthetic.make_species(
                  corpus, np.random.default_rng(cfg.seed))]
    names = (species_map.scientific_of.values() if species_map
             else read.species_counts())
    return [{"species": s, "common_name": ""} for s in sorted(set(names))]

  def _read_set(self, download_dir: str) -> _Set:
    cfg = self.builder_config
    if cfg.audio:
      audio, tables, map_path = cfg.audio, cfg.annotations, cfg.species_map
    else:
      audio, tables, map_path = self._synthetic_sources(download_dir)
    files = audio_lib.find_audio(audio)
    species_map = (annotations_lib.SpeciesMap.read(map_path) if map_path
                   else None)
    durations = []
    for path, relative in files:
      try:
        with audio_lib.open_audio_file(path) as decoder:
          durations.append(decoder.num_samples / audio_lib.SAMPLE_RATE)
      except audio_lib.AudioError as e:
        durations.append(math.nan)
        self._problems.append(annotations_lib.Problem(
            relative, None, f"cannot be decoded, left out: {e}",
            "decoding failed"))
    read = annotations_lib.read_annotations(
        tables, files, durations, species_column=cfg.species_column or None,
        every_recording_annotated=cfg.every_recording_annotated)
    self._problems.extend(read.problems)
    self._problems.extend(
        annotations_lib.Problem(relative, None, "no table names it: left "
                                "out (absent annotations are not evidence "
                                "of absence; every_recording_annotated "
                                "keeps such recordings)", "not annotated")
        for relative in read.not_annotated)
    labels = self._label_rows(read, species_map)
    mapping = annotations_lib.map_species(read, labels, species_map)
    first_row = {}
    for event in read.events:
      first_row.setdefault(event.species, event)
    self._problems.extend(
        annotations_lib.Problem(
            first_row[s.written].source, first_row[s.written].row,
            f"species {s.written!r} ({s.events} events, the first here) is "
            f"not in the label space ({s.matched_by}): its calls are left "
            "out of every chunk", "unknown species")
        for s in mapping.unknown)
    annotated = set(read.annotated)
    usable = [(path, relative) for (path, relative), d in zip(files, durations)
              if relative in annotated and not math.isnan(d)]
    return _Set(usable, read, mapping, labels)

  def _split_generators(self, dl_manager):
    self._problems = []
    self._set = self._read_set(os.fspath(dl_manager.download_dir))
    self.info.features["label"].names = [
        row["species"] for row in self._set.labels]
    self._label_counts = [0] * len(self._set.labels)
    return {SPLIT: self._generate_examples()}

  # -- Examples --------------------------------------------------------------

  def _generate_examples(self):
    chunk = max(1, round(self.builder_config.chunk_seconds
                         * audio_lib.SAMPLE_RATE))
    index, audible = 0, []
    for recording_id, (path, relative) in enumerate(self._set.files):
      events = annotations_lib.event_arrays(self._set.read,
                                            self._set.mapping, relative)
      known = events.class_index >= 0
      events = annotations_lib.EventArrays(
          events.start_s[known], events.end_s[known],
          events.class_index[known])
      try:
        for start, samples in _chunks(path, chunk):
          example = chunk_example(samples, start, events)
          label = example["label"]
          if label >= 0:
            self._label_counts[label] += 1
          audible.append(len(set(example["event_label"].tolist())))
          yield f"{relative}@{start}", dict(
              example, recording_id=recording_id, example_index=index,
              file_name=relative)
          index += 1
      except audio_lib.AudioError as e:
        self._problems.append(annotations_lib.Problem(
            relative, None, f"decoding failed part way: the chunks after "
            f"the last whole one are left out: {e}", "decoding failed"))
    self._index_size = index
    self._mean_audible = float(np.mean(audible)) if audible else 0.0

  # -- Report ----------------------------------------------------------------

  def _download_and_prepare(self, dl_manager, download_config):
    super()._download_and_prepare(dl_manager, download_config)
    problems = sorted(self._problems,
                      key=lambda p: (p.file, p.row or 0, p.reason))
    annotations_lib.write_problems(
        os.path.join(self.data_path, REPORT_NAME), problems)
    annotations_lib.write_mapping_report(
        os.path.join(self.data_path, MAPPING_NAME), self._set.mapping)

    def write(name, value):
      with open(os.path.join(self.data_path, name), "w") as f:
        json.dump(value, f, indent=1)

    write(CLASSES_NAME, [dict(row, label=i)
                         for i, row in enumerate(self._set.labels)])
    write(LABEL_COUNTS_NAME, {SPLIT: self._label_counts})
    write(LABEL_SOURCES_NAME, {
        "strong_labels": True, "checklists": False,
        "example_index_size": {SPLIT: self._index_size},
        "mean_audible_species": {SPLIT: self._mean_audible}})
    self._problems = problems

  def download_and_prepare(self, *args, **kwargs):
    """TFDS's, printing what was built and what was left out."""
    self._set = None
    super().download_and_prepare(*args, **kwargs)
    if self._set is not None:  # Built now, not found ready.
      print(build_summary(self.info, self._set, self._problems,
                          os.path.join(self.data_dir, REPORT_NAME)),
            file=sys.stderr)


def _chunks(path: str, chunk: int):
  """(first sample, int16 samples) of consecutive `chunk`-sample pieces of
  a recording, decoded block by block; the last holds the rest."""
  with audio_lib.open_audio_file(path) as decoder:
    pending, start = np.zeros(0, np.int16), 0
    for block in decoder:
      pending = np.concatenate([pending, block])
      while len(pending) >= chunk:
        yield start, pending[:chunk]
        pending, start = pending[chunk:], start + chunk
    if len(pending):
      yield start, pending


def chunk_example(samples: np.ndarray, start: int,
                  events: annotations_lib.EventArrays) -> dict:
  """A chunk's audio and strong-label features (module docstring).

  Args:
    samples: the chunk, int16.
    start: its first sample in the recording.
    events: the recording's events of labelled species.
  """
  begin_s = start / audio_lib.SAMPLE_RATE
  end_s = begin_s + len(samples) / audio_lib.SAMPLE_RATE
  eps = annotations_lib.TIME_EPSILON_S
  inside = ((np.minimum(events.end_s, end_s)
             - np.maximum(events.start_s, begin_s)) > eps)
  labels = events.class_index[inside]
  calling = collections.Counter()
  for label, a, b in zip(labels, events.start_s[inside],
                         events.end_s[inside]):
    calling[int(label)] += min(b, end_s) - max(a, begin_s)
  # Longest calling first; the lower label among equals.
  label = min(calling, key=lambda c: (-calling[c], c)) if calling else -1
  return {
      "audio": samples,
      "label": label,
      "event_label": labels.astype(np.int64),
      "event_start": (events.start_s[inside] - begin_s).astype(np.float32),
      "event_end": (events.end_s[inside] - begin_s).astype(np.float32),
      "checklist": np.zeros(0, np.int64),
      "start_sample": start,
      "duration": len(samples) / audio_lib.SAMPLE_RATE,
      "latitude": math.nan,
      "longitude": math.nan,
  }


def build_summary(info: tfds.core.DatasetInfo, built: _Set, problems,
                  report_path: str) -> str:
  """What was built and what was left out: chunks, recordings, events,
  species, problems by kind, where the report is."""
  lines = [f"{info.full_name}: built {info.splits[SPLIT].num_examples} "
           f"chunks of {len(built.files)} recordings; {built.read.summary()}"
           f"; {built.mapping.summary()}"]
  if problems:
    counts = collections.Counter(p.kind for p in problems)
    lines.append(f"  {len(problems)} problems (details in {report_path}): "
                 + ", ".join(f"{n} x {k}" for k, n in sorted(counts.items())))
  else:
    lines.append("  no problems found")
  return "\n".join(lines)
