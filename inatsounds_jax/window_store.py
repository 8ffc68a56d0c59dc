"""Training windows at a window's cost: recordings stored as fixed-length
chunks in ArrayRecord files, read through Grain.

    python -m inatsounds_jax.window_store --config=configs/resnet50.py \
        --config.manual_dir=/data/inat_sounds --out=/data/inat_store
    python -m inatsounds_jax.main --config=configs/resnet50.py --workdir=DIR \
        --config.manual_dir=/data/inat_sounds \
        --config.train_window_store=/data/inat_store

The first command prepares the config's records if needed (the `full`
config from the release, with its bad-input report, `tfds build` or Beam
for big builds) and writes the store of its train split; the second trains
from the store (`data_sources`' `window_store` source).

Why. A training step takes one random ~3-s window per recording, but
reading a TFDS record reads and decodes the whole recording (the iNatSounds
train split averages about 31 s, with a tail of minutes). ArrayRecord gives
random access to records, yet a record is still read whole, so TFDS's own
`file_format="array_record"` with one record per recording costs as much per
window as the TFRecords do. Here a recording is cut into records of
`chunk_samples` int16 samples each (the last one shorter), stored one after
another, so a window reads only the chunks it overlaps: at most
ceil(window / chunk) + 1 of them, about window + chunk samples, whatever
the recording's length.

Layout of a store folder (`write`), per split:

    <split>.array_record-00000-of-0000N   chunks, `group_size:1` (each read
                                          alone), uncompressed int16 bytes
    <split>.index.npz                     per recording, in the split's
                                          order: shard, first record,
                                          samples, label, ids, location,
                                          strong-label events, checklist
    <split>.window_store.json             chunk size, classes, shards and
                                          their record counts, the records
                                          it was written from; written last,
                                          so a store without it is
                                          incomplete

It is written from the built TFDS records (`data.prepare`), which already
skipped the source's bad items and listed them in the build's
`build_report.tsv` (`tfds build` or Beam for big builds), so the store holds
exactly the examples the records hold, in their order, with the same
`example_index`. Shards are written independently (`num_workers`
processes), each from its `tfds.even_splits` share.

Reading (`WindowStore`, `train_loader`): a Grain `DataLoader` over the
split's recordings: `IndexSampler` (global shuffle per epoch, seeded), this
process's share (`ShardOptions(process_index, process_count,
drop_remainder=True)`: disjoint, equal shares, as `train_windows`' even
splits), `TrainWindow` cutting each recording's window, optional worker
processes. The iterator's state (`get_state()` / `set_state()`, or Grain's
orbax `PyGrainCheckpointSave`) resumes the stream exactly. Training reads
`TrainStream` instead: element k is a pure function of (seed, k), so a run
resumes at a step without an iterator state, and blocks of elements are
made by one thread or by worker processes (`TrainStream.blocks`), the same
windows either way.

The training window is the train layout of `input_pipeline.train_windows`
(a start frame uniform over the recording's frame grid; a recording
shorter than a window centred in zeros) cut by `windows.cut_windows` on
the samples read, so a window at a given start equals the old path's
window at that start. Only the draw differs: the start comes from Grain's
per-element generator (Philox keyed by seed + element index) instead of
TensorFlow's stateless generator, so the same seed gives other (equally
uniform) starts.

A damaged store (a shard missing or of the wrong length, a chunk whose
checksum or size is wrong) raises `StoreError` naming the file.
"""

from __future__ import annotations

from collections.abc import Iterator
import json
import multiprocessing
import os
import time

from absl import app
from absl import flags
from etils import epy
import grain.python as grain
import numpy as np
from array_record.python import array_record_module

from inatsounds_jax import cli
from inatsounds_jax import input_pipeline
from inatsounds_jax import registry
from inatsounds_jax import storage
from inatsounds_jax import windows as windows_lib

with epy.lazy_imports():
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  from inatsounds_jax import data  # pylint: disable=g-import-not-at-top

# About 1.5 s at 22,050 Hz: a 3-s window then reads three chunks (about
# 1.4 windows' bytes); smaller chunks read fewer bytes in more records,
# which costs more per window than the bytes saved (BENCHMARKS.md).
DEFAULT_CHUNK_SAMPLES = 32_768
_BYTES_PER_SAMPLE = 2
_WRITER_OPTIONS = "group_size:1,uncompressed"
_READER_OPTIONS = "readahead_buffer_size:0"
_FORMAT = 1


class StoreError(registry.ConfigError):
  """A store that is missing, incomplete or damaged; names the file."""


def shard_name(split: str, shard: int, num_shards: int) -> str:
  return f"{split}.array_record-{shard:05d}-of-{num_shards:05d}"


def _index_name(split: str) -> str:
  return f"{split}.index.npz"


def _manifest_name(split: str) -> str:
  return f"{split}.window_store.json"


# ---------------------------------------------------------------------------
# Writing.
# ---------------------------------------------------------------------------

# Per recording in the index: its fields and their types.
_FIXED = {"first_record": np.int64, "num_samples": np.int64,
          "label": np.int32, "recording_id": np.int64,
          "example_index": np.int64, "latitude": np.float32,
          "longitude": np.float32}
# Variable-length fields: (group, type); a group's fields share offsets
# (`<group>_offsets`, one more than recordings).
_RAGGED = {"event_label": ("events", np.int64),
           "event_start": ("events", np.float32),
           "event_end": ("events", np.float32),
           "checklist": ("checklist", np.int64)}


def _write_shard(args) -> dict:
  """Writes one shard from its share of the split; returns its index
  (ragged fields as lists of arrays) and record count."""
  builder, split, out_dir, shard, num_shards, chunk_samples = args
  share = tfds.even_splits(split, n=num_shards, drop_remainder=False)[shard]
  ds = builder.as_dataset(split=share, shuffle_files=False,
                          read_config=tfds.ReadConfig(skip_prefetch=True))
  path = os.path.join(out_dir, shard_name(split, shard, num_shards))
  writer = array_record_module.ArrayRecordWriter(path, _WRITER_OPTIONS)
  index = {name: [] for name in (*_FIXED, *_RAGGED)}
  records = 0
  for example in tfds.as_numpy(ds):
    waveform = example["audio"]
    index["first_record"].append(records)
    index["num_samples"].append(len(waveform))
    for first in range(0, len(waveform), chunk_samples):
      writer.write(waveform[first:first + chunk_samples].tobytes())
      records += 1
    for name in (*_FIXED, *_RAGGED):
      if name not in ("first_record", "num_samples"):
        index[name].append(example[name])
  writer.close()
  return {"index": index, "records": records}


def _merged_index(shards: list[dict]) -> dict[str, np.ndarray]:
  """The shards' indexes as one, in shard order, with `shard` and the
  ragged groups' offsets."""
  index = {name: np.array([v for s in shards for v in s["index"][name]],
                          dtype) for name, dtype in _FIXED.items()}
  index["shard"] = np.concatenate([
      np.full(len(s["index"]["label"]), i, np.int32)
      for i, s in enumerate(shards)])
  for name, (group, dtype) in _RAGGED.items():
    rows = [np.asarray(v, dtype) for s in shards for v in s["index"][name]]
    index[name] = np.concatenate([np.zeros(0, dtype), *rows])
    index[f"{group}_offsets"] = np.cumsum([0] + [len(r) for r in rows])
  return index


def write(builder: tfds.core.DatasetBuilder, split: str, out_dir: str,
          chunk_samples: int = DEFAULT_CHUNK_SAMPLES, num_shards: int = 1,
          num_workers: int = 1) -> dict:
  """Writes `split` of the built records as a window store in `out_dir`.

  Args:
    builder: prepared iNatSounds records (`data.prepare`).
    split: a split of them.
    out_dir: the store's folder (created); one store per split.
    chunk_samples: samples per chunk record.
    num_shards: ArrayRecord files, each written by one task.
    num_workers: processes writing shards at once.

  Returns:
    {recordings, records, bytes, seconds, mb_per_s}.

  Raises:
    StoreError: `out_dir` already holds this split's store, or a bad
      argument.
  """
  if chunk_samples <= 0 or num_shards <= 0 or num_workers <= 0:
    raise StoreError(f"chunk_samples={chunk_samples}, num_shards="
                     f"{num_shards}, num_workers={num_workers}: give 1 or "
                     "more")
  if split not in builder.info.splits:
    raise StoreError(f"split {split!r} is not in {builder.data_dir} (it has "
                     f"{sorted(builder.info.splits)})")
  os.makedirs(out_dir, exist_ok=True)
  manifest = os.path.join(out_dir, _manifest_name(split))
  if os.path.exists(manifest):
    raise StoreError(f"{manifest}: a store of split {split!r} is already "
                     "there; delete its files to write it again")
  start = time.perf_counter()
  tasks = [(builder, split, out_dir, s, num_shards, chunk_samples)
           for s in range(num_shards)]
  if num_workers == 1:
    shards = [_write_shard(t) for t in tasks]
  else:
    with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
      shards = pool.map(_write_shard, tasks)
  index = _merged_index(shards)
  np.savez(os.path.join(out_dir, _index_name(split)), **index)
  num_samples = int(index["num_samples"].sum())
  storage.write_json(manifest, {
      "format": _FORMAT, "split": split, "chunk_samples": chunk_samples,
      "num_classes": builder.info.features["label"].num_classes,
      "shards": [{"file": shard_name(split, i, num_shards),
                  "records": s["records"]} for i, s in enumerate(shards)],
      "source": {"dataset": builder.info.full_name,
                 "data_dir": os.fspath(builder.data_dir),
                 "examples": builder.info.splits[split].num_examples},
  })
  seconds = time.perf_counter() - start
  size = num_samples * _BYTES_PER_SAMPLE
  return {"recordings": len(index["label"]),
          "records": sum(s["records"] for s in shards), "bytes": size,
          "seconds": round(seconds, 3),
          "mb_per_s": round(size / 1e6 / seconds, 2)}


# ---------------------------------------------------------------------------
# Reading.
# ---------------------------------------------------------------------------

class WindowStore:
  """One split of a store: each recording's samples by range.

  Shards are opened on first read in each process (a store is pickled to
  Grain's worker processes without its open files). `bytes_read` counts
  the chunk bytes this process has read.
  """

  def __init__(self, path: str, split: str = "train"):
    self.path, self.split = os.fspath(path), split
    manifest = os.path.join(self.path, _manifest_name(split))
    if not os.path.exists(manifest):
      raise StoreError(f"{manifest}: no complete window store of split "
                       f"{split!r} (write it with window_store.write)")
    with open(manifest) as f:
      self.manifest = json.load(f)
    if self.manifest.get("format") != _FORMAT:
      raise StoreError(f"{manifest}: store format "
                       f"{self.manifest.get('format')}, this library reads "
                       f"{_FORMAT}; write the store again")
    index_path = os.path.join(self.path, _index_name(split))
    try:
      with np.load(index_path) as index:
        self.index = dict(index)
    except (OSError, ValueError) as e:
      raise StoreError(f"{index_path}: unreadable store index ({e})") from e
    self.chunk_samples = int(self.manifest["chunk_samples"])
    self.num_classes = int(self.manifest["num_classes"])
    self.bytes_read = 0
    self._readers = {}

  def __len__(self) -> int:
    return len(self.index["num_samples"])

  def check_matches(self, builder: tfds.core.DatasetBuilder) -> None:
    """Raises `StoreError` naming the manifest unless the store was written
    from `builder`'s records of its split (same dataset, classes and
    example count)."""
    manifest = os.path.join(self.path, _manifest_name(self.split))
    source = self.manifest["source"]
    found = (source["dataset"], self.num_classes, source["examples"])
    splits = builder.info.splits
    expected = (builder.info.full_name,
                builder.info.features["label"].num_classes,
                splits[self.split].num_examples if self.split in splits
                else None)
    if found != expected:
      raise StoreError(
          f"{manifest}: written from {found[0]} ({found[1]} classes, "
          f"{found[2]} {self.split} examples), but this run reads "
          f"{expected[0]} ({expected[1]} classes, {expected[2]}); write "
          "the store again from this run's records")

  def __getstate__(self):
    return dict(self.__dict__, _readers={})

  def _reader(self, shard: int):
    reader = self._readers.get(shard)
    if reader is None:
      entry = self.manifest["shards"][shard]
      path = os.path.join(self.path, entry["file"])
      if not os.path.exists(path):
        raise StoreError(f"{path}: missing shard of the window store")
      reader = array_record_module.ArrayRecordReader(path, _READER_OPTIONS)
      if reader.num_records() != entry["records"]:
        raise StoreError(f"{path}: {reader.num_records()} records, the "
                         f"store's manifest says {entry['records']}: the "
                         "shard is damaged or truncated; write the store "
                         "again")
      self._readers[shard] = reader
    return reader

  def read_samples(self, recording: int, first: int, stop: int
                   ) -> np.ndarray:
    """int16 samples `first` .. `stop` - 1 of `recording` (its position in
    the split), clipped to the recording; reads only the chunks holding
    them."""
    num_samples = int(self.index["num_samples"][recording])
    first, stop = max(first, 0), min(stop, num_samples)
    if stop <= first:
      return np.zeros(0, np.int16)
    size = self.chunk_samples
    chunk0, chunk1 = first // size, (stop - 1) // size + 1
    shard = int(self.index["shard"][recording])
    base = int(self.index["first_record"][recording])
    reader = self._reader(shard)
    try:
      # One record per call: a range read hands its records to a thread
      # pool, which costs more CPU than it saves for a window's few chunks.
      chunks = [reader.read([record])[0] for record in
                range(base + chunk0, base + chunk1)]
    except RuntimeError as e:  # Riegeli's checksum or framing.
      raise StoreError(f"{self._shard_path(shard)}: damaged chunk of "
                       f"recording {self.index['recording_id'][recording]} "
                       f"(records {base + chunk0}..{base + chunk1 - 1}): "
                       f"{e}") from e
    for k, chunk in enumerate(chunks, chunk0):
      expected = min(size, num_samples - k * size) * _BYTES_PER_SAMPLE
      if len(chunk) != expected:
        raise StoreError(f"{self._shard_path(shard)}: record {base + k} "
                         f"holds {len(chunk)} bytes, {expected} expected "
                         f"(recording {self.index['recording_id'][recording]}"
                         "): the store is damaged; write it again")
    self.bytes_read += sum(len(c) for c in chunks)
    samples = np.frombuffer(b"".join(chunks), np.int16)
    return samples[first - chunk0 * size:stop - chunk0 * size]

  def _shard_path(self, shard: int) -> str:
    return os.path.join(self.path, self.manifest["shards"][shard]["file"])

  def recording(self, recording: int) -> np.ndarray:
    """The whole waveform of `recording`."""
    return self.read_samples(recording, 0,
                             int(self.index["num_samples"][recording]))

  def labels_of(self, recording: int, name: str) -> np.ndarray:
    """The recording's rows of a variable-length field (`event_label`,
    `event_start`, `event_end`, `checklist`)."""
    offsets = self.index[f"{_RAGGED[name][0]}_offsets"]
    return self.index[name][offsets[recording]:offsets[recording + 1]]


def _multi_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
  hot = np.zeros(num_classes, np.uint8)
  hot[labels] = 1
  return hot


# The fields of a training window (`TrainWindow`) and their dtypes.
TRAIN_FIELDS = (("waveform", np.int16), ("label", np.int32),
                ("recording_id", np.int64), ("example_index", np.int64),
                ("latitude", np.float32), ("longitude", np.float32),
                ("audible", np.uint8), ("checklist", np.uint8),
                ("audible_in_window", np.uint8))


class TrainWindow(grain.RandomMapTransform):
  """Recording position -> its training window with the fields of
  `input_pipeline.train_windows`' elements (L48 images excepted)."""

  def __init__(self, store: WindowStore, config: windows_lib.WindowConfig):
    self.store, self.config = store, config

  def window(self, recording: int, start_frame: int, left_pad_frames: int
             ) -> np.ndarray:
    """int16 `[window_samples]`: window `start_frame` of the recording
    padded by `left_pad_frames` (`windows.cut_windows`), reading only the
    samples it covers."""
    hop = self.config.frontend.hop_length
    first = start_frame * hop
    samples = self.store.read_samples(
        recording, first, first + self.config.window_samples)
    return windows_lib.cut_windows(samples, np.array([0]), left_pad_frames,
                                   self.config)[0]

  def random_map(self, element: int, rng: np.random.Generator) -> dict:
    store, recording = self.store, int(element)
    index = store.index
    start, left = (int(x) for x in windows_lib.train_layout(
        int(index["num_samples"][recording]), rng.integers, self.config))
    event_label = store.labels_of(recording, "event_label")
    heard = windows_lib.events_in_windows(
        store.labels_of(recording, "event_start"),
        store.labels_of(recording, "event_end"), np.array([start - left]),
        self.config)[0]
    return {
        "waveform": self.window(recording, start, left),
        "label": np.int32(index["label"][recording]),
        "recording_id": index["recording_id"][recording],
        "example_index": index["example_index"][recording],
        "latitude": index["latitude"][recording],
        "longitude": index["longitude"][recording],
        "audible": _multi_hot(event_label, store.num_classes),
        "checklist": _multi_hot(store.labels_of(recording, "checklist"),
                                store.num_classes),
        "audible_in_window": _multi_hot(event_label[heard],
                                        store.num_classes),
    }


def _sampler(store: WindowStore, seed: int, num_epochs: int | None,
             process_index: int | None, process_count: int | None
             ) -> tuple[grain.IndexSampler, int, int]:
  """Grain's sampler of this process's share: (sampler, index, count)."""
  process_index, process_count = input_pipeline.process_share(
      process_index, process_count)
  if len(store) < process_count:
    raise StoreError(f"{store.path}: {len(store)} recordings cannot be "
                     f"shared among {process_count} processes")
  sampler = grain.IndexSampler(
      len(store), grain.ShardOptions(process_index, process_count,
                                     drop_remainder=True),
      shuffle=True, num_epochs=num_epochs, seed=seed)
  return sampler, process_index, process_count


def train_loader(store: WindowStore, config: windows_lib.WindowConfig,
                 seed: int = 0, batch_size: int = 0,
                 num_epochs: int | None = None,
                 process_index: int | None = None,
                 process_count: int | None = None,
                 worker_count: int = 0,
                 read_options: grain.ReadOptions | None = None
                 ) -> grain.DataLoader:
  """This process's stream of training windows (batches of `batch_size`,
  or single windows with 0), `num_epochs` epochs (None: endless), as a
  Grain `DataLoader` (for users of Grain; training reads `TrainStream`).

  `worker_count` processes cut windows (0: this one), each with
  `read_options`' threads reading ahead (Grain's defaults when None).

  Each epoch is a new permutation of this process's share of the split
  (`grain.ShardOptions`: equal, disjoint, consecutive shares; JAX's process
  index and count unless given), seeded by `seed`.
  `iter(loader).get_state()` / `set_state()` resume it exactly.

  Raises:
    StoreError: fewer recordings than processes.
  """
  sampler, _, _ = _sampler(store, seed, num_epochs, process_index,
                           process_count)
  operations = [TrainWindow(store, config)]
  if batch_size:
    operations.append(grain.Batch(batch_size, drop_remainder=True))
  return grain.DataLoader(
      data_source=grain.RangeDataSource(0, len(store), 1), sampler=sampler,
      operations=operations, worker_count=worker_count,
      read_options=read_options)


class TrainStream:
  """This process's endless training windows, element k a pure function of
  (seed, k): the k-th element `train_loader` yields with one worker (Grain's
  sampler at global index process_index + k x process_count, its recording
  and per-element generator), so a run resumes at any element without
  replaying the ones before, as `input_pipeline.train_windows` does.

  Raises:
    StoreError: fewer recordings than processes.
  """

  def __init__(self, store: WindowStore, config: windows_lib.WindowConfig,
               seed: int = 0, process_index: int | None = None,
               process_count: int | None = None):
    self._sampler, self._index, self._count = _sampler(
        store, seed, None, process_index, process_count)
    self._transform = TrainWindow(store, config)
    self.epoch_size = len(store) // self._count

  def __call__(self, k: int) -> dict:
    metadata = self._sampler[self._index + int(k) * self._count]
    return self._transform.random_map(metadata.record_key, metadata.rng)

  def block(self, first: int, size: int) -> dict[str, np.ndarray]:
    """Elements `first` .. `first + size - 1`, stacked field by field
    (`TRAIN_FIELDS`)."""
    elements = [self(k) for k in range(first, first + size)]
    return {key: np.stack([np.asarray(e[key], dtype) for e in elements])
            for key, dtype in TRAIN_FIELDS}

  def blocks(self, first: int, size: int, workers: int
             ) -> Iterator[dict[str, np.ndarray]]:
    """Endless `block`s of `size` elements from element `first`, in order,
    made by `workers` processes (a Grain `DataLoader` over `_Blocks`: block
    j by worker j mod `workers`, handed over in shared memory)."""
    if not flags.FLAGS.is_parsed():
      # Grain's workers read its absl flags, which a program outside
      # `absl.app` (a notebook, a test) has not parsed: their defaults.
      flags.FLAGS.mark_as_parsed()
    blocks = _Blocks(self, first, size)
    # One thread per worker: threads side by side only contend for the GIL.
    return iter(grain.DataLoader(
        data_source=blocks,
        sampler=grain.SequentialSampler(len(blocks), grain.NoSharding()),
        worker_count=workers,
        read_options=grain.ReadOptions(num_threads=1,
                                       prefetch_buffer_size=4)))


class _Blocks:
  """Block j of a `TrainStream` from element `first`: a Grain data source
  (random access, picklable to worker processes)."""

  def __init__(self, stream: TrainStream, first: int, size: int):
    self.stream, self.first, self.size = stream, first, size

  def __len__(self) -> int:
    return np.iinfo(np.int64).max // (2 * self.size)  # Endless in practice.

  def __getitem__(self, j: int) -> dict[str, np.ndarray]:
    return self.stream.block(self.first + int(j) * self.size, self.size)


# ---------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------

def _define_flags() -> None:
  config_flags.DEFINE_config_file(
      "config", None, "The training config whose records to store (its "
      "dataset, data_dir, manual_dir, dataset_options and train_split).",
      lock_config=True)
  flags.DEFINE_string("out", None, "The store's folder.")
  flags.DEFINE_string("split", None, "The split to store (default: the "
                      "config's train_split).")
  flags.DEFINE_integer("chunk_samples", DEFAULT_CHUNK_SAMPLES,
                       "Samples per chunk record.")
  flags.DEFINE_integer("num_shards", 1, "ArrayRecord files.")
  flags.DEFINE_integer("num_workers", 1, "Processes writing shards.")
  flags.mark_flags_as_required(["config", "out"])


def main(argv):
  del argv
  input_pipeline.hide_gpus_from_tensorflow()
  f = flags.FLAGS
  try:
    builder = data.prepare_from_config(f.config)
    split = f.split or f.config.train_split
    written = write(builder, split, f.out, f.chunk_samples, f.num_shards,
                    f.num_workers)
  except (registry.ConfigError, ValueError, OSError) as e:
    cli.fail(str(e), e)
  print(f"{written['recordings']} recordings of {split} in {f.out} "
        f"({written['bytes'] / 1e6:.1f} MB, {written['mb_per_s']} MB/s); "
        f"train from it with --config.train_window_store={f.out}")
  return 0


if __name__ == "__main__":
  _define_flags()
  app.run(main)
