"""One process of the multi-host test: `python -m inatsounds_jax.main` with
what this process reads and writes recorded.

    python tests/multihost_worker.py RECORD_DIR MAIN_FLAGS...

At exit it writes `RECORD_DIR/process<i>.json`: the recording ids of every
training batch, those of the windows of its last pass over each evaluation
split (unpadded), and the files it opened for writing in the workdir, by
the name they end under (a whole file is written as `<name>.partial`,
then renamed; checkpoints aside: orbax writes them through its own file
layer).
"""

import atexit
import builtins
import json
import os
import sys

from absl import app
import jax
import tensorflow_datasets as tfds

from inatsounds_jax import data_sources
from inatsounds_jax import input_pipeline
from inatsounds_jax import main
from inatsounds_jax import storage

record_dir = sys.argv.pop(1)
workdir = os.path.abspath(next(a.split("=", 1)[1] for a in sys.argv
                               if a.startswith("--workdir=")))
record = {"train": [], "eval": {}, "written": []}


class _RecordedTrainBatches:

  def __init__(self, dataset):
    self.dataset = dataset

  def __iter__(self):
    for batch in self.dataset:
      record["train"].append(batch["recording_id"].numpy().tolist())
      yield batch


def _train_dataset(*args, original=data_sources.train_dataset, **kwargs):
  return _RecordedTrainBatches(original(*args, **kwargs))


def _eval_dataset(builder, split, *args,
                  original=input_pipeline.eval_dataset, **kwargs):
  dataset = original(builder, split, *args, **kwargs)
  record["eval"][split] = [  # A second pass, for the record.
      int(x) for batch in tfds.as_numpy(dataset)
      for x in batch["recording_id"][batch["mask"]]]
  return dataset


def _open(file, mode="r", *args, original=builtins.open, **kwargs):
  if (isinstance(file, (str, os.PathLike)) and set(mode) & set("wax") and
      os.path.abspath(file).startswith(workdir)):
    record["written"].append(os.path.relpath(file, workdir).removesuffix(
        storage.PARTIAL_SUFFIX))
  return original(file, mode, *args, **kwargs)


@atexit.register
def _write_record():
  if not jax.distributed.is_initialized():
    return
  path = os.path.join(record_dir, f"process{jax.process_index()}.json")
  with builtins.open(path, "w") as f:
    json.dump(record, f)


data_sources.train_dataset = _train_dataset
input_pipeline.eval_dataset = _eval_dataset
builtins.open = _open
app.run(main.main)
