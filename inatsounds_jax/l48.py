"""The Merlin L48 spectrogram dataset as its authors lay it out.

L48 (Sun, Maji and Van Horn, "Merlin L48 Spectrogram Dataset", NeurIPS 2025
Datasets and Benchmarks, arXiv:2511.00252; data and format:
github.com/visipedia/ml48s, Appendix A.2; benchmark code:
github.com/cvl-umass/l48-benchmarking) holds 3-second spectrogram images
("clips") cut from bird recordings ("assets"), 100 species. The download,
extracted, is one folder:

    assets.json   list of assets: id, split ("train" / "test"),
                  target_species_code, possible_species_codes (range prior),
                  observed_species_codes (eBird checklist), and the asset's
                  present / unknown / absent species codes
    clips.json    list of clips: id, asset_id, clip_order, file_path
                  (relative, "images/<asset_id>/<clip_order>.jpg"), width,
                  height, present_species_codes, unknown_species_codes,
                  absent_species_codes, boxes
    taxa.csv      one row per species; the row order is the label order
                  (column species_code, plus names and taxonomy)
    images/       the clip images
    val_split.npy the benchmark's validation assets (int64 asset ids, 10 per
                  species; shipped at the root of l48-benchmarking and read
                  from the data folder by its format script)

Everything this library knows about that layout lives here. Per clip the
benchmark's format script (`datasets/format_ML48S.py`) derives, over the
species in taxa.csv order:

- labels: 1 for each present species of the clip;
- full mask: 1 except at the clip's unknown species;
- target mask: 1 at the asset's target species if the clip has it present,
  else all 0 (such clips are dropped when training target-only);
- geo mask: 1 except at the asset's possible species; the target entry is 1
  if the clip has the target present, else 0;
- checklist mask: the same with the asset's observed (checklist) species.

`clip_labels` computes exactly these. Species codes in the lists that are
not in taxa.csv are ignored, as the format script ignores them; an asset's
target must be in taxa.csv.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os

import numpy as np

from inatsounds_jax import registry

ASSETS_FILE = "assets.json"
CLIPS_FILE = "clips.json"
TAXA_FILE = "taxa.csv"
VAL_SPLIT_FILE = "val_split.npy"
IMAGES_DIR = "images"
# The label masks a clip carries, one per label mode of the study.
MASKS = ("full", "target", "geo", "checklist")
# The clip feature holding each label mode's mask (`label_modes.py` names).
MASK_OF_MODE = {"full": "mask_full", "target_only": "mask_target",
                "geo": "mask_geo", "checklist": "mask_checklist"}
# TFDS split names, from the asset's split and the validation list.
SPLITS = ("train", "validation", "test")
IMAGE_FORMATS = ("PNG", "JPEG")


class L48Error(registry.ConfigError):
  """A file of the L48 folder is missing or not as the layout says."""


@dataclasses.dataclass(frozen=True)
class Asset:
  """One recording: its split and the species lists of its priors."""
  id: int
  split: str  # "train" or "test", as in assets.json.
  target: str
  possible: tuple[str, ...]
  observed: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Clip:
  """One 3-second spectrogram image of an asset."""
  id: int
  asset_id: int
  clip_order: int
  file_path: str
  present: tuple[str, ...]
  unknown: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Release:
  """The L48 folder's metadata, read and checked (images not opened)."""
  root: str
  species: tuple[dict, ...]  # taxa.csv rows, in label order.
  assets: dict[int, Asset]
  clips: tuple[Clip, ...]  # clips.json order.
  validation_assets: frozenset[int]

  @property
  def species_codes(self) -> tuple[str, ...]:
    return tuple(row["species_code"] for row in self.species)

  def split_of(self, clip: Clip) -> str:
    """"train", "validation" or "test", as the benchmark splits them."""
    if clip.asset_id in self.validation_assets:
      return "validation"
    return self.assets[clip.asset_id].split

  def image_path(self, clip: Clip) -> str:
    return os.path.join(self.root, clip.file_path)


def _load_json_records(path: str) -> list[dict]:
  if not os.path.exists(path):
    raise L48Error(f"{path}: missing; the L48 folder (the extracted "
                   "ml48s.tar.gz) holds assets.json, clips.json, taxa.csv "
                   "and images/")
  try:
    with open(path) as f:
      records = json.load(f)
  except json.JSONDecodeError as e:
    raise L48Error(f"{path}: not valid JSON ({e})") from None
  if not isinstance(records, list) or not all(
      isinstance(r, dict) for r in records):
    raise L48Error(f"{path}: expected a JSON list of objects")
  return records


def _field(record: dict, key: str, kind, path: str, name: str):
  if key not in record:
    raise L48Error(f"{path}: {name} has no field {key!r}")
  value = record[key]
  if kind is int and isinstance(value, bool) or not isinstance(value, kind):
    raise L48Error(f"{path}: {name} field {key!r} is {value!r}, expected "
                   f"{'a list' if kind is list else kind.__name__}")
  return value


def _codes(record: dict, key: str, path: str, name: str) -> tuple[str, ...]:
  codes = _field(record, key, list, path, name)
  if not all(isinstance(c, str) for c in codes):
    raise L48Error(f"{path}: {name} field {key!r} holds a non-string code")
  return tuple(codes)


def read_species(path: str) -> tuple[dict, ...]:
  """taxa.csv rows (label order); each has a unique `species_code`."""
  if not os.path.exists(path):
    raise L48Error(f"{path}: missing (the species list, one row per label)")
  with open(path, newline="") as f:
    rows = tuple(csv.DictReader(f))
  if not rows or "species_code" not in rows[0]:
    raise L48Error(f"{path}: needs a header with a species_code column and "
                   "one row per species")
  codes = [r["species_code"] for r in rows]
  repeated = sorted({c for c in codes if codes.count(c) > 1})
  if repeated or not all(codes):
    raise L48Error(f"{path}: species codes must be non-empty and unique; "
                   f"repeated: {repeated}")
  return rows


def read_assets(path: str, species: set[str]) -> dict[int, Asset]:
  """assets.json by id, checked."""
  assets = {}
  for i, record in enumerate(_load_json_records(path)):
    name = f"asset {record.get('id', f'#{i}')}"
    asset = Asset(
        id=_field(record, "id", int, path, name),
        split=_field(record, "split", str, path, name),
        target=_field(record, "target_species_code", str, path, name),
        possible=_codes(record, "possible_species_codes", path, name),
        observed=_codes(record, "observed_species_codes", path, name))
    if asset.split not in ("train", "test"):
      raise L48Error(f"{path}: {name} has split {asset.split!r}; expected "
                     "'train' or 'test'")
    if asset.target not in species:
      raise L48Error(f"{path}: {name} has target species "
                     f"{asset.target!r}, which is not in {TAXA_FILE}")
    if asset.id in assets:
      raise L48Error(f"{path}: asset id {asset.id} appears twice")
    assets[asset.id] = asset
  return assets


def read_clips(path: str, assets: dict[int, Asset]) -> tuple[Clip, ...]:
  """clips.json in order, checked against the assets."""
  clips, seen = [], set()
  for i, record in enumerate(_load_json_records(path)):
    name = f"clip {record.get('id', f'#{i}')}"
    clip = Clip(
        id=_field(record, "id", int, path, name),
        asset_id=_field(record, "asset_id", int, path, name),
        clip_order=_field(record, "clip_order", int, path, name),
        file_path=_field(record, "file_path", str, path, name),
        present=_codes(record, "present_species_codes", path, name),
        unknown=_codes(record, "unknown_species_codes", path, name))
    if clip.asset_id not in assets:
      raise L48Error(f"{path}: {name} names asset {clip.asset_id}, which "
                     f"is not in {ASSETS_FILE}")
    if os.path.isabs(clip.file_path) or ".." in clip.file_path.split("/"):
      raise L48Error(f"{path}: {name} file_path {clip.file_path!r} must be "
                     "relative to the L48 folder")
    if clip.id in seen:
      raise L48Error(f"{path}: clip id {clip.id} appears twice")
    seen.add(clip.id)
    clips.append(clip)
  return tuple(clips)


def read_validation_assets(path: str) -> frozenset[int]:
  """The benchmark's validation asset ids (val_split.npy)."""
  if not os.path.exists(path):
    raise L48Error(
        f"{path}: missing; copy val_split.npy from the root of "
        "github.com/cvl-umass/l48-benchmarking into the L48 folder (the "
        "benchmark's validation assets)")
  try:
    ids = np.load(path, allow_pickle=False)
  except ValueError as e:
    raise L48Error(f"{path}: not a numpy array file ({e})") from None
  if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
    raise L48Error(f"{path}: expected a 1-D integer array of asset ids, "
                   f"got {ids.dtype} {ids.shape}")
  return frozenset(int(i) for i in ids)


def read(root: str) -> Release:
  """The L48 folder `root`, its metadata read and checked.

  Raises:
    L48Error: a file missing or malformed, named with the problem.
  """
  if not os.path.isdir(root):
    raise L48Error(f"{root}: not a folder (give the extracted L48 download)")
  species = read_species(os.path.join(root, TAXA_FILE))
  assets = read_assets(os.path.join(root, ASSETS_FILE),
                       {r["species_code"] for r in species})
  clips = read_clips(os.path.join(root, CLIPS_FILE), assets)
  validation = read_validation_assets(os.path.join(root, VAL_SPLIT_FILE))
  unknown = sorted(validation - set(assets))
  if unknown:
    raise L48Error(f"{os.path.join(root, VAL_SPLIT_FILE)}: asset ids "
                   f"{unknown[:5]} are not in {ASSETS_FILE}")
  return Release(root, species, assets, clips, validation)


def clip_labels(clip: Clip, asset: Asset, species_codes: tuple[str, ...]
                ) -> dict[str, np.ndarray]:
  """`labels` and the masks `full`, `target`, `geo`, `checklist` of a clip,
  uint8 `[species]`, exactly as the benchmark's format script makes them.

  Raises:
    L48Error: a present species outside the asset's possible or observed
      species (the script asserts this cannot happen).
  """
  index = {code: i for i, code in enumerate(species_codes)}

  def hot(codes, value):
    out = np.full(len(species_codes), 1 - value, np.uint8)
    out[[index[c] for c in codes if c in index]] = value
    return out

  labels = hot(clip.present, 1)
  out = {"labels": labels, "full": hot(clip.unknown, 0),
         "geo": hot(asset.possible, 0), "checklist": hot(asset.observed, 0)}
  for prior in ("geo", "checklist"):
    if (labels & out[prior]).any():
      raise L48Error(
          f"{CLIPS_FILE}: clip {clip.id} has present species outside asset "
          f"{asset.id}'s {'possible' if prior == 'geo' else 'observed'} "
          f"species in {ASSETS_FILE}")
  target_present = np.uint8(asset.target in clip.present)
  out["target"] = np.zeros(len(species_codes), np.uint8)
  for mask in ("target", "geo", "checklist"):
    out[mask][index[asset.target]] = target_present
  return out


def check_image(path: str, name: str) -> None:
  """Raises `L48Error` unless `path` is a readable PNG or JPEG image."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  if not os.path.exists(path):
    raise L48Error(f"{path}: missing (the image of {name} in {CLIPS_FILE})")
  try:
    with Image.open(path) as image:
      image_format = image.format
      image.load()
  except (OSError, SyntaxError, ValueError) as e:
    raise L48Error(f"{path}: unreadable image of {name} ({e})") from None
  if image_format not in IMAGE_FORMATS:
    raise L48Error(f"{path}: {image_format} image of {name}; expected PNG or "
                   "JPEG")
