"""tf.data input pipeline over the TFDS records: waveform windows.

The pipeline cuts waveforms, not spectrograms: the spectrogram is computed on
the accelerator by the model's frontend. Every window is cut on the frame
grid of the whole-file spectrogram (starts at a multiple of the hop), so the
frontend applied to a window gives exactly those frames of the whole file.

- Train: one random `window_frames` window per file per epoch; files shorter
  than a window are zero-padded, centred. Shuffled, repeated, sharded per
  process; each process yields its part of the global batch. Each window
  carries `audible_in_window`, the species whose strong-label events
  overlap it (the `full` label mode's targets; zeros without strong labels).
  `TrainEpoch` offers the MAE study's epoch instead (every dense clip of
  every file once) and a seeded random fraction of the files.
- Eval: dense windows every `eval_stride_frames`, centred zero padding so the
  last window fits (the iNatSounds paper's evaluation protocol). Each window
  carries its recording id and a validity mask; the last partial batch is
  padded with masked windows, so every window of every file is seen exactly
  once.
- Prediction: the eval layout at the prediction's hop, cut chunk by chunk
  as a recording is decoded (`windows.py`, which holds the one cutting
  function and the eval layout on numpy; this module runs them on tensors).

Datasets of spectrogram images (the Merlin L48 clips, `tfds_builders/l48`)
are already cut: each clip is one window, its recording the asset it comes
from, under `image` instead of `waveform` (`model_input` picks whichever a
batch has), brought to the model's `frontend.ImageInputConfig` size.
Training reads one clip per example; evaluation reads every clip once, with
`audible_in_window` its labels and `annotated` whether all of them are
known.
"""

from __future__ import annotations

import csv
import dataclasses

from etils import epy
import jax
import numpy as np

from inatsounds_jax import frontend as frontend_lib
from inatsounds_jax import l48
from inatsounds_jax import windows as windows_lib

# Imported on first use: modules that import this one for its plain parts
# (`model_input`, `WindowConfig`), such as a model loaded for prediction,
# need not load TensorFlow.
with epy.lazy_imports():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

# Fields carried next to the waveform (besides label and recording id).
_META = ("latitude", "longitude", "example_index")
# An L48 clip's labels and the mask of every label mode.
_CLIP_LABELS = ("labels", *l48.MASK_OF_MODE.values())
# What the training loop sends to the devices, where a batch has it.
TRAIN_KEYS = ("waveform", "image", "label", "example_index", "asset_index")


def model_input(batch: dict):
  """The model's input in a batch: its `image`s, else its `waveform`s."""
  return batch["image"] if "image" in batch else batch["waveform"]


def is_image_dataset(builder: tfds.core.DatasetBuilder) -> bool:
  """Whether the records hold spectrogram images (L48) rather than audio."""
  return "image" in builder.info.features


WindowConfig = windows_lib.WindowConfig  # Its callers' name for it.
_DEFAULT_WINDOWS = WindowConfig()


def hide_gpus_from_tensorflow() -> None:
  """TF would otherwise claim the GPU memory that JAX needs."""
  tf.config.set_visible_devices([], "GPU")


# ---------------------------------------------------------------------------
# Windowing: `windows.py`'s one cutting function and eval layout on tensors,
# and the train layout.
# ---------------------------------------------------------------------------

def _tensorflow_ops() -> windows_lib.ArrayOps:
  return windows_lib.ArrayOps(
      length=lambda x: tf.shape(x)[0], max=tf.reduce_max,
      maximum=tf.maximum, where=tf.where, arange=tf.range,
      pad=lambda x, left, right: tf.pad(x, [[left, right]]),
      take_windows=lambda x, first, size: tf.gather(
          x, first[:, None] + tf.range(size)[None, :]),
      float32=lambda x: tf.cast(x, tf.float32))


def cut_windows(waveform, start_frames, left_pad_frames,
                config: WindowConfig) -> tf.Tensor:
  """`windows.cut_windows` on TF tensors (arrays are converted)."""
  return windows_lib.cut_windows(
      tf.convert_to_tensor(waveform), tf.convert_to_tensor(start_frames),
      tf.convert_to_tensor(left_pad_frames), config, _tensorflow_ops())


def eval_layout(num_samples, config: WindowConfig):
  """`windows.eval_layout` as TF tensors."""
  return windows_lib.eval_layout(tf.convert_to_tensor(num_samples), config,
                                 _tensorflow_ops())


def train_layout(num_samples, seed: tf.Tensor, config: WindowConfig):
  """(start frame `[1]`, left padding) of one random training window
  (`windows.train_layout`, drawn by TF's stateless generator at `seed`)."""
  start, left = windows_lib.train_layout(
      num_samples, lambda n: tf.random.stateless_uniform(
          [], seed, minval=0, maxval=n, dtype=tf.int32),
      config, _tensorflow_ops())
  return start[None], left


# ---------------------------------------------------------------------------
# Datasets.
# ---------------------------------------------------------------------------

def _multi_hot(labels: tf.Tensor, num_classes: int) -> tf.Tensor:
  # Over no labels the maximum of uint8 is 0.
  return tf.reduce_max(tf.one_hot(labels, num_classes, dtype=tf.uint8),
                       axis=0)


def _features(example, num_classes: int) -> dict:
  """Label, recording id, location, `example_index`, and over the classes:
  `audible` (every species in the strong labels) and `checklist`, uint8
  multi-hot, all zero where the records have none. Of an L48 clip: label,
  recording (asset) id, `example_index`, `asset_index`, its labels and
  masks."""
  out = {"label": tf.cast(example["label"], tf.int32),
         "recording_id": example["recording_id"]}
  if "labels" in example:
    out.update({k: example[k] for k in
                ("example_index", "asset_index", *_CLIP_LABELS)})
    return out
  out.update({k: example[k] for k in _META})
  out["audible"] = _multi_hot(example["event_label"], num_classes)
  out["checklist"] = _multi_hot(example["checklist"], num_classes)
  return out


def _audible_in_windows(example, start_frames: tf.Tensor,
                        config: WindowConfig, num_classes: int) -> tf.Tensor:
  """uint8 `[windows, classes]`: species with a call (strong-label event)
  overlapping each window; `start_frames` in the unpadded signal."""
  overlaps = windows_lib.events_in_windows(
      example["event_start"], example["event_end"], start_frames, config,
      _tensorflow_ops())
  hot = tf.one_hot(example["event_label"], num_classes, dtype=tf.uint8)
  # Over no events the maximum of uint8 is 0.
  return tf.reduce_max(tf.cast(overlaps, tf.uint8)[:, :, None] * hot[None],
                       axis=1)


def clip_image(image: tf.Tensor, frontend: frontend_lib.ImageInputConfig
               ) -> tf.Tensor:
  """uint8 `[height, width, channels]` of `frontend`: the clip as it is when
  it has that size, else resized (bilinear, antialiased)."""
  size = tf.constant([frontend.height, frontend.width])
  resized = tf.cond(
      tf.reduce_all(tf.shape(image)[:2] == size), lambda: image,
      lambda: tf.cast(tf.clip_by_value(tf.round(tf.image.resize(
          image, size, antialias=True)), 0, 255), tf.uint8))
  resized.set_shape(frontend.example_shape)
  return resized


def process_share(process_index: int | None, process_count: int | None
                   ) -> tuple[int, int]:
  """(this process's index, process count); JAX's unless given (tests)."""
  return (jax.process_index() if process_index is None else process_index,
          jax.process_count() if process_count is None else process_count)


@dataclasses.dataclass(frozen=True)
class WindowFilter:
  """The training windows kept by curation (`inatsounds_jax.curate`).

  Rows are dense evaluation windows (`eval_layout`) of the train split:
  recording `example_index` at `split_position` in the split's unshuffled
  order, window `start_frame` of its signal padded by `left_pad_frames`.
  """
  example_index: np.ndarray
  split_position: np.ndarray
  start_frame: np.ndarray
  left_pad_frames: np.ndarray
  window_frames: int
  path: str = ""

  COLUMNS = ("example_index", "split_position", "start_frame",
             "left_pad_frames", "window_frames")

  @classmethod
  def read(cls, path: str) -> "WindowFilter":
    """Reads a keep-list CSV (at least `COLUMNS`).

    Raises:
      ValueError: missing columns, no rows, or mixed window lengths.
    """
    with tf.io.gfile.GFile(path) as f:
      rows = list(csv.DictReader(f))
    missing = set(cls.COLUMNS) - set(rows[0] if rows else cls.COLUMNS)
    if missing:
      raise ValueError(f"{path}: missing columns {sorted(missing)}")
    if not rows:
      raise ValueError(f"{path}: keeps no windows")
    column = {k: np.array([int(r[k]) for r in rows], np.int64)
              for k in cls.COLUMNS}
    lengths = set(column["window_frames"].tolist())
    if len(lengths) != 1:
      raise ValueError(f"{path}: windows of several lengths {lengths}")
    return cls(column["example_index"], column["split_position"],
               column["start_frame"], column["left_pad_frames"],
               lengths.pop(), path)

  def _inside(self, first: int, end: int | None) -> np.ndarray:
    inside = self.split_position >= first
    if end is not None:
      inside &= self.split_position < end
    return inside

  def num_recordings(self, first: int = 0, end: int | None = None) -> int:
    """Recordings with a kept window at split positions first .. end - 1."""
    return len(np.unique(self.example_index[self._inside(first, end)]))

  def num_windows(self, first: int = 0, end: int | None = None) -> int:
    """Kept windows of recordings at split positions first .. end - 1."""
    return int(self._inside(first, end).sum())


EPOCH_UNITS = ("recording", "clip")


@dataclasses.dataclass(frozen=True)
class TrainEpoch:
  """What one epoch of the train split is.

  Attributes:
    unit: "recording": one random window of each file (the iNatSounds
      paper's training); "clip": every dense window of each file once
      (`eval_layout`: 3-s clips at about 1.5-s stride, padded as evaluation
      pads), the MAE study's definition (Liu et al. 2026, s. 4: "each
      recording is segmented into overlapping 3-second clips with a stride
      of 1.5 seconds"), so an epoch of long files is many more steps.
    fraction: of the split's files, in (0, 1]: a random subset, the same
      for every run with the same `subset_seed` whatever the run's seed,
      so that methods compared at a fraction see the same files (the MAE
      study's partial fine-tuning, s. 4.5, subsamples the training set).
    subset_seed: picks the subset.
  """
  unit: str = "recording"
  fraction: float = 1.0
  subset_seed: int = 0

  def __post_init__(self):
    if self.unit not in EPOCH_UNITS:
      raise ValueError(f"epoch unit {self.unit!r}: choose from "
                       f"{list(EPOCH_UNITS)}")
    if not 0.0 < self.fraction <= 1.0:
      raise ValueError(f"fraction {self.fraction!r} must be in (0, 1]")

  def kept_examples(self, index_size: int) -> np.ndarray | None:
    """bool `[index_size]` over `example_index`: the subset's files (the
    first round(fraction x size), at least one, of a permutation seeded by
    `subset_seed`); None when every file is kept."""
    if self.fraction == 1.0:
      return None
    order = np.random.default_rng(self.subset_seed).permutation(index_size)
    kept = np.zeros(index_size, bool)
    kept[order[:max(1, round(self.fraction * index_size))]] = True
    return kept


_WHOLE_EPOCH = TrainEpoch()


def _num_samples(undecoded_audio: tf.Tensor) -> tf.Tensor:
  """Samples of a recording whose audio was read but not decoded (raw
  int16 bytes, `tfds_builders/inat_sounds`'s `audio_feature`)."""
  return tf.strings.length(undecoded_audio) // 2


def _num_clips(undecoded_audio: tf.Tensor, config: WindowConfig
               ) -> tf.Tensor:
  """int64 dense windows (`eval_layout`) of an undecoded recording."""
  starts, _ = eval_layout(_num_samples(undecoded_audio), config)
  return tf.size(starts, out_type=tf.int64)


def _kept_windows(window_filter: WindowFilter):
  """Per example index: (first row, row count) into the sorted rows, and
  the rows' (start frame, left padding), as tensors."""
  order = np.argsort(window_filter.example_index, kind="stable")
  index = window_filter.example_index[order]
  size = int(index.max()) + 1
  count = np.bincount(index, minlength=size)
  first = np.concatenate([[0], np.cumsum(count)[:-1]])
  return (tf.constant(first, tf.int64), tf.constant(count, tf.int64),
          tf.constant(window_filter.start_frame[order], tf.int32),
          tf.constant(window_filter.left_pad_frames[order], tf.int32))


def _kept_by(epoch: TrainEpoch, example_index_size: int,
             require_known: str):
  """The predicate on undecoded examples of `require_known` and the
  epoch's fraction, or None when every example is kept."""
  kept_examples = None
  if epoch.fraction < 1.0:
    if not example_index_size:
      raise ValueError(
          f"a fraction of the files ({epoch.fraction}) needs the split's "
          "example_index size")
    kept_examples = tf.constant(epoch.kept_examples(example_index_size))
  if not require_known and kept_examples is None:
    return None

  def keep(example) -> tf.Tensor:
    kept = tf.constant(True)
    if require_known:
      kept &= tf.reduce_any(example[require_known] > 0)
    if kept_examples is not None:
      i = tf.cast(example["example_index"], tf.int32)
      kept &= (i < tf.size(kept_examples)) & tf.gather(
          kept_examples, tf.minimum(i, tf.size(kept_examples) - 1))
    return kept

  return keep


def count_epoch(builder: tfds.core.DatasetBuilder, split: str,
                config: WindowConfig, epoch: TrainEpoch = _WHOLE_EPOCH,
                example_index_size: int = 0, require_known: str = "") -> int:
  """Elements of one training epoch of `split` (any TFDS split string,
  e.g. a process's share): its examples with a known label in
  `require_known` (if given) and in `epoch`'s fraction, or their dense
  clips for clip epochs. One pass reading the records, decoding nothing."""
  input_name = "image" if is_image_dataset(builder) else "audio"
  ds = builder.as_dataset(
      split=split, decoders={input_name: tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(skip_prefetch=True))
  keep = _kept_by(epoch, example_index_size, require_known)
  if keep is not None:
    ds = ds.filter(keep)
  clips = epoch.unit == "clip"
  return int(ds.reduce(np.int64(0), lambda n, x: n + (
      _num_clips(x["audio"], config) if clips else np.int64(1))))


def check_epoch_and_filter(builder: tfds.core.DatasetBuilder,
                           epoch: TrainEpoch,
                           window_filter: WindowFilter | None) -> None:
  """Raises ValueError (naming the filter's file) for what
  `train_windows` cannot combine: a window filter or clip epochs on image
  clips (L48), a window filter with a fraction of the files."""
  images = is_image_dataset(builder)
  if images and window_filter is not None:
    raise ValueError(f"{window_filter.path}: window filters name windows of "
                     "audio; the dataset holds image clips")
  if epoch.unit == "clip" and images:
    raise ValueError("clip epochs cut every dense window of each recording; "
                     "the dataset holds image clips")
  if epoch.fraction < 1.0 and window_filter is not None:
    raise ValueError(f"{window_filter.path}: a window filter and a fraction "
                     f"({epoch.fraction}) of the files cannot be combined")


def train_windows(builder: tfds.core.DatasetBuilder, split: str,
                  config: WindowConfig = _DEFAULT_WINDOWS, seed: int = 0,
                  start_example: int = 0, num_epochs: int = 1,
                  shuffle_buffer: int = 2048, process_index: int | None = None,
                  process_count: int | None = None,
                  window_filter: WindowFilter | None = None,
                  require_known: str = "",
                  epoch: TrainEpoch = _WHOLE_EPOCH,
                  example_index_size: int = 0) -> tf.data.Dataset:
  """This process's endless stream of training windows, unbatched.

  The process reads its even share of `split`. Epoch e reads the files in
  an order seeded by (seed, e), and element i gets crop seed (seed, i), so
  the stream is a pure function of `seed`; `start_example` resumes it at
  that element of this process's stream: only the current epoch is
  re-read, and skipped records are not decoded. Set `num_epochs` to the
  run's length: epochs after it repeat one reshuffled dataset, which
  resumes exactly only from its start.

  With `window_filter`, only recordings with a kept window are read, and
  element i's window is drawn uniformly among its recording's kept ones
  (seed (seed, i)); with clip epochs, every kept window is an element once
  per epoch (the MAE study pretrains on its curated segments so).

  Image datasets (L48) yield each clip, `image` at the size of
  `config.frontend` (an `ImageInputConfig`). With `require_known` (a mask
  feature), clips whose mask is all zero are left out; the clips kept are
  counted first (one pass over this process's share reading the masks, not
  decoding images), so epochs and resuming stay exact.

  `epoch` (`TrainEpoch`) may make an epoch every dense clip of each file
  (element i is then a clip, in an order seeded by (seed, epoch), cut
  where evaluation cuts it) and keep a fraction of the files (picked over
  the split's `example_index_size` indices). Either counts the epoch
  first, like `require_known`: one pass over this process's share reading
  the records without decoding them.

  Raises:
    ValueError: the filter's windows are not this run's length, or it keeps
      nothing of this process's share; a filter over image clips; clip
      epochs of image clips; a fraction with a filter or without
      `example_index_size`; nothing of the share kept.
  """
  process_index, process_count = process_share(process_index, process_count)
  split = tfds.even_splits(split, n=process_count,
                           drop_remainder=True)[process_index]
  epoch_size = builder.info.splits[split].num_examples
  images = is_image_dataset(builder)
  check_epoch_and_filter(builder, epoch, window_filter)
  clips = epoch.unit == "clip"
  input_name = "image" if images else "audio"
  keep = _kept_by(epoch, example_index_size, require_known)
  if keep is not None or (clips and window_filter is None):
    epoch_size = count_epoch(builder, split, config, epoch,
                             example_index_size, require_known)
    if not epoch_size:
      raise ValueError(
          f"no example of process {process_index}'s share of the split "
          + (f"has a known label in {require_known}" if require_known else
             f"is in the {epoch.fraction} fraction of the files"))
  if window_filter is not None:
    if window_filter.window_frames != config.window_frames:
      raise ValueError(
          f"{window_filter.path}: windows of {window_filter.window_frames} "
          f"frames; this run's are {config.window_frames}")
    [share] = split.to_absolute(builder.info.splits)
    epoch_size = (window_filter.num_windows if clips else
                  window_filter.num_recordings)(share.from_ or 0, share.to)
    if not epoch_size:
      raise ValueError(f"{window_filter.path}: keeps no recording of "
                       f"process {process_index}'s share of the split")
    first_row, num_rows, kept_start, kept_left = _kept_windows(window_filter)

    def kept(example):
      i = tf.cast(example["example_index"], tf.int64)
      size = tf.size(num_rows, out_type=tf.int64)
      return (i < size) & (tf.gather(num_rows, tf.minimum(i, size - 1)) > 0)
  first_epoch, offset = divmod(start_example, epoch_size)

  def one_per_clip(example):
    if window_filter is None:
      n = _num_clips(example[input_name], config)
    else:
      n = num_rows[tf.cast(example["example_index"], tf.int64)]
    return tf.data.Dataset.from_tensors(example).repeat(n).enumerate().map(
        lambda j, x: dict(x, clip_index=j))

  def epoch_elements(e: int) -> tf.data.Dataset:
    epoch_seed = seed * 100_003 + e
    ds = builder.as_dataset(
        split=split, shuffle_files=True,
        decoders={input_name: tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(shuffle_seed=epoch_seed,
                                    skip_prefetch=True))
    if window_filter is not None:
      ds = ds.filter(kept)
    if keep is not None:
      ds = ds.filter(keep)
    if clips:
      ds = ds.flat_map(one_per_clip)
    return ds.shuffle(shuffle_buffer, seed=epoch_seed)

  ds = epoch_elements(first_epoch).skip(offset)
  for e in range(first_epoch + 1, max(num_epochs, first_epoch + 1)):
    ds = ds.concatenate(epoch_elements(e))
  ds = ds.concatenate(epoch_elements(num_epochs).repeat())
  input_feature = builder.info.features[input_name]
  num_classes = builder.info.features["label"].num_classes

  def crop(index, example):
    if images:
      return dict(_features(example, num_classes), image=clip_image(
          input_feature.decode_example(example["image"]), config.frontend))
    audio = input_feature.decode_example(example["audio"])
    if clips and window_filter is None:
      starts, left = eval_layout(tf.shape(audio)[0], config)
      window, first_frame = _window_at(
          audio, starts[example["clip_index"]], left, config)
    elif window_filter is None:
      window, first_frame = random_window(audio, index, seed, config)
    else:
      i = tf.cast(example["example_index"], tf.int64)
      row = first_row[i] + (example["clip_index"] if clips else
                            tf.random.stateless_uniform(
                                [], tf.stack([tf.cast(seed, tf.int64),
                                              tf.cast(index, tf.int64)]),
                                maxval=num_rows[i], dtype=tf.int64))
      window, first_frame = _window_at(audio, kept_start[row],
                                       kept_left[row], config)
    return dict(_features(example, num_classes), waveform=window,
                audible_in_window=_audible_in_windows(
                    example, first_frame, config, num_classes)[0])

  return ds.enumerate(start_example).map(
      crop, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _window_at(waveform: tf.Tensor, start_frame: tf.Tensor,
               left_pad_frames: tf.Tensor, config: WindowConfig
               ) -> tuple[tf.Tensor, tf.Tensor]:
  """The window `[window_samples]` at `start_frame` of the signal padded by
  `left_pad_frames`, and its first frame in the unpadded signal `[1]`."""
  start = tf.reshape(start_frame, [1])
  return (cut_windows(waveform, start, left_pad_frames, config)[0],
          start - left_pad_frames)


def random_window(waveform: tf.Tensor, index: tf.Tensor, seed: int,
                  config: WindowConfig) -> tuple[tf.Tensor, tf.Tensor]:
  """The training window `[window_samples]` of element `index` of a stream
  seeded by `seed` (`train_layout` with crop seed (seed, index)), and its
  first frame in the unpadded signal `[1]` (negative when centred in
  zeros)."""
  start_frame, left = train_layout(
      tf.shape(waveform)[0],
      tf.stack([tf.cast(seed, tf.int64), tf.cast(index, tf.int64)]), config)
  return _window_at(waveform, start_frame, left, config)


def local_batch_size(global_batch_size: int, process_count: int) -> int:
  """This process's share of the global batch."""
  if global_batch_size % process_count:
    raise ValueError(f"global batch {global_batch_size} is not divisible by "
                     f"{process_count} processes")
  return global_batch_size // process_count


def eval_dataset(builder: tfds.core.DatasetBuilder, split: str,
                 global_batch_size: int,
                 config: WindowConfig = _DEFAULT_WINDOWS,
                 process_index: int | None = None,
                 process_count: int | None = None) -> tf.data.Dataset:
  """One pass of dense windows: `{waveform, label, recording_id, mask, ...}`.

  `start_frame` and `left_pad_frames` place each window (`eval_layout`).

  `audible_in_window` marks the species calling in each window (from the
  strong labels; all zero where the records have none); `annotated` says
  whether that is every label of the window (always, for audio).

  Image datasets (L48): `{image, label, recording_id, mask, ...}`, one
  window per clip, `audible_in_window` its labels, `annotated` whether its
  full mask knows every species (the benchmark scores only those clips).

  Files are split across processes (none dropped); every batch has the full
  per-process size, the last one padded with `mask == 0` windows.
  """
  process_index, process_count = process_share(process_index, process_count)
  split = tfds.even_splits(split, n=process_count,
                           drop_remainder=False)[process_index]
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          read_config=tfds.ReadConfig(skip_prefetch=True))
  num_classes = builder.info.features["label"].num_classes

  def windows(example):
    starts, left = eval_layout(tf.shape(example["audio"])[0], config)
    n = tf.shape(starts)[0]
    out = {k: tf.repeat(v[None], n, axis=0)
           for k, v in _features(example, num_classes).items()}
    out["waveform"] = cut_windows(example["audio"], starts, left, config)
    out["start_frame"] = starts
    out["left_pad_frames"] = tf.repeat(left, n)
    out["mask"] = tf.ones([n], tf.bool)
    out["audible_in_window"] = _audible_in_windows(example, starts - left,
                                                   config, num_classes)
    out["annotated"] = tf.ones([n], tf.bool)
    return tf.data.Dataset.from_tensor_slices(out)

  def clip_window(example):
    out = _features(example, num_classes)
    out["image"] = clip_image(example["image"], config.frontend)
    out["mask"] = tf.constant(True)
    out["audible_in_window"] = example["labels"]
    out["annotated"] = tf.reduce_all(example[l48.MASK_OF_MODE["full"]] > 0)
    return out

  batch = global_batch_size // process_count
  ds = (ds.map(clip_window) if is_image_dataset(builder)
        else ds.flat_map(windows)).batch(batch)

  def pad_batch(b):
    missing = batch - tf.shape(b["mask"])[0]
    return {k: tf.pad(v, [[0, missing]] + [[0, 0]] * (len(v.shape) - 1))
            for k, v in b.items()}

  return ds.map(pad_batch).prefetch(tf.data.AUTOTUNE)


def shard_batch(batch: dict, sharding: jax.sharding.Sharding) -> dict:
  """Numpy per-process batch -> global `jax.Array`s split over the mesh."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      batch)
