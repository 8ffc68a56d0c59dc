"""TFDS builder for iNatSounds: the official release or the synthetic corpus.

    tfds build tfds_builders/inat_sounds --config=full --manual_dir=DIR
    tfds build tfds_builders/inat_sounds --config=synthetic
    INATSOUNDS_STRICT=1 tfds build tfds_builders/inat_sounds --config=full ...

From Python: `inatsounds_jax.data.builder(config, data_dir=...)`.

Bad items (corrupt, truncated or missing audio, unknown ids, duplicates,
impossible coordinates, a recording listed in two splits) are skipped and
written to `build_report.tsv` next to the dataset, with a summary printed at
the end; `strict` stops at the first. A recording listed in two splits is kept
in the evaluation split (test, else validation) only. With Beam options
(`--beam_pipeline_options=...`) preparation runs on Apache Beam, one task per
recording (extracted folders only); the workers send back each example's
label and each bad item's problem as text records next to the build, so the
report, the summary and the label counts are those of a streamed build.

Stale records. Records carry `source_fingerprint.json`: each split's
annotation file (name, size, SHA-256) and recordings (the folder's file list
with sizes, or the archive's name and size). Preparing again, with the
records already there, compares it with the source given now (the manual dir,
or the synthetic corpus) and stops with `StaleRecordsError` saying what
differs: records that took hours to build are never replaced silently, and
never used for a source they were not built from. To rebuild:

    tfds build tfds_builders/inat_sounds --config=full --manual_dir=DIR \
        --overwrite

or `inatsounds_jax.data.prepare(..., overwrite=True)`. Without a source
(manual dir gone), the records are used as they are.

The `synthetic` config reads a corpus from the manual dir when it holds one
(`python -m inatsounds_jax.synthetic --out DIR`); otherwise it generates the
corpus into a folder of its own under the download dir
(`<data_dir>/downloads/inat_sounds_synthetic/`), never into the manual dir.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import math
import os
import shutil
import sys

from absl import logging

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from inatsounds_jax import audio as audio_lib
from inatsounds_jax import cli
from inatsounds_jax import registry
from inatsounds_jax import release
from inatsounds_jax import synthetic

REPORT_NAME = "build_report.tsv"
LABEL_COUNTS_NAME = "label_counts.json"
# Per label: species, common name, supercategory, taxonomy, category id.
CLASSES_NAME = "classes.json"
# What the records were built from (`release.source_fingerprint`).
FINGERPRINT_NAME = "source_fingerprint.json"
# Which per-recording extras the records hold (strong labels, checklists)
# and the size of each split's `example_index` range.
LABEL_SOURCES_NAME = "label_sources.json"
# Files of the synthetic corpus copied next to the records (true ranges).
_SIDE_FILES = (release.RANGES_FILE,)
# Beam workers' labels and problems, in the build folder until it is done.
_BEAM_RECORDS_DIR = "beam_worker_records"


class BuildError(RuntimeError):
  """Raised in strict mode on the first bad item."""


class StaleRecordsError(registry.ConfigError):
  """Prepared records were built from other source files than given now."""


def _one_line_errors_in_the_tfds_command() -> None:
  """Under `tfds build`, ends a problem with the files in an `error:` line.

  The `tfds` command prints every exception with its traceback, some 50
  lines of TFDS's own frames before ours; a `ConfigError` (the release's
  files, stale records) or `BuildError` (strict mode) already says in its
  message which file is wrong and what to do. So, only in that command's
  process (it imports this module), they are printed as one line (after
  the traceback with --verbosity=1), and anything else as before.
  """
  if "tensorflow_datasets.scripts.cli.main" not in sys.modules:
    return
  previous = sys.excepthook

  def one_line(kind, error, trace):
    if not issubclass(kind, (registry.ConfigError, BuildError)):
      previous(kind, error, trace)
      return
    if cli.traceback_wanted():
      previous(kind, error, trace)
    print(f"error: {error}", file=sys.stderr, flush=True)

  sys.excepthook = one_line


_one_line_errors_in_the_tfds_command()


@dataclasses.dataclass
class InatSoundsConfig(tfds.core.BuilderConfig):
  """`full` reads the release; `synthetic` generates the corpus if needed.

  Attributes:
    num_species, num_recordings, seed: synthetic corpus size and seed (only
      for `synthetic`).
    world: the synthetic corpus's sound world, a key of
      `synthetic.WORLDS`: "default" (the quick-start corpus) or "hard" (the
      harder world's options, `synthetic.HARD_WORLD`, under this config's
      size and seed).
  """
  num_species: int = 50
  num_recordings: int = 2000
  seed: int = 0
  world: str = "default"


class Builder(tfds.core.GeneratorBasedBuilder):
  """iNatSounds recordings with species labels, metadata and location."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "First release.",
                   "1.1.0": "example_index, strong-label events and "
                            "checklists (empty where the source has none)."}
  BUILDER_CONFIGS = [
      InatSoundsConfig(name="full", description="The official release, "
                       "from archives or extracted folders in manual_dir."),
      InatSoundsConfig(name="synthetic", description="The library's "
                       "synthetic corpus in the release's format; generated "
                       "into its own folder when manual_dir holds none."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download from https://github.com/visipedia/inat_sounds (AWS Open Data) into
  manual_dir: train.tar.gz, val.tar.gz, public_test.tar.gz and
  train.json.tar.gz, val.json.tar.gz, public_test.json.tar.gz. The archives
  are read as they are; extracted folders (train/, val/, test/) with the
  .json files work too. Any subset of the splits can be built.
  """

  def __init__(self, *, strict: bool | None = None, **kwargs):
    """`strict`: stop at the first bad item instead of skipping it.

    It changes no record, so it is not part of the config; from the command
    line set INATSOUNDS_STRICT=1.
    """
    super().__init__(**kwargs)
    self._strict = (os.environ.get("INATSOUNDS_STRICT", "0") == "1"
                    if strict is None else strict)
    self._use_beam = False
    self._problems = None
    self._label_counts = None
    self._num_annotations = None
    self._source_dir = None
    self._fingerprint = None

  def _info(self) -> tfds.core.DatasetInfo:
    text = tfds.features.Text()
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "audio": audio_feature(),
            "label": tfds.features.ClassLabel(),
            "species": text,
            "common_name": text,
            "supercategory": text,
            "taxonomy": {k: text for k in release.TAXONOMY_KEYS},
            "recording_id": np.int64,
            # Position in the split's annotation list: rows of per-example
            # training state (label tables, running averages).
            "example_index": np.int64,
            # Every call of every audible species (labels, seconds) and the
            # recordist's checklist (labels); empty when the source has none
            # (the release), see LABEL_SOURCES_NAME.
            "event_label": tfds.features.Tensor(shape=(None,),
                                                dtype=np.int64),
            "event_start": tfds.features.Tensor(shape=(None,),
                                                dtype=np.float32),
            "event_end": tfds.features.Tensor(shape=(None,),
                                              dtype=np.float32),
            "checklist": tfds.features.Tensor(shape=(None,), dtype=np.int64),
            "annotation_id": np.int64,
            "category_id": np.int64,
            "file_name": text,
            "duration": np.float32,
            "latitude": np.float32,
            "longitude": np.float32,
            "location_uncertainty": np.float32,
            "date": text,
            "license": np.int32,
            "rights_holder": text,
        }),
        supervised_keys=("audio", "label"),
        homepage="https://github.com/visipedia/inat_sounds",
    )

  # -- Sources ---------------------------------------------------------------

  def _synthetic_corpus_config(self) -> synthetic.CorpusConfig:
    cfg = self.builder_config
    if cfg.world not in synthetic.WORLDS:
      raise ValueError(f"world={cfg.world!r}: choose from "
                       f"{sorted(synthetic.WORLDS)}")
    return synthetic.CorpusConfig(**{
        **synthetic.WORLDS[cfg.world], "num_species": cfg.num_species,
        "num_recordings": cfg.num_recordings, "seed": cfg.seed})

  def _find_source_dir(self, download_dir: str, manual_dir: str | None,
                       for_build: bool) -> str | None:
    """The folder the records are (to be) built from.

    Args:
      download_dir: TFDS's download dir (the synthetic corpus goes under it).
      manual_dir: the manual dir, None when not given or empty.
      for_build: building: generate the synthetic corpus if needed, and
        insist on a manual dir for `full`. Otherwise (checking prepared
        records) None stands for "no source to compare with".
    """
    if manual_dir is not None and release.holds_release(manual_dir):
      return manual_dir
    if self.builder_config.name == "full":
      if manual_dir is None and not for_build:
        return None
      if manual_dir is None:
        raise release.ReleaseError(
            "config 'full' needs --manual_dir with the iNatSounds release:"
            + self.MANUAL_DOWNLOAD_INSTRUCTIONS)
      return manual_dir  # find_split_sources says what is missing.
    cfg, corpus_config = self.builder_config, self._synthetic_corpus_config()
    world = "" if cfg.world == "default" else f"_{cfg.world}"
    out = os.path.join(download_dir, "inat_sounds_synthetic",
                       f"s{cfg.num_species}_r{cfg.num_recordings}_"
                       f"seed{cfg.seed}{world}")
    if synthetic.is_complete(out, corpus_config):
      return out
    if not for_build:
      return None
    if manual_dir is not None:
      print(f"{manual_dir} holds no iNatSounds annotation files; using the "
            "synthetic corpus instead", file=sys.stderr)
    print(f"Generating the synthetic corpus in {out} ...", file=sys.stderr)
    synthetic.generate(out, corpus_config)
    return out

  def _split_generators(self, dl_manager):
    sources = release.find_split_sources(self._source_dir)
    self._fingerprint = release.source_fingerprint(self._source_dir)
    annotations = release.drop_cross_split_duplicates({
        split: release.parse_annotations(
            release.load_json(src.annotation_path), split,
            src.annotation_path)
        for split, src in sources.items()})
    self._num_annotations = {split: ann.num_annotations
                             for split, ann in annotations.items()}
    # The label space is the first split's category list (train when present:
    # val/test use a subset of its species); the others must agree with it.
    reference = next(iter(annotations.values()))
    categories = reference.categories
    for split_ann in annotations.values():
      for cid, cat in split_ann.categories.items():
        if cid in categories and categories[cid].name != cat.name:
          raise release.ReleaseError(
              f"{split_ann.source}: category {cid} is {cat.name!r} but "
              f"{reference.source} calls it {categories[cid].name!r}; the "
              "files come from different releases")
    self._categories = categories
    self._label_of = {cid: i for i, cid in enumerate(sorted(categories))}
    self.info.features["label"].names = [
        categories[c].name for c in sorted(categories)]
    self._problems = []
    self._label_counts = {split: [0] * len(categories) for split in sources}
    self._strong = release.load_strong_labels(self._source_dir)
    self._index_sizes = {}
    self._mean_audible = {}
    return {split: self._generate_examples(sources[split], annotations[split])
            for split in sources}

  # -- Examples --------------------------------------------------------------

  def _report(self, problem: release.Problem) -> None:
    if self._strict:
      raise BuildError(f"{problem} (strict mode: stopping at the first "
                       "problem; build without strict to skip and report)")
    self._problems.append(problem)

  def _generate_examples(self, source: release.SplitSource,
                         annotations: release.SplitAnnotations):
    for problem in annotations.problems:
      self._report(problem)
    items = []
    for item in annotations.items:
      if item.category_id in self._label_of:
        items.append(item)
      else:
        self._report(release.Problem(
            source.split, item.file_name, "unknown category",
            f"category {item.category_id} is not in the label space"))
    self._index_sizes[source.split] = len(items)
    extras = Extras(self._categories, self._label_of, self._strong)
    if items:
      self._mean_audible[source.split] = float(np.mean([
          len(set(extras.strong_features(item.audio_id)["event_label"]))
          for item in items]))
    if self._use_beam:
      return self._beam_examples(source, items, extras)
    return self._stream_examples(source, items, extras)

  def _stream_examples(self, source, items, extras):
    index = {item.annotation_id: i for i, item in enumerate(items)}
    for item, recording, problem in release.iter_recordings(source, items):
      result = make_example(source.split, item, recording, problem, extras,
                            index[item.annotation_id])
      if isinstance(result, release.Problem):
        self._report(result)
      else:
        self._label_counts[source.split][result[1]["label"]] += 1
        yield result

  def _beam_examples(self, source, items, extras):
    """The same examples as a Beam transform, one worker task per file."""
    import apache_beam as beam  # pylint: disable=import-outside-toplevel
    if source.audio_dir is None:
      raise release.ReleaseError(
          f"{source.archive_path}: Beam needs random access; extract the "
          "archive next to it (tar xzf) and build again")
    records = os.path.join(os.fspath(self.data_path), _BEAM_RECORDS_DIR,
                           source.split)
    strict = self._strict

    @beam.ptransform_fn
    def examples(pipeline):
      results = (pipeline
                 | "items" >> beam.Create(list(enumerate(items)))
                 | "decode" >> beam.FlatMap(
                     _beam_example, source, extras,
                     strict).with_outputs(_WORKER_RECORD, main="examples"))
      _ = results[_WORKER_RECORD] | "records" >> beam.io.WriteToText(records)
      return results.examples

    return examples()  # pylint: disable=no-value-for-parameter

  def _collect_beam_records(self) -> None:
    """Adds the workers' labels and problems; removes their files."""
    folder = os.path.join(os.fspath(self.data_path), _BEAM_RECORDS_DIR)
    for split in self._label_counts:
      for path in sorted(tf.io.gfile.glob(os.path.join(folder, split) + "*")):
        with tf.io.gfile.GFile(path) as f:
          for line in f:
            record = json.loads(line)
            if "label" in record:
              self._label_counts[split][record["label"]] += 1
            else:
              self._problems.append(release.Problem(**record["problem"]))
    tf.io.gfile.rmtree(folder)

  # -- Report ----------------------------------------------------------------

  def _download_and_prepare(self, dl_manager, download_config):
    # Beam runs exactly when the user gives Beam options or a runner
    # (`tfds build --beam_pipeline_options=...`).
    self._use_beam = (download_config.beam_options is not None or
                      download_config.beam_runner is not None)
    self._source_dir = self._find_source_dir(
        os.fspath(dl_manager.download_dir),
        _manual_dir(dl_manager.download_dir, download_config), for_build=True)
    super()._download_and_prepare(dl_manager, download_config)
    if self._use_beam:
      self._collect_beam_records()
    # One order whatever the build's (Beam's is not the files' order).
    self._problems.sort(key=dataclasses.astuple)
    # data_path is the not-yet-renamed build folder here, so the report lands
    # next to the dataset's records only when the build succeeds.
    with open(os.path.join(self.data_path, REPORT_NAME), "w",
              newline="") as f:
      writer = csv.writer(f, delimiter="\t")
      writer.writerow(["split", "file", "reason"])
      for p in self._problems:
        writer.writerow([p.split, p.file, p.reason])
    with open(os.path.join(self.data_path, CLASSES_NAME), "w") as f:
      json.dump(class_table(self._categories, self._label_of), f, indent=0)
    with open(os.path.join(self.data_path, LABEL_COUNTS_NAME), "w") as f:
      json.dump(self._label_counts, f)
    strong = self._strong or {}
    with open(os.path.join(self.data_path, LABEL_SOURCES_NAME), "w") as f:
      json.dump({"strong_labels": bool(strong),
                 "checklists": bool(strong) and all(
                     s.checklist is not None for s in strong.values()),
                 "example_index_size": self._index_sizes,
                 "mean_audible_species": (self._mean_audible if strong
                                          else {})}, f, indent=1)
    with open(os.path.join(self.data_path, FINGERPRINT_NAME), "w") as f:
      json.dump({"source_dir": os.path.abspath(self._source_dir),
                 "splits": self._fingerprint}, f, indent=1)
    for name in _SIDE_FILES:
      if os.path.exists(os.path.join(self._source_dir, name)):
        shutil.copy(os.path.join(self._source_dir, name), self.data_path)

  def _check_not_stale(self, download_dir: str, download_config) -> None:
    """Raises `StaleRecordsError` if the records' source has changed."""
    path = os.path.join(self.data_dir, FINGERPRINT_NAME)
    if not os.path.exists(path):
      logging.warning("%s has no %s (built before records carried one): "
                      "cannot tell whether they match the source files",
                      self.data_dir, FINGERPRINT_NAME)
      return
    source_dir = self._find_source_dir(
        download_dir, _manual_dir(download_dir, download_config),
        for_build=False)
    if source_dir is None:
      return  # No source to compare with: the records are all there is.
    with open(path) as f:
      built = json.load(f)
    differences = release.fingerprint_differences(
        built["splits"], release.source_fingerprint(source_dir))
    if differences:
      raise StaleRecordsError(
          f"{self.data_dir} holds records built from {built['source_dir']}, "
          f"and the source given now ({source_dir}) differs:\n  "
          + "\n  ".join(differences) + "\nTo rebuild them from "
          f"{source_dir} (replacing these records): tfds build "
          f"tfds_builders/inat_sounds --config={self.builder_config.name} "
          f"--manual_dir={source_dir} --data_dir={self.data_dir_root} "
          "--overwrite, or inatsounds_jax.data.prepare(..., overwrite=True). "
          "To use these records instead, give the files they were built "
          "from, as they were then.")

  def download_and_prepare(self, *, download_dir=None, download_config=None,
                           **kwargs):
    """TFDS's, checking prepared records against their source first.

    Raises:
      StaleRecordsError: the records were built from other files than the
        source given now (unless the download mode overwrites them).
    """
    download_config = download_config or tfds.download.DownloadConfig()
    if (self.is_prepared()
        and not download_config.download_mode.overwrite_dataset):
      self._check_not_stale(
          os.fspath(download_dir or self.data_dir_root / "downloads"),
          download_config)
    self._problems = None
    super().download_and_prepare(download_dir=download_dir,
                                 download_config=download_config, **kwargs)
    if self._problems is not None:  # Built now, not found ready.
      print(build_summary(self.info, self._problems, self._num_annotations,
                          os.path.join(self.data_dir, REPORT_NAME)),
            file=sys.stderr)


def audio_feature() -> tfds.features.Tensor:
  """The waveform as records hold it: raw int16 bytes, 2 bytes per sample
  on disk. (tfds Audio cannot store int16 as bytes; it widens to int64
  varints.)"""
  return tfds.features.Tensor(
      shape=(None,), dtype=np.int16, encoding=tfds.features.Encoding.BYTES,
      doc=f"mono waveform at {audio_lib.SAMPLE_RATE} Hz")


def _manual_dir(download_dir, download_config) -> str | None:
  """The manual dir as TFDS picks it, None when missing or empty."""
  path = os.fspath(download_config.manual_dir
                   or os.path.join(os.fspath(download_dir), "manual"))
  return path if os.path.isdir(path) and os.listdir(path) else None


def class_table(categories: dict, label_of: dict) -> list[dict]:
  """One row per label, in label order."""
  rows = [None] * len(label_of)
  for cid, label in label_of.items():
    cat = categories[cid]
    rows[label] = {"label": label, "species": cat.name,
                   "common_name": cat.common_name,
                   "supercategory": cat.supercategory,
                   "category_id": cid, "taxonomy": cat.taxonomy}
  return rows


@dataclasses.dataclass(frozen=True)
class Extras:
  """What an example needs besides its item: the label space and the
  source's strong labels (None when it has none)."""
  categories: dict
  label_of: dict
  strong: dict | None

  def strong_features(self, audio_id: int) -> dict:
    """Events and checklist as label arrays (empty when unknown).

    Species outside the label space are left out: the model cannot name them.
    """
    entry = (self.strong or {}).get(audio_id)
    events = [e for e in (entry.events if entry else ())
              if e[0] in self.label_of]
    checklist = [self.label_of[c] for c in
                 ((entry.checklist or ()) if entry else ())
                 if c in self.label_of]
    return {
        "event_label": np.array([self.label_of[e[0]] for e in events],
                                np.int64),
        "event_start": np.array([e[1] for e in events], np.float32),
        "event_end": np.array([e[2] for e in events], np.float32),
        "checklist": np.array(checklist, np.int64)}


def make_example(split: str, item: release.Item, recording,
                 problem: release.Problem | None, extras: Extras,
                 index: int):
  """`(key, example)` for one recording, or the `Problem` that stops it.

  `recording` is the open file `release.iter_recordings` gives (None with a
  problem); `index` its item's position in the split (`example_index`).
  """
  categories, label_of = extras.categories, extras.label_of
  if problem is not None:
    return problem
  try:
    waveform = audio_lib.decode_audio(recording)
  except audio_lib.AudioError as e:
    return release.Problem(split, item.file_name, e.kind, str(e))
  cat = categories[item.category_id]
  return item.annotation_id, {
      "audio": waveform,
      "label": label_of[item.category_id],
      "species": cat.name,
      "common_name": cat.common_name,
      "supercategory": cat.supercategory,
      "taxonomy": cat.taxonomy,
      "recording_id": item.audio_id,
      "example_index": index,
      **extras.strong_features(item.audio_id),
      "annotation_id": item.annotation_id,
      "category_id": item.category_id,
      "file_name": item.file_name,
      "duration": (item.duration if not math.isnan(item.duration)
                   else len(waveform) / audio_lib.SAMPLE_RATE),
      "latitude": item.latitude,
      "longitude": item.longitude,
      "location_uncertainty": item.location_uncertainty,
      "date": item.date,
      "license": item.license,
      "rights_holder": item.rights_holder,
  }


# The tag of the text records Beam workers send back (JSON lines):
# {"label": i} per example, {"problem": {split, file, kind, reason}} per bad
# item.
_WORKER_RECORD = "worker_record"


def _beam_example(indexed_item, source, extras, strict):
  import apache_beam as beam  # pylint: disable=import-outside-toplevel
  # A loop, not next(): the file stays open while the generator is alive.
  index, item = indexed_item
  for same_item, recording, problem in release.iter_recordings(source,
                                                               [item]):
    result = make_example(source.split, same_item, recording, problem,
                          extras, index)
    if isinstance(result, release.Problem):
      if strict:
        raise BuildError(str(result))
      record = {"problem": dataclasses.asdict(result)}
    else:
      record = {"label": result[1]["label"]}
      yield result
    yield beam.pvalue.TaggedOutput(_WORKER_RECORD, json.dumps(record))


def build_summary(info: tfds.core.DatasetInfo, problems,
                  num_annotations: dict[str, int], report_path: str) -> str:
  """What was written and what was left out, per split.

  Items left out are annotations that did not become examples (every valid
  annotation becomes exactly one). One bad item can give several problems (a
  duplicated recording id is reported for each of its entries, once for
  entries that are the same, and for the annotation that points at them; an
  unusable recording for itself and its annotation), so problems are
  counted separately, by kind.

  Args:
    info: the built dataset's info (examples per split).
    problems: every `release.Problem` reported.
    num_annotations: annotations per split in the source files.
    report_path: where the problems are listed.
  """
  lines = [f"{info.full_name}: built"]
  skipped = 0
  for name, split in info.splits.items():
    left_out = num_annotations[name] - split.num_examples
    skipped += left_out
    lines.append(f"  {name}: {split.num_examples} examples"
                 + (f", {left_out} items skipped" if left_out else ""))
  if not problems:
    lines.append("  no problems found")
    return "\n".join(lines)
  lines.append(f"  {skipped} items skipped; {len(problems)} problems "
               f"reported (details in {report_path}):")
  counts = collections.Counter((p.split, p.kind) for p in problems)
  for (split, kind), n in sorted(counts.items()):
    lines.append(f"    {split}: {n} x {kind}")
  return "\n".join(lines)
