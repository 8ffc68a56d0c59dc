"""TFDS builder for the Merlin L48 spectrogram dataset, one example per clip.

    tfds build tfds_builders/l48 --manual_dir=DIR

DIR is the extracted L48 download (assets.json, clips.json, taxa.csv,
images/) with the benchmark's val_split.npy beside them; `inatsounds_jax.l48`
describes the layout. From Python: `inatsounds_jax.data.prepare("l48",
manual_dir=DIR)`.

Splits as in the benchmark code: assets of split "test" form `test`, those
listed in val_split.npy `validation`, the other train assets `train`. A
clip's `example_index` is its position in its split in clips.json's order,
the row of the benchmark's `<split>_*.npy` matrices (the records
themselves are shuffled, as TFDS writes them). A clip's features:

- `image`: the spectrogram image as stored (PNG/JPEG bytes; decoded to
  uint8 RGB [height, width, 3]);
- `label`: the asset's target species (the single positive of the study);
- `recording_id`: the asset id (every clip of a recording shares it);
  `asset_index`: the asset's position in the split (rows of per-recording
  state such as asset regularisation);
- `labels`, `mask_full`, `mask_target`, `mask_geo`, `mask_checklist`:
  uint8 [species], exactly the format script's labels and masks
  (`l48.clip_labels`).

The build stops at the first problem (a missing or unreadable image, a
malformed metadata file), naming the file: the release is curated, so a
problem means a damaged or incomplete download.
"""

from __future__ import annotations

import collections
import json
import os

import numpy as np
import tensorflow_datasets as tfds

from inatsounds_jax import l48
from tfds_builders.inat_sounds import inat_sounds_dataset_builder as inat

# The side files are those of the iNatSounds records, so `data.py` reads
# both the same way.
CLASSES_NAME = inat.CLASSES_NAME
LABEL_COUNTS_NAME = inat.LABEL_COUNTS_NAME
LABEL_SOURCES_NAME = inat.LABEL_SOURCES_NAME


class Builder(tfds.core.GeneratorBasedBuilder):
  """L48 clips: spectrogram image, target species, asset, label masks."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download https://msid-ml48s.s3.amazonaws.com/v0/ml48s.tar.gz (terms of use:
  github.com/visipedia/ml48s), extract it into manual_dir (assets.json,
  clips.json, taxa.csv, images/), and copy val_split.npy from the root of
  github.com/cvl-umass/l48-benchmarking next to them.
  """

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self._release = None
    self._sizes = {}

  def _info(self) -> tfds.core.DatasetInfo:
    per_species = lambda: tfds.features.Tensor(shape=(None,), dtype=np.uint8)  # noqa: E731
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(),
            "recording_id": np.int64,
            "asset_index": np.int64,
            "example_index": np.int64,
            "clip_id": np.int64,
            "clip_order": np.int32,
            "file_path": tfds.features.Text(),
            "labels": per_species(),
            **{f"mask_{m}": per_species() for m in l48.MASKS},
        }),
        supervised_keys=("image", "label"),
        homepage="https://github.com/visipedia/ml48s",
    )

  def _split_generators(self, dl_manager):
    try:
      manual_dir = os.fspath(dl_manager.manual_dir)
    except AssertionError:  # TFDS's way of saying it is missing or empty.
      raise l48.L48Error(
          "dataset 'l48' needs manual_dir (--config.manual_dir) holding the "
          "L48 folder:" + self.MANUAL_DOWNLOAD_INSTRUCTIONS) from None
    self._release = release = l48.read(manual_dir)
    self.info.features["label"].names = list(release.species_codes)
    clips = collections.defaultdict(list)
    for clip in release.clips:
      clips[release.split_of(clip)].append(clip)
    return {split: self._generate_examples(split, clips[split])
            for split in l48.SPLITS if clips[split]}

  def _generate_examples(self, split: str, clips: list[l48.Clip]):
    release = self._release
    codes = release.species_codes
    assets = sorted({c.asset_id for c in clips})
    asset_index = {a: i for i, a in enumerate(assets)}
    counts = np.zeros(len(codes), np.int64)
    positives = []
    unlabelled = {feature: [] for feature in l48.MASK_OF_MODE.values()}
    for index, clip in enumerate(clips):
      asset = release.assets[clip.asset_id]
      path = release.image_path(clip)
      l48.check_image(path, f"clip {clip.id}")
      labels = l48.clip_labels(clip, asset, codes)
      label = codes.index(asset.target)
      counts[label] += 1
      if labels["full"].all():
        positives.append(int(labels["labels"].sum()))
      for m in l48.MASKS:
        if not labels[m].any():
          unlabelled[f"mask_{m}"].append(index)
      with open(path, "rb") as f:
        image = f.read()
      yield clip.id, {
          "image": image, "label": label, "recording_id": asset.id,
          "asset_index": asset_index[asset.id], "example_index": index,
          "clip_id": clip.id, "clip_order": clip.clip_order,
          "file_path": clip.file_path, "labels": labels["labels"],
          **{f"mask_{m}": labels[m] for m in l48.MASKS}}
    self._sizes[split] = {
        "examples": len(clips), "assets": len(assets),
        "label_counts": counts.tolist(), "unlabelled": unlabelled,
        "mean_positives": float(np.mean(positives)) if positives else 0.0}

  def _download_and_prepare(self, dl_manager, download_config):
    super()._download_and_prepare(dl_manager, download_config)
    sizes = self._sizes

    def write(name, value):
      with open(os.path.join(self.data_path, name), "w") as f:
        json.dump(value, f, indent=1)

    # Every L48 species is a bird: one supercategory, as iNatSounds names it.
    write(CLASSES_NAME, [dict(row, label=i, species=row["species_code"],
                              supercategory="Aves")
                         for i, row in enumerate(self._release.species)])
    write(LABEL_COUNTS_NAME, {s: v["label_counts"] for s, v in sizes.items()})
    write(LABEL_SOURCES_NAME, {
        "strong_labels": False, "checklists": False, "label_masks": True,
        "example_index_size": {s: v["examples"] for s, v in sizes.items()},
        "asset_index_size": {s: v["assets"] for s, v in sizes.items()},
        # Per split and mask feature: the example indices with nothing
        # known (training drops them, as the benchmark's
        # remove_unannotated).
        "unlabelled_examples": {s: v["unlabelled"] for s, v in sizes.items()},
        # Per fully annotated clip: the expected positives of EPR / ROLE.
        "mean_audible_species": {s: v["mean_positives"]
                                 for s, v in sizes.items()}})
