"""Entry points to the TFDS datasets from Python: iNatSounds, L48 and
strongly labelled soundscapes.

The builders live in `tfds_builders/inat_sounds/`, `tfds_builders/l48/` and
`tfds_builders/soundscapes/` so that the `tfds` command line finds them;
this module creates them with the right config and prepares them on first
use. All write the same side files next to their records (read below).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from etils import epath
import jax
from jax.experimental import multihost_utils
import tensorflow_datasets as tfds

from inatsounds_jax import release
from inatsounds_jax import storage


def _builder_module():
  # Imported lazily: it registers the dataset with TFDS on import.
  from tfds_builders.inat_sounds import inat_sounds_dataset_builder  # pylint: disable=import-outside-toplevel
  return inat_sounds_dataset_builder


# The dataset name that selects the Merlin L48 spectrogram clips (images,
# `tfds_builders/l48/`) instead of an iNatSounds config.
L48 = "l48"
# The dataset name that selects annotated soundscapes cut into chunks with
# their calls as strong labels (`tfds_builders/soundscapes/`).
SOUNDSCAPES = "soundscapes"


def builder(config: str = "synthetic", data_dir: str | None = None,
            strict: bool = False, **config_fields) -> tfds.core.DatasetBuilder:
  """The iNatSounds builder for `config` ('full' or 'synthetic'), the L48
  builder for 'l48', or the soundscapes builder for 'soundscapes'.

  Args:
    config: 'full' (the official release from a manual dir), 'synthetic',
      'l48' (the L48 folder from a manual dir; no config fields, and it
      always stops at the first problem), or 'soundscapes' (fields of
      `SoundscapesConfig`: audio, annotations, species_map, labels,
      chunk_seconds, ...; always skips and reports bad input).
    data_dir: where TFDS keeps prepared datasets (TFDS's default if None).
    strict: stop at the first bad item instead of skipping and reporting it.
    **config_fields: fields of `InatSoundsConfig` (num_species,
      num_recordings, seed, world: "default" or "hard", the generator's
      harder sound world). A synthetic corpus other than the default gets
      its own config name, so different sizes and worlds never share
      records.
  """
  if config == L48:
    if config_fields:
      raise ValueError(f"the l48 dataset has no config fields; got "
                       f"{sorted(config_fields)}")
    from tfds_builders.l48 import l48_dataset_builder  # pylint: disable=import-outside-toplevel
    return l48_dataset_builder.Builder(data_dir=data_dir)
  if config == SOUNDSCAPES:
    from tfds_builders.soundscapes import soundscapes_dataset_builder  # pylint: disable=import-outside-toplevel
    return soundscapes_dataset_builder.Builder(
        config=soundscapes_dataset_builder.config_for(**config_fields),
        data_dir=data_dir)
  module = _builder_module()
  base = next((c for c in module.Builder.BUILDER_CONFIGS if c.name == config),
              None)
  if base is None:
    raise ValueError(f"unknown config {config!r}; choose from "
                     f"{[c.name for c in module.Builder.BUILDER_CONFIGS]}")
  if not config_fields:
    return module.Builder(config=config, data_dir=data_dir, strict=strict)
  fields = {k: getattr(base, k) for k in
            ("num_species", "num_recordings", "seed", "world")}
  unknown = set(config_fields) - set(fields)
  if unknown:
    raise ValueError(f"unknown config fields {sorted(unknown)}; "
                     f"known: {sorted(fields)}")
  fields.update(config_fields)
  name = config
  if config == "synthetic" and fields != {k: getattr(base, k) for k in fields}:
    world = "" if fields["world"] == "default" else f"_{fields['world']}"
    name = (f"synthetic_s{fields['num_species']}_r{fields['num_recordings']}"
            f"_seed{fields['seed']}{world}")
  return module.Builder(
      config=module.InatSoundsConfig(name=name, description=base.description,
                                     **fields),
      data_dir=data_dir, strict=strict)


def prepare(config: str = "synthetic", data_dir: str | None = None,
            manual_dir: str | None = None, strict: bool = False,
            overwrite: bool = False, **config_fields
            ) -> tfds.core.DatasetBuilder:
  """`builder(...)`, prepared (built if not yet) and ready to read.

  Records already prepared are checked against the source (`manual_dir`, or
  the synthetic corpus): if they were built from other files, this raises
  the builder's `StaleRecordsError`, saying what differs.

  Args:
    overwrite: delete prepared records first and build them again.
  """
  b = builder(config, data_dir, strict=strict, **config_fields)
  if overwrite and b.is_prepared():
    b.data_path.rmtree()
    # A fresh builder: the old one holds the deleted records' info.
    b = builder(config, data_dir, strict=strict, **config_fields)
  b.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return b


def _side_file(builder: tfds.core.DatasetBuilder, name: str):
  """A JSON file the builder wrote next to its records, or None."""
  path = epath.Path(builder.data_path) / name
  return storage.read_json(path) if path.exists() else None


def label_counts(builder: tfds.core.DatasetBuilder) -> dict | None:
  """Examples per label and split, as counted at build time (None if not)."""
  return _side_file(builder, _builder_module().LABEL_COUNTS_NAME)


def class_table(builder: tfds.core.DatasetBuilder) -> list[dict] | None:
  """Per label: species, common_name, supercategory, category_id, taxonomy.

  None for records built before the table was written.
  """
  return _side_file(builder, _builder_module().CLASSES_NAME)


def label_sources(builder: tfds.core.DatasetBuilder) -> dict:
  """Which extras the records hold: `strong_labels`, `checklists`,
  `label_masks` (bools: L48's per-clip labels and masks of every label
  mode), per split `example_index_size`, `asset_index_size` (L48: assets
  per split) and `mean_audible_species` (the mean number of species audible
  in a recording, or present in a fully annotated L48 clip; absent without
  strong labels), and (L48) per split and mask feature (`mask_full`,
  `mask_target`, `mask_geo`, `mask_checklist`) `unlabelled_examples`: the
  example indices whose mask is all zero.

  Records built before the builder wrote it hold none of them.
  """
  found = _side_file(builder, _builder_module().LABEL_SOURCES_NAME) or {}
  return {"strong_labels": bool(found.get("strong_labels")),
          "checklists": bool(found.get("checklists")),
          "label_masks": bool(found.get("label_masks")),
          "example_index_size": dict(found.get("example_index_size", {})),
          "asset_index_size": dict(found.get("asset_index_size", {})),
          "unlabelled_examples": dict(found.get("unlabelled_examples", {})),
          "mean_audible_species": dict(found.get("mean_audible_species",
                                                 {}))}


def prepare_from_config(config) -> tfds.core.DatasetBuilder:
  """`prepare(...)` from a job config's dataset fields.

  With several JAX processes (sharing `data_dir`), process 0 prepares first
  and the others wait, then open what it built
  (`prepared_by_process_zero`).
  """
  return prepared_by_process_zero(
      lambda: prepare(config.dataset, data_dir=config.data_dir or None,
                      manual_dir=config.get("manual_dir") or None,
                      **dict(config.get("dataset_options", {}))))


def prepared_by_process_zero(run: Callable[[], tfds.core.DatasetBuilder]
                             ) -> tfds.core.DatasetBuilder:
  """`run()` (a `prepare(...)`), on process 0 first while the others wait,
  then on the others: two processes building the same records at once
  would write over each other."""
  if jax.process_count() == 1:
    return run()
  built = run() if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices("dataset prepared by process 0")
  return built or run()


def true_ranges_path(builder: tfds.core.DatasetBuilder) -> str | None:
  """The synthetic corpus's true ranges next to its records, else None."""
  path = epath.Path(builder.data_path) / release.RANGES_FILE
  return os.fspath(path) if path.exists() else None
