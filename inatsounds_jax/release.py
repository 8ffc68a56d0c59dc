"""Reading the official iNatSounds release: annotation JSON and recordings.

The release ships per split a COCO-like annotation JSON (`train.json`,
`val.json`, `test.json`, each also as `*.json.tar.gz`) and the recordings as
`train.tar.gz` / `val.tar.gz` / `public_test.tar.gz` holding
`<split>/<category dir>/<recording>.wav`. This module validates the JSON and
pairs every annotation with its recording, from extracted folders or straight
from the archives, streaming, so memory stays bounded whatever the split size.

Nothing here dies on one bad item: each is turned into a `Problem` naming the
file and the reason, and the caller decides whether to skip it or stop.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tarfile
from collections.abc import Iterator
from typing import Any

# Split name in the TFDS dataset -> names used by the release.
RELEASE_SPLITS = {
    "train": ("train",),
    "validation": ("val",),
    "test": ("test", "public_test"),
}
TAXONOMY_KEYS = ("kingdom", "phylum", "class", "order", "family", "genus",
                 "specific_epithet")


class ReleaseError(ValueError):
  """A problem that makes a whole split unreadable (not one bad item)."""


@dataclasses.dataclass(frozen=True)
class Problem:
  """One item left out of the dataset, and why.

  `kind` groups problems for the summary ("truncated WAV", "duplicate id");
  `reason` is the full sentence for the report.
  """
  split: str
  file: str
  kind: str
  reason: str

  def __str__(self) -> str:
    return f"[{self.split}] {self.file}: {self.reason}"


@dataclasses.dataclass(frozen=True)
class Category:
  id: int
  name: str
  common_name: str
  supercategory: str
  taxonomy: dict[str, str]
  dir_name: str


@dataclasses.dataclass(frozen=True)
class Item:
  """One annotation joined with its recording's metadata: one example."""
  annotation_id: int
  audio_id: int
  category_id: int
  file_name: str
  duration: float
  latitude: float
  longitude: float
  location_uncertainty: float
  date: str
  license: int
  rights_holder: str


@dataclasses.dataclass
class SplitAnnotations:
  """The validated content of one split's annotation file."""
  split: str
  source: str
  categories: dict[int, Category]
  items: list[Item]
  problems: list[Problem]


def load_json(path: str) -> dict[str, Any]:
  """Loads an annotation JSON, plain or inside a `.tar.gz`."""
  try:
    if path.endswith((".tar.gz", ".tgz")):
      with tarfile.open(path, "r:gz") as tar:
        members = [m for m in tar.getmembers()
                   if m.isfile() and m.name.endswith(".json")]
        if len(members) != 1:
          raise ReleaseError(
              f"{path}: expected one .json file inside, found "
              f"{[m.name for m in members]}")
        return json.load(tar.extractfile(members[0]))
    with open(path, "rb") as f:
      return json.load(f)
  except (OSError, tarfile.TarError, json.JSONDecodeError,
          UnicodeDecodeError) as e:
    raise ReleaseError(f"{path}: cannot read annotation JSON: {e}") from e


def _as_int(value) -> int | None:
  if isinstance(value, bool):
    return None
  if isinstance(value, int):
    return value
  if isinstance(value, float) and value.is_integer():
    return int(value)
  if isinstance(value, str) and value.strip().lstrip("-").isdigit():
    return int(value)
  return None


def _as_float(value) -> float | None:
  """A finite float, NaN for missing, None for garbage."""
  if value is None or value == "":
    return math.nan
  try:
    out = float(value)
  except (TypeError, ValueError):
    return None
  return out if math.isfinite(out) else None


def _first_key(entry: dict, *keys: str):
  for key in keys:
    if key in entry:
      return entry[key]
  return None


def _duplicates(ids) -> set:
  seen, dup = set(), set()
  for i in ids:
    (dup if i in seen else seen).add(i)
  return dup


def parse_annotations(data: Any, split: str, source: str) -> SplitAnnotations:
  """Validates one split's annotation JSON into categories and items.

  Accepts both key spellings of the release (`audio_id`/`image_id`,
  `audio_dir_name`/`image_dir_name`). Every annotation that refers to a known,
  unique recording and category with sane metadata becomes exactly one item;
  everything else becomes a `Problem`.
  """
  if not isinstance(data, dict):
    raise ReleaseError(f"{source}: top level is not a JSON object")
  missing = [k for k in ("audio", "categories", "annotations")
             if not isinstance(data.get(k), list)]
  if missing:
    raise ReleaseError(f"{source}: no list under key(s) {missing}")
  problems = []

  def bad(file: str, kind: str, reason: str) -> None:
    problems.append(Problem(split, file, kind, reason))

  categories: dict[int, Category] = {}
  category_ids = [_as_int(c.get("id")) if isinstance(c, dict) else None
                  for c in data["categories"]]
  duplicate_categories = _duplicates(i for i in category_ids if i is not None)
  for entry, cid in zip(data["categories"], category_ids):
    where = f"{source} category {entry.get('id') if isinstance(entry, dict) else entry!r}"
    if cid is None or not isinstance(entry.get("name"), str):
      bad(where, "bad category", "category without integer id or name")
    elif cid in duplicate_categories:
      bad(where, "duplicate id", f"duplicate category id {cid}")
    else:
      categories[cid] = Category(
          id=cid, name=entry["name"],
          common_name=str(entry.get("common_name") or ""),
          supercategory=str(entry.get("supercategory") or ""),
          taxonomy={k: str(entry.get(k) or "") for k in TAXONOMY_KEYS},
          dir_name=str(_first_key(entry, "audio_dir_name", "image_dir_name")
                       or ""))

  audio: dict[int, dict] = {}
  audio_ids = [_as_int(a.get("id")) if isinstance(a, dict) else None
               for a in data["audio"]]
  duplicate_audio = _duplicates(i for i in audio_ids if i is not None)
  for entry, aid in zip(data["audio"], audio_ids):
    name = entry.get("file_name") if isinstance(entry, dict) else None
    where = name if isinstance(name, str) else f"{source} audio {aid}"
    if aid is None or not isinstance(name, str) or not name:
      bad(where, "bad recording entry",
          "recording without integer id or file_name")
      continue
    if aid in duplicate_audio:
      bad(where, "duplicate id", f"duplicate recording id {aid}")
      continue
    lat, lon = _as_float(entry.get("latitude")), _as_float(entry.get("longitude"))
    if lat is None or lon is None or math.isnan(lat) != math.isnan(lon):
      bad(where, "impossible coordinates", f"unreadable coordinates latitude={entry.get('latitude')!r} "
          f"longitude={entry.get('longitude')!r}")
      continue
    if not (math.isnan(lat) or (-90 <= lat <= 90 and -180 <= lon <= 180)):
      bad(where, "impossible coordinates", f"impossible coordinates latitude={lat} longitude={lon}")
      continue
    audio[aid] = dict(entry, latitude=lat, longitude=lon)

  items = []
  annotation_ids = [_as_int(a.get("id")) if isinstance(a, dict) else None
                    for a in data["annotations"]]
  duplicate_annotations = _duplicates(
      i for i in annotation_ids if i is not None)
  annotated_audio = set()
  known_audio_ids = set(audio_ids) - {None}
  for entry, ann_id in zip(data["annotations"], annotation_ids):
    if not isinstance(entry, dict):
      bad(f"{source} annotation {entry!r}", "bad annotation",
          "annotation is not an object")
      continue
    aid = _as_int(_first_key(entry, "audio_id", "image_id"))
    cid = _as_int(entry.get("category_id"))
    rec = audio.get(aid)
    where = rec["file_name"] if rec else f"{source} annotation {entry.get('id')}"
    if ann_id is None:
      bad(where, "bad annotation", "annotation without integer id")
    elif ann_id in duplicate_annotations:
      bad(where, "duplicate id", f"duplicate annotation id {ann_id}")
    elif aid is None or aid not in known_audio_ids:
      bad(where, "unknown recording",
          f"annotation {ann_id} refers to unknown recording id "
          f"{_first_key(entry, 'audio_id', 'image_id')!r}")
    elif rec is None:
      bad(where, "recording left out",
          f"annotation {ann_id} refers to recording {aid}, "
          "which was left out (see its own entry)")
    elif cid not in categories:
      bad(where, "unknown category",
          f"annotation {ann_id} has unknown category id "
          f"{entry.get('category_id')!r}")
    else:
      annotated_audio.add(aid)
      uncertainty = _as_float(rec.get("location_uncertainty"))
      duration = _as_float(rec.get("duration"))
      items.append(Item(
          annotation_id=ann_id, audio_id=aid, category_id=cid,
          file_name=rec["file_name"],
          duration=math.nan if duration is None else duration,
          latitude=rec["latitude"], longitude=rec["longitude"],
          location_uncertainty=math.nan if uncertainty is None else uncertainty,
          date=str(rec.get("date") or ""),
          license=_as_int(rec.get("license")) or 0,
          rights_holder=str(rec.get("rights_holder") or "")))
  for aid, rec in audio.items():
    if aid not in annotated_audio:
      bad(rec["file_name"], "unannotated recording",
          f"recording {aid} has no valid annotation")
  return SplitAnnotations(split, source, categories, items, problems)


def relative_key(file_name: str) -> str:
  """`<category dir>/<recording>` without `./` or the split folder.

  The JSON's `file_name` and the archive's member names may or may not carry
  the split folder (`train/`, `public_test/`); this makes them comparable.
  """
  parts = [p for p in file_name.replace("\\", "/").split("/")
           if p not in ("", ".")]
  known = {name for names in RELEASE_SPLITS.values() for name in names}
  if len(parts) > 1 and parts[0] in known:
    parts = parts[1:]
  return "/".join(parts)


@dataclasses.dataclass(frozen=True)
class SplitSource:
  """Where one split's annotation file and recordings are."""
  split: str
  annotation_path: str
  audio_dir: str | None = None  # Folder with `<category dir>/<file>`.
  archive_path: str | None = None


def find_split_sources(manual_dir: str) -> dict[str, SplitSource]:
  """Finds each split's annotations and recordings under `manual_dir`.

  Extracted folders are preferred over archives when both are present, since
  they allow random access (and Apache Beam).
  """
  sources = {}
  for split, names in RELEASE_SPLITS.items():
    annotation = next(
        (os.path.join(manual_dir, n + ext) for n in names
         for ext in (".json", ".json.tar.gz")
         if os.path.isfile(os.path.join(manual_dir, n + ext))), None)
    folder = next((os.path.join(manual_dir, n) for n in names
                   if os.path.isdir(os.path.join(manual_dir, n))), None)
    archive = next((os.path.join(manual_dir, n + ".tar.gz") for n in names
                    if os.path.isfile(os.path.join(manual_dir, n + ".tar.gz"))),
                   None)
    if annotation is None and folder is None and archive is None:
      continue
    if annotation is None:
      raise ReleaseError(
          f"{manual_dir}: recordings for split {split} found but no "
          f"annotation file ({' or '.join(n + '.json[.tar.gz]' for n in names)})")
    if folder is None and archive is None:
      raise ReleaseError(
          f"{manual_dir}: {annotation} found but no recordings "
          f"({' or '.join(n + '/ or ' + n + '.tar.gz' for n in names)})")
    sources[split] = SplitSource(split, annotation, folder,
                                 None if folder else archive)
  if not sources:
    raise ReleaseError(
        f"{manual_dir}: no iNatSounds files found (expected train.json and "
        "train/ or train.tar.gz, and likewise val and test)")
  return sources


def iter_recordings(source: SplitSource, items: list[Item]
                    ) -> Iterator[tuple[Item, bytes | None, Problem | None]]:
  """Yields `(item, file bytes, problem)` for every item, exactly once.

  From a folder, items are read in annotation order. From an archive, members
  are streamed in archive order (no extraction, one file in memory at a time)
  and items whose file never appears are reported missing at the end.
  Exactly one of bytes and problem is set.
  """
  if source.audio_dir is not None:
    for item in items:
      path = os.path.join(source.audio_dir, relative_key(item.file_name))
      try:
        with open(path, "rb") as f:
          yield item, f.read(), None
      except FileNotFoundError:
        yield item, None, Problem(source.split, item.file_name,
                                  "missing file", f"missing file ({path})")
      except OSError as e:
        yield item, None, Problem(source.split, item.file_name,
                                  "unreadable file",
                                  f"cannot read {path}: {e.strerror}")
    return

  by_key: dict[str, list[Item]] = {}
  for item in items:
    by_key.setdefault(relative_key(item.file_name), []).append(item)
  seen = set()
  try:
    with tarfile.open(source.archive_path, "r|gz") as tar:
      for member in tar:
        key = relative_key(member.name)
        if not member.isfile() or key not in by_key:
          continue
        if key in seen:
          continue  # A repeated member: the first copy was used.
        data = tar.extractfile(member).read()
        seen.add(key)  # Only once read whole: a cut-off file is reported.
        for item in by_key[key]:
          yield item, data, None
  except (tarfile.TarError, EOFError, OSError) as e:
    # A damaged archive ends the stream; what was read stays, the rest is
    # reported below as missing with this reason.
    missing = ("damaged archive",
               f"archive {source.archive_path} is damaged ({e})")
  else:
    missing = ("missing file", f"missing file (not in {source.archive_path})")
  for key, key_items in by_key.items():
    if key not in seen:
      for item in key_items:
        yield item, None, Problem(source.split, item.file_name, *missing)
