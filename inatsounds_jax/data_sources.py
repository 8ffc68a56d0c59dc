"""What training reads: the train split, folders of unlabelled audio, mixtures.

Every run's training windows come from `train_dataset` here. Unless
`config.pretrain_sources` is set, that is the dataset's `config.train_split`
alone (`input_pipeline.train_windows`, batched), with every field.
`config.pretrain_sources` maps a name to a source, like `config.evals`:

    c.pretrain_sources = {
        "inatsounds": {"type": "tfds", "split": "train", "weight": 1.0},
        "audioset": {"type": "audio_folder", "path": "/data/audioset",
                     "weight": 3.0}}

Each source is an endless `tf.data` stream of random training windows
(`input_pipeline.random_window`, the one crop of the train split); the
sources are drawn from at random by `weight` (relative, > 0), element by
element, so each batch holds them in that ratio on average (the MAE
study's AudioSet : iNatSounds mixtures, Liu et al. 2026, s. 4.6).

- `tfds`: a split of the run's dataset (`split`); labels are carried but
  not used by pretraining. `window_filter`: a keep-list of curated windows
  (`inatsounds_jax.curate`; "" = every window). `epoch_unit`, `fraction`,
  `fraction_seed`: what an epoch is (`input_pipeline.TrainEpoch`: one
  window per file, or every dense clip as the MAE study; a seeded random
  fraction of the files). The train split alone takes them from
  `config.train_epoch_unit`, `train_fraction` and `train_fraction_seed`.
- `window_store`: a split (`split`, default "train") of a window store
  (`path`, `inatsounds_jax.window_store`: the records' recordings as
  fixed-length chunks, so a window reads about a window's bytes); the same
  fields as `tfds`, one random window per recording per epoch drawn by
  Grain's per-element generator (other starts than `tfds`'s for the same
  seed, equally uniform). `workers`: processes cutting the windows (0:
  one thread of the training process, about one core's worth; the same
  windows with any number). The train split alone reads one when
  `config.train_window_store` names its folder (workers:
  `config.train_window_store_workers`). No window filters, clip epochs,
  fractions or L48 images.
- `audio_folder`: every wav/flac/ogg/mp3 under `path` (recursive), decoded
  as prediction decodes (`audio.read_audio_file`: mono int16 at 22,050 Hz,
  any rate or channel count); one random window per file per epoch, files
  shorter than a window zero-padded, centred. A file that cannot be
  decoded is replaced by the next one in the folder's order, with a warning.

Multi-host: each process reads a disjoint share of every source (the
split's `tfds.even_splits` share, every process_count-th file of a folder)
and draws its own mixture. The stream is a pure function of `config.seed`
and resumes exactly at a step: each source restarts at the element it had
reached, found by replaying the (cheap) draws, not the audio.

Mixtures are for objectives that do not use labels (`Objective.uses_labels`
false): a folder has none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from inatsounds_jax import audio
from inatsounds_jax import data
from inatsounds_jax import frontend as frontend_lib
from inatsounds_jax import input_pipeline
from inatsounds_jax import l48
from inatsounds_jax import registry
from inatsounds_jax import window_store

# Draws of the mixture are made this many at a time (one stateless call).
_DRAW_BLOCK = 1024


@dataclasses.dataclass(frozen=True)
class Source:
  """One stream of training windows.

  Attributes:
    name: its key in `config.pretrain_sources`.
    weight: its relative share of the drawn windows.
    num_examples: recordings across all processes (one window each per
      epoch).
    windows: `(window config, seed, start_example, num_epochs,
      shuffle_buffer, process_index, process_count) -> tf.data.Dataset` of
      this process's endless unbatched stream, from element `start_example`,
      with `waveform` int16, `label` and `example_index` int (-1 where
      unlabelled).
  """
  name: str
  weight: float
  num_examples: int
  windows: Callable[..., tf.data.Dataset]


SOURCES: registry.Registry[Callable[..., Source]] = registry.Registry(
    "training source type")


# The source a run without `pretrain_sources` reads: `config.train_split`.
_TRAIN_SPLIT = "train_split"


def _field(name: str, key: str) -> str:
  """The config field of a source's option, for messages."""
  if name == _TRAIN_SPLIT:
    return {"split": "train_split", "window_filter": "train_window_filter",
            "epoch": "train_epoch_unit/train_fraction",
            "epoch_unit": "train_epoch_unit",
            "require_known": "label_mode (the dataset's label masks)",
            "path": "train_window_store",
            "workers": "train_window_store_workers"}[key]
  return f"pretrain_sources.{name}.{key}"


def _option(name: str, options: Mapping, field: str):
  if field not in options:
    raise registry.ConfigError(
        f"pretrain_sources.{name}: needs field {field!r} (has "
        f"{sorted(options)})")
  return options[field]


@SOURCES.register("tfds")
def tfds_source(name: str, options: Mapping, weight: float,
                builder: tfds.core.DatasetBuilder) -> Source:
  """A split of the run's dataset (`options.split`), optionally only the
  windows a keep-list names (`options.window_filter`), or only the clips
  with a known label in a mask feature (`options.require_known`, L48)."""
  split = _option(name, options, "split")
  if split not in builder.info.splits:
    raise registry.ConfigError(
        f"{_field(name, 'split')}={split!r} is not in the dataset; it "
        f"has {sorted(builder.info.splits)}")
  window_filter = None
  num_examples = builder.info.splits[split].num_examples
  require_known = options.get("require_known", "")
  try:
    epoch = input_pipeline.TrainEpoch(
        unit=options.get("epoch_unit", "recording"),
        fraction=float(options.get("fraction", 1.0)),
        subset_seed=int(options.get("fraction_seed", 0)))
  except ValueError as e:
    raise registry.ConfigError(f"{_field(name, 'epoch')}: {e}") from None
  label_sources = data.label_sources(builder)
  index_size = label_sources["example_index_size"].get(split.split("[")[0],
                                                       0)
  if require_known:
    num_examples -= len(label_sources["unlabelled_examples"]
                        .get(split, {}).get(require_known, ()))
  if options.get("window_filter"):
    try:
      window_filter = input_pipeline.WindowFilter.read(
          options["window_filter"])
    except (ValueError, OSError) as e:
      raise registry.ConfigError(
          f"{_field(name, 'window_filter')}: {e}") from None
  try:  # When the config is read, not when training starts.
    input_pipeline.check_epoch_and_filter(builder, epoch, window_filter)
  except ValueError as e:
    field = "window_filter" if window_filter else "epoch"
    raise registry.ConfigError(f"{_field(name, field)}: {e}") from None
  if window_filter is not None:
    num_examples = (window_filter.num_windows() if epoch.unit == "clip"
                    else window_filter.num_recordings())
  elif epoch != input_pipeline.TrainEpoch():
    try:
      num_examples = input_pipeline.count_epoch(
          builder, split, options["windows"], epoch, index_size,
          require_known)
    except ValueError as e:
      raise registry.ConfigError(f"{_field(name, 'epoch')}: {e}") from None

  def windows(config, seed, start_example, num_epochs, shuffle_buffer,
              process_index, process_count):
    try:
      return input_pipeline.train_windows(
          builder, split, config, seed, start_example, num_epochs,
          shuffle_buffer, process_index, process_count, window_filter,
          require_known, epoch, index_size)
    except ValueError as e:
      raise registry.ConfigError(
          f"{_field(name, 'window_filter')}: {e}") from None

  return Source(name, weight, num_examples, windows)


# Store windows are made this many at a time (one Python call).
_STORE_BLOCK = 32


@SOURCES.register("window_store")
def window_store_source(name: str, options: Mapping, weight: float,
                        builder: tfds.core.DatasetBuilder) -> Source:
  """A split of a window store written from the run's records."""
  split = options.get("split", "train")
  for field, default in (("window_filter", ""), ("require_known", ""),
                         ("epoch_unit", "recording"), ("fraction", 1.0)):
    if options.get(field, default) != default:
      raise registry.ConfigError(
          f"{_field(name, field if field != 'fraction' else 'epoch')}: a "
          "window store reads one random window per recording; read the "
          "TFDS records for curated windows, clip epochs, fractions or "
          "label masks")
  store = window_store.WindowStore(_option(name, options, "path"), split)
  store.check_matches(builder)
  workers = options.get("workers", 0)
  if not (isinstance(workers, int) and workers >= 0):
    raise registry.ConfigError(
        f"{_field(name, 'workers')}={workers!r}: a number of processes, "
        ">= 0")

  def windows(config, seed, start_example, num_epochs, shuffle_buffer,
              process_index, process_count):
    del num_epochs, shuffle_buffer  # Every epoch is a fresh permutation.
    return store_stream(store, config, seed, start_example, process_index,
                        process_count, workers)

  return Source(name, weight, len(store), windows)


def store_stream(store: window_store.WindowStore,
                 config: input_pipeline.WindowConfig, seed: int,
                 start_example: int, process_index: int,
                 process_count: int, workers: int = 0) -> tf.data.Dataset:
  """This process's endless windows of `store` from element
  `start_example` (`window_store.TrainStream`), as tf.data elements with
  the records' fields, made by `workers` processes (0: one thread of this
  one; the same windows with any number)."""
  stream = window_store.TrainStream(store, config, seed, process_index,
                                    process_count)
  shapes = {"waveform": [config.window_samples], "audible": [
      store.num_classes], "checklist": [store.num_classes],
            "audible_in_window": [store.num_classes]}
  fields = window_store.TRAIN_FIELDS
  signature = {key: tf.TensorSpec([None, *shapes.get(key, [])],
                                  tf.as_dtype(dtype)) for key, dtype in fields}
  if workers:
    blocks = tf.data.Dataset.from_generator(
        lambda: stream.blocks(start_example, _STORE_BLOCK, workers),
        output_signature=signature)
  else:
    def block(first):
      made = stream.block(int(first), _STORE_BLOCK)
      return [made[key] for key, _ in fields]

    def tensors(first):
      values = tf.numpy_function(block, [first], [signature[key].dtype
                                                  for key, _ in fields],
                                 stateful=False)
      for value, (key, _) in zip(values, fields):
        value.set_shape(signature[key].shape)
      return dict(zip([key for key, _ in fields], values))

    # One thread makes the blocks ahead of the consumer: threads side by
    # side would only contend for the GIL.
    blocks = tf.data.Dataset.range(
        start_example, np.iinfo(np.int64).max, _STORE_BLOCK).map(
            tensors, num_parallel_calls=1)
  return blocks.unbatch()


def find_audio_files(name: str, path: str) -> list[str]:
  """Every recording under folder `path` (recursive, sorted).

  Raises:
    registry.ConfigError: not a folder, or no audio in it.
  """
  if not path or not tf.io.gfile.isdir(path):
    raise registry.ConfigError(
        f"pretrain_sources.{name}.path={path!r}: no such folder")
  try:
    return [full for full, _ in audio.find_audio(path)]
  except audio.NoAudioError as e:
    raise registry.ConfigError(
        f"pretrain_sources.{name}.path={path}: {e.reason}") from None


class _FolderDecoder:
  """Decodes recording i of a file list; an undecodable one (warned about
  once) is replaced by the next decodable one, so the recording behind an
  element is a pure function of its position and resuming stays exact."""

  def __init__(self, name: str, files: list[str]):
    self._name, self._files = name, files
    self._bad: set[int] = set()

  def __call__(self, i) -> np.ndarray:
    n = len(self._files)
    for j in range(n):
      k = (int(i) + j) % n
      if k in self._bad:
        continue
      try:
        return audio.read_audio_file(self._files[k])
      except audio.AudioError as e:
        self._bad.add(k)
        logging.warning("pretrain_sources.%s skips a recording: %s",
                        self._name, e)
    raise registry.ConfigError(
        f"pretrain_sources.{self._name}: none of its {n} recordings can be "
        "decoded")


@SOURCES.register("audio_folder")
def audio_folder_source(name: str, options: Mapping, weight: float,
                        builder: tfds.core.DatasetBuilder) -> Source:
  """Every recording under `options.path`; unlabelled."""
  del builder  # Only its own files.
  files = find_audio_files(name, _option(name, options, "path"))

  def windows(config, seed, start_example, num_epochs, shuffle_buffer,
              process_index, process_count):
    del num_epochs, shuffle_buffer  # Every epoch is a full permutation.
    share = files[process_index::process_count]
    if not share:
      raise registry.ConfigError(
          f"pretrain_sources.{name}: {len(files)} recordings cannot be "
          f"shared among {process_count} processes")
    decode = _FolderDecoder(name, share)
    first_epoch, offset = divmod(start_example, len(share))

    def epoch(e):
      return tf.data.Dataset.from_tensor_slices(
          tf.random.experimental.stateless_shuffle(
              tf.range(len(share)),
              seed=tf.stack([tf.cast(seed, tf.int64) * 100_003 + e,
                             tf.constant(1, tf.int64)])))

    def crop(index, file_index):
      waveform = tf.numpy_function(decode, [file_index], tf.int16,
                                   stateful=False)
      waveform.set_shape([None])
      return {"waveform": input_pipeline.random_window(waveform, index, seed,
                                                       config)[0],
              "label": tf.constant(-1, tf.int32),
              "example_index": tf.constant(-1, tf.int64)}

    ds = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max)
    ds = ds.flat_map(epoch).skip(offset).enumerate(start_example)
    return ds.map(crop, num_parallel_calls=tf.data.AUTOTUNE,
                  deterministic=True)

  return Source(name, weight, len(files), windows)


def model_windows(config) -> input_pipeline.WindowConfig:
  """The windows of the model `config` makes (the objectives build its
  frontend from `frontend_preset` and its window from `window_frames`),
  for counting clip epochs before the model exists."""
  default = input_pipeline.WindowConfig()
  return input_pipeline.WindowConfig(
      window_frames=config.get("window_frames", default.window_frames),
      eval_stride_frames=config.get("eval_stride_frames",
                                    default.eval_stride_frames),
      frontend=frontend_lib.get_config(
          config.get("frontend_preset", "inatsounds")))


def from_config(config, builder: tfds.core.DatasetBuilder) -> list[Source]:
  """The sources of `config.pretrain_sources`, or the train split alone
  (only `config.train_window_filter`'s windows when set).

  Raises:
    registry.ConfigError: an unknown type, a weight <= 0, a missing field,
      a split not in the dataset, a folder without audio.
  """
  configured = config.get("pretrain_sources") or {}
  if not configured:
    # Data with a mask per label mode (L48): clips the run's mode knows
    # nothing of are left out, as the benchmark's remove_unannotated does.
    mode = config.get("label_mode", "target_only")
    require_known = (l48.MASK_OF_MODE.get(mode, "")
                     if data.label_sources(builder)["label_masks"] else "")
    if config.get("train_window_store"):
      return [window_store_source(_TRAIN_SPLIT, {
          "path": config.train_window_store, "split": config.train_split,
          "workers": config.get("train_window_store_workers", 0),
          "window_filter": config.get("train_window_filter", ""),
          "require_known": require_known,
          "epoch_unit": config.get("train_epoch_unit", "recording"),
          "fraction": config.get("train_fraction", 1.0)}, 1.0, builder)]
    return [tfds_source(_TRAIN_SPLIT, {
        "split": config.train_split,
        "window_filter": config.get("train_window_filter", ""),
        "require_known": require_known,
        "epoch_unit": config.get("train_epoch_unit", "recording"),
        "fraction": config.get("train_fraction", 1.0),
        "fraction_seed": config.get("train_fraction_seed", 0),
        "windows": model_windows(config)}, 1.0, builder)]
  sources = []
  for name, options in configured.items():
    options = dict(options, windows=model_windows(config))
    factory = SOURCES.get(_option(name, options, "type"))
    weight = options.get("weight", 1.0)
    if not (isinstance(weight, (int, float)) and weight > 0):
      raise registry.ConfigError(
          f"pretrain_sources.{name}.weight={weight!r} must be > 0")
    sources.append(factory(name, options, float(weight), builder))
  return sources


def _draw_block(block: tf.Tensor, cumulative: tf.Tensor, seed: int
                ) -> tf.Tensor:
  """Source ids of draws block * _DRAW_BLOCK ... (+ _DRAW_BLOCK)."""
  u = tf.random.stateless_uniform(
      [_DRAW_BLOCK], tf.stack([tf.cast(seed, tf.int64) * 100_003 + 7, block]))
  return tf.searchsorted(cumulative, u, side="right")


def draws(weights, seed: int) -> tf.data.Dataset:
  """Endless int64 source ids, i.i.d. with probabilities ~ `weights`."""
  cumulative = np.cumsum(weights, dtype=np.float64) / np.sum(weights)
  cumulative = tf.constant(cumulative[:-1], tf.float32)
  return tf.data.Dataset.range(np.iinfo(np.int64).max).map(
      lambda b: tf.cast(_draw_block(b, cumulative, seed), tf.int64)).unbatch()


def draw_counts(weights, seed: int, num_draws: int) -> np.ndarray:
  """How many of the first `num_draws` draws went to each source."""
  blocks = draws(weights, seed).take(num_draws).batch(_DRAW_BLOCK)
  counts = np.zeros(len(weights), np.int64)
  for ids in blocks.as_numpy_iterator():
    counts += np.bincount(ids, minlength=len(weights))
  return counts


def train_dataset(sources: list[Source], global_batch_size: int,
                  config: input_pipeline.WindowConfig, seed: int = 0,
                  start_step: int = 0, num_epochs: int = 1,
                  shuffle_buffer: int = 2048,
                  process_index: int | None = None,
                  process_count: int | None = None) -> tf.data.Dataset:
  """This process's batches, drawn from `sources` by weight.

  One source: its stream with all its fields. Several: `{waveform, label,
  example_index, source}`, `source` the index of the window's source.
  `start_step` resumes exactly where a run at that step was.
  """
  process_index, process_count = input_pipeline.process_share(process_index,
                                                              process_count)
  local_batch = input_pipeline.local_batch_size(global_batch_size,
                                                process_count)
  start = start_step * local_batch
  weights = [s.weight for s in sources]
  consumed = (draw_counts(weights, seed, start) if len(sources) > 1
              else [start])
  streams = [source.windows(config, seed + i, int(first), num_epochs,
                            shuffle_buffer, process_index, process_count)
             for i, (source, first) in enumerate(zip(sources, consumed))]
  if len(streams) == 1:
    ds = streams[0]
  else:
    # The fields all sources have, so that their streams interleave.
    ds = tf.data.Dataset.choose_from_datasets(
        [s.map(lambda x, i=i: {
            "waveform": x["waveform"], "label": tf.cast(x["label"], tf.int32),
            "example_index": tf.cast(x["example_index"], tf.int64),
            "source": tf.constant(i, tf.int32)})
         for i, s in enumerate(streams)],
        draws(weights, seed).skip(start), stop_on_empty_dataset=True)
  return ds.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
