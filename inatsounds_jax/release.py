"""Reading the official iNatSounds release: annotation JSON and recordings.

The release ships per split a COCO-like annotation JSON (`train.json`,
`val.json`, `test.json`, each also as `*.json.tar.gz`) and the recordings as
`train.tar.gz` / `val.tar.gz` / `public_test.tar.gz` holding
`<split>/<category dir>/<recording>.wav`. This module validates the JSON and
pairs every annotation with its recording, from extracted folders or straight
from the archives, streaming, so memory stays bounded whatever the split size
or the recordings' lengths.

Nothing here dies on one bad item: each is turned into a `Problem` naming the
file and the reason, and the caller decides whether to skip it or stop.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO

from inatsounds_jax import registry

# Split name in the TFDS dataset -> names used by the release. Readers accept
# each name for the annotation file (`<name>.json[.tar.gz]`), the extracted
# folder (`<name>/`) and the archive (`<name>.tar.gz`).
RELEASE_SPLITS = {
    "train": ("train",),
    "validation": ("val",),
    "test": ("test", "public_test"),
}
# Files the synthetic corpus adds to the release layout (the release has
# neither): every species audible in each recording with its time spans and
# the recordist's checklist (`load_strong_labels`), and each species' true
# range as circles (`sphere.py`). The builder turns the first into
# features and copies the ranges next to the records.
STRONG_LABELS_FILE = "strong_labels.json"
RANGES_FILE = "species_ranges.json"
# A recording streamed from an archive stays in memory up to this size, then
# goes to a temporary file.
_SPOOL_MEMORY_BYTES = 32 << 20
TAXONOMY_KEYS = ("kingdom", "phylum", "class", "order", "family", "genus",
                 "specific_epithet")


class ReleaseError(registry.ConfigError):
  """A problem that makes a whole split unreadable (not one bad item).

  A `ConfigError`: the files given are at fault, so the command line says
  so in one line (the message names the file) instead of a traceback.
  """


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


def annotation_document(info: dict, licenses: list[dict],
                        categories: list[Category], items: list[Item],
                        key_style: str = "audio") -> dict:
  """A split's annotation JSON in the release's schema, the inverse of
  `parse_annotations` (the synthetic corpus writes itself through it).

  `key_style` picks the spelling of the recording and folder keys:
  "audio" (`audio_id`, `audio_dir_name`) or "image" (`image_id`,
  `image_dir_name`), as releases have shipped both.
  """
  return {
      "info": info,
      "audio": [{"id": i.audio_id, "duration": i.duration,
                 "file_name": i.file_name, "license": i.license,
                 "rights_holder": i.rights_holder, "date": i.date,
                 "latitude": i.latitude, "longitude": i.longitude,
                 "location_uncertainty": i.location_uncertainty}
                for i in items],
      "categories": [{"id": c.id, "name": c.name,
                      "common_name": c.common_name,
                      "supercategory": c.supercategory,
                      **{k: c.taxonomy[k] for k in TAXONOMY_KEYS},
                      f"{key_style}_dir_name": c.dir_name}
                     for c in categories],
      "annotations": [{"id": i.annotation_id, f"{key_style}_id": i.audio_id,
                       "category_id": i.category_id} for i in items],
      "licenses": licenses,
  }


@dataclasses.dataclass
class SplitAnnotations:
  """The validated content of one split's annotation file.

  `num_annotations` counts every entry under "annotations", valid or not: the
  number of examples the split would have if nothing were wrong.
  """
  split: str
  source: str
  categories: dict[int, Category]
  items: list[Item]
  problems: list[Problem]
  num_annotations: int


def load_json(path: str) -> dict[str, Any]:
  """Loads an annotation JSON, plain or inside a `.tar.gz`.

  Raises:
    ReleaseError: the file cannot be read, the archive is damaged, or the
      text is not JSON; one line naming the file, where it goes wrong and
      what to do (a download cut short is the usual cause).
  """
  where = path
  try:
    if path.endswith((".tar.gz", ".tgz")):
      with tarfile.open(path, "r:gz") as tar:
        members = [m for m in tar.getmembers()
                   if m.isfile() and m.name.endswith(".json")]
        if len(members) != 1:
          raise ReleaseError(
              f"{path}: expected one .json file inside, found "
              f"{[m.name for m in members]}")
        where = f"{path} ({members[0].name})"
        return json.load(tar.extractfile(members[0]))
    with open(path, "rb") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ReleaseError(invalid_json_message(where, e)) from None
  except UnicodeDecodeError as e:
    raise ReleaseError(f"{where}: not UTF-8 text ({e.reason} at byte "
                       f"{e.start}); download it again") from None
  except (tarfile.TarError, EOFError, zlib.error) as e:
    raise ReleaseError(f"{path}: damaged archive ({e}); download it "
                       "again") from None
  except OSError as e:
    raise ReleaseError(
        f"{e.filename or path}: cannot read it ({e.strerror or e})") from None


def invalid_json_message(where: str, e: json.JSONDecodeError) -> str:
  """One line: the file, where its JSON goes wrong, and what to do.

  A text that stops before its closing bracket was most likely cut short
  (an interrupted download or extraction), so it says so.
  """
  cut = not e.doc.rstrip().endswith(("}", "]"))
  return (f"{where}: not valid JSON{' (truncated?)' if cut else ''}: "
          f"{e.msg.removesuffix(' at')} at line {e.lineno} column {e.colno}; "
          + ("download or extract it again" if cut
             else "fix it or download it again"))


@dataclasses.dataclass(frozen=True)
class StrongLabels:
  """What the synthetic corpus knows about one recording beyond its label.

  `events`: (category id, start s, end s) of every call of every audible
  species; `checklist`: category ids on the recordist's checklist, None
  when the file has none.
  """
  events: tuple[tuple[int, float, float], ...]
  checklist: tuple[int, ...] | None


def load_strong_labels(folder: str) -> dict[int, StrongLabels] | None:
  """`STRONG_LABELS_FILE` in `folder` by audio id, None when there is none.

  Raises:
    ReleaseError: the file is there but unreadable or malformed.
  """
  path = os.path.join(folder, STRONG_LABELS_FILE)
  if not os.path.isfile(path):
    return None
  out = {}
  try:
    with open(path) as f:
      for entry in json.load(f):
        checklist = entry.get("checklist")
        out[int(entry["audio_id"])] = StrongLabels(
            events=tuple((int(e["category_id"]), float(e["start"]),
                          float(e["end"])) for e in entry["events"]),
            checklist=(None if checklist is None
                       else tuple(int(c) for c in checklist)))
  except json.JSONDecodeError as e:
    raise ReleaseError(invalid_json_message(path, e)) from None
  except (OSError, KeyError, TypeError, ValueError) as e:
    raise ReleaseError(f"{path}: cannot read strong labels: {e!r}") from e
  return out


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


def _duplicates(ids) -> dict:
  """Id -> how many entries hold it, for the ids more than one holds."""
  counts = collections.Counter(ids)
  return {i: n for i, n in counts.items() if n > 1}


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
  problems, reported = [], set()

  def bad(file: str, kind: str, reason: str) -> None:
    # Entries repeated whole (an id listed twice with the same file) give
    # the same problem for each copy: the report lists it once.
    problem = Problem(split, file, kind, reason)
    if problem not in reported:
      reported.add(problem)
      problems.append(problem)

  categories: dict[int, Category] = {}
  category_ids = [_as_int(c.get("id")) if isinstance(c, dict) else None
                  for c in data["categories"]]
  duplicate_categories = _duplicates(i for i in category_ids if i is not None)
  for entry, cid in zip(data["categories"], category_ids):
    shown = entry.get("id") if isinstance(entry, dict) else repr(entry)
    where = f"{source} category {shown}"
    if cid is None or not isinstance(entry.get("name"), str):
      bad(where, "bad category", "category without integer id or name")
    elif cid in duplicate_categories:
      bad(where, "duplicate id", f"duplicate category id {cid} "
          f"({duplicate_categories[cid]} entries, all left out)")
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
      bad(where, "duplicate id", f"duplicate recording id {aid} "
          f"({duplicate_audio[aid]} entries, all left out)")
      continue
    lat = _as_float(entry.get("latitude"))
    lon = _as_float(entry.get("longitude"))
    if lat is None or lon is None or math.isnan(lat) != math.isnan(lon):
      bad(where, "impossible coordinates",
          f"unreadable coordinates latitude={entry.get('latitude')!r} "
          f"longitude={entry.get('longitude')!r}")
      continue
    if not (math.isnan(lat) or (-90 <= lat <= 90 and -180 <= lon <= 180)):
      bad(where, "impossible coordinates",
          f"impossible coordinates latitude={lat} longitude={lon}")
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
    where = (rec["file_name"] if rec
             else f"{source} annotation {entry.get('id')}")
    if ann_id is None:
      bad(where, "bad annotation", "annotation without integer id")
    elif ann_id in duplicate_annotations:
      bad(where, "duplicate id", f"duplicate annotation id {ann_id} "
          f"({duplicate_annotations[ann_id]} entries, all left out)")
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
  return SplitAnnotations(split, source, categories, items, problems,
                          len(data["annotations"]))


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
class SplitFiles:
  """The names of one split's files in the release as downloaded."""
  name: str  # The release's name of the split, its folder in the archive.
  annotations: str  # `<name>.json`.
  annotations_archive: str  # `*.json.tar.gz` holding the annotations.
  archive: str  # `*.tar.gz` holding `<name>/<category dir>/<recording>`.


def split_files(split: str) -> SplitFiles:
  """How the release names `split`'s files (the test archives `public_test`)."""
  names = RELEASE_SPLITS[split]
  return SplitFiles(name=names[0], annotations=f"{names[0]}.json",
                    annotations_archive=f"{names[-1]}.json.tar.gz",
                    archive=f"{names[-1]}.tar.gz")


@dataclasses.dataclass(frozen=True)
class SplitSource:
  """Where one split's annotation file and recordings are."""
  split: str
  annotation_path: str
  audio_dir: str | None = None  # Folder with `<category dir>/<file>`.
  archive_path: str | None = None


def _annotation_path(folder: str, split: str) -> str | None:
  return next((os.path.join(folder, n + ext) for n in RELEASE_SPLITS[split]
               for ext in (".json", ".json.tar.gz")
               if os.path.isfile(os.path.join(folder, n + ext))), None)


def holds_release(folder: str) -> bool:
  """Whether `folder` holds an annotation file of any split."""
  return any(_annotation_path(folder, split) for split in RELEASE_SPLITS)


def find_split_sources(manual_dir: str) -> dict[str, SplitSource]:
  """Finds each split's annotations and recordings under `manual_dir`.

  Extracted folders are preferred over archives when both are present, since
  they allow random access (and Apache Beam).
  """
  sources = {}
  for split, names in RELEASE_SPLITS.items():
    annotation = _annotation_path(manual_dir, split)
    folder = next((os.path.join(manual_dir, n) for n in names
                   if os.path.isdir(os.path.join(manual_dir, n))), None)
    archive = next((os.path.join(manual_dir, n + ".tar.gz") for n in names
                    if os.path.isfile(os.path.join(manual_dir, n + ".tar.gz"))),
                   None)
    if annotation is None and folder is None and archive is None:
      continue
    if annotation is None:
      expected = " or ".join(n + ".json[.tar.gz]" for n in names)
      raise ReleaseError(f"{manual_dir}: recordings for split {split} found "
                         f"but no annotation file ({expected})")
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


# Where a recording listed in several splits is kept: the split evaluated
# last first, never train (training on an evaluation recording inflates its
# scores).
_KEEP_DUPLICATE_IN = ("test", "validation", "train")


def drop_cross_split_duplicates(annotations: dict[str, SplitAnnotations]
                                ) -> dict[str, SplitAnnotations]:
  """Keeps a recording listed in several splits in one evaluation split only.

  Two items are the same recording when their recording ids or their files
  (`relative_key`) match. The recording stays in test rather than validation,
  and in either rather than train; each copy left out becomes a `Problem` of
  kind "cross-split duplicate" in the split it leaves.

  Returns:
    The same splits, with duplicates moved from `items` to `problems`.
  """
  out = {}
  kept_ids, kept_files = {}, {}  # -> (split, annotation file) keeping it.
  for split in sorted(annotations, key=_KEEP_DUPLICATE_IN.index):
    split_ann = annotations[split]
    items, problems = [], list(split_ann.problems)
    for item in split_ann.items:
      key = relative_key(item.file_name)
      kept_in = kept_ids.get(item.audio_id) or kept_files.get(key)
      if kept_in is None:
        items.append(item)
      else:
        problems.append(Problem(
            split, item.file_name, "cross-split duplicate",
            f"recording {item.audio_id} is also listed in the {kept_in[0]} "
            f"split ({kept_in[1]}); kept there only"))
    for item in items:
      kept_ids[item.audio_id] = kept_files[relative_key(item.file_name)] = (
          split, split_ann.source)
    out[split] = dataclasses.replace(split_ann, items=items, problems=problems)
  return {split: out[split] for split in annotations}


def _file_digest(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _folder_listing(folder: str) -> dict[str, Any]:
  """Count, total size and digest of a folder's (relative path, size) list."""
  entries = []
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      entries.append((os.path.relpath(path, folder).replace(os.sep, "/"),
                      os.path.getsize(path)))
  h = hashlib.sha256()
  for rel, size in sorted(entries):
    h.update(f"{rel}\t{size}\n".encode())
  return {"folder": os.path.basename(folder), "files": len(entries),
          "bytes": sum(size for _, size in entries), "sha256": h.hexdigest()}


def source_fingerprint(manual_dir: str) -> dict[str, dict]:
  """What a build from `manual_dir` reads, to tell stale records from fresh.

  Per split: the annotation file's name, size and SHA-256 of its content; the
  recordings folder's file list with every file's size (as a count, a total
  and a digest), or the archive's name and size (archives are not hashed:
  that would read the whole release on every run). Names are relative to
  `manual_dir`, so a copy of the same release elsewhere matches.
  """
  out = {}
  for split, src in find_split_sources(manual_dir).items():
    recordings = (_folder_listing(src.audio_dir) if src.audio_dir else
                  {"archive": os.path.basename(src.archive_path),
                   "bytes": os.path.getsize(src.archive_path)})
    out[split] = {
        "annotations": {"file": os.path.basename(src.annotation_path),
                        "bytes": os.path.getsize(src.annotation_path),
                        "sha256": _file_digest(src.annotation_path)},
        "recordings": recordings}
  return out


def _describe_source(entry: dict[str, Any]) -> str:
  return ", ".join(f"{key} {str(value)[:12]}" if key == "sha256" else
                   f"{value:,} {key}" if isinstance(value, int) else str(value)
                   for key, value in entry.items())


def fingerprint_differences(built: dict[str, dict], now: dict[str, dict]
                            ) -> list[str]:
  """One line per split and part where two `source_fingerprint`s differ."""
  lines = []
  for split in sorted(set(built) | set(now)):
    if split not in now:
      lines.append(f"{split}: in the records, no longer in the source")
    elif split not in built:
      lines.append(f"{split}: in the source, not in the records")
    else:
      for part in ("annotations", "recordings"):
        if built[split][part] != now[split][part]:
          lines.append(f"{split} {part}: "
                       f"{_describe_source(built[split][part])} when built; "
                       f"{_describe_source(now[split][part])} now")
  return lines


def iter_recordings(source: SplitSource, items: list[Item]
                    ) -> Iterator[tuple[Item, BinaryIO | None,
                                        Problem | None]]:
  """Yields `(item, recording file, problem)` for every item, exactly once.

  Exactly one of file and problem is set. The file is an open, seekable
  binary file, valid until the next item is requested (then it is closed):
  recordings are never whole in memory. From a folder, items come in
  annotation order. From an archive, members are streamed in archive order
  (no extraction; each is spooled to a temporary file, in memory up to
  `_SPOOL_MEMORY_BYTES`) and items whose file never appears are reported
  missing at the end.
  """
  if source.audio_dir is not None:
    for item in items:
      path = os.path.join(source.audio_dir, relative_key(item.file_name))
      try:
        f = open(path, "rb")  # pylint: disable=consider-using-with
      except FileNotFoundError:
        yield item, None, Problem(source.split, item.file_name,
                                  "missing file", f"missing file ({path})")
        continue
      except OSError as e:
        yield item, None, Problem(source.split, item.file_name,
                                  "unreadable file",
                                  f"cannot read {path}: {e.strerror}")
        continue
      with f:
        yield item, f, None
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
        with tempfile.SpooledTemporaryFile(_SPOOL_MEMORY_BYTES) as f:
          shutil.copyfileobj(tar.extractfile(member), f)
          seen.add(key)  # Only once read whole: a cut-off file is reported.
          for item in by_key[key]:
            f.seek(0)
            yield item, f, None
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
