"""Observed targets and masks of known entries for multi-label training.

Each iNatSounds recording names one species, yet others call in it too. The
Merlin L48 study ("Merlin L48 Spectrogram Dataset", NeurIPS 2025,
arXiv:2511.00252: target-only, geo-prior and checklist-prior modes) trains
from such labels with a mask of which entries of the label vector are
known. A mode, by name in
`config.label_mode`, says which are known:

- `target_only`: only the single positive. Where the data labels the
  recording (iNatSounds, the paper's protocol) it is positive in every
  crop, one where the species is silent included; L48 labels clips, and
  its target is positive only in the clips where it was annotated (below).
- `geo`: also species outside the recording's range (by `config.geo_prior`:
  the synthetic true ranges or a trained range model, below
  `config.geo_threshold`) as known negatives; recordings without a location
  gain none.
- `checklist`: also species absent from the recordist's checklist as known
  negatives (the synthetic corpus's checklists; they omit some callers, so
  a few of these negatives are wrong, as in the field).
- `full`: every entry known, positive exactly for the species calling in
  the training window (the strong labels' events overlapping it): the
  upper bound, as the L48 study's full labels are per clip. A window in
  which the recording's own species is silent has it as a known negative.

The recording's species is always known, and positive in every mode but
`full`, whose targets are the truth. `LabelObserver(batch)` turns a
host batch (`label`, `latitude`, `longitude`, `audible_in_window`,
`checklist`) into `targets` and `label_mask`, both float32 `[batch,
classes]`; the losses in `losses.py` read them.

Data that carries each mode's mask per example (the L48 clips,
`data.label_sources(...)["label_masks"]`) is read as it is: the mask is the
mode's feature (`l48.MASK_OF_MODE`), the targets the clip's labels where
known. There the target species is known only in clips where it is present
(as in the benchmark), and clips with nothing known are not trained on
(`data_sources`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow_datasets as tfds

from inatsounds_jax import data
from inatsounds_jax import l48
from inatsounds_jax import registry
from inatsounds_jax.geo import prior as prior_lib

# (batch, one-hot positives, observer) -> (targets, mask) before the positive
# is forced known.
_Observe = Callable[[dict, np.ndarray, "LabelObserver"],
                    tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class LabelMode:
  """How a mode fills targets and mask; `needs` what the data must have."""
  observe: _Observe
  needs: tuple[str, ...] = ()


LABEL_MODES: registry.Registry[LabelMode] = registry.Registry("label_mode")

# What each need is and where to get it, for the error message.
_WHERE = {
    "geo_prior": "a geographic prior: set geo_prior to 'synthetic_truth' "
                 "(synthetic corpus) or to a range-model workdir "
                 "(configs/sinr.py trains one)",
    "checklists": "per-recording checklists, which the synthetic corpus "
                  "(strong_labels.json, dataset='synthetic') and L48 "
                  "(dataset='l48') have",
    "strong_labels": "strong labels (every audible species), which only the "
                     "synthetic corpus has (strong_labels.json, "
                     "dataset='synthetic')",
}


def _target_only(batch, positives, observer):
  del batch, observer
  return positives, positives


def _geo(batch, positives, observer):
  absent = ~observer.prior.mask(batch["latitude"], batch["longitude"],
                                observer.geo_threshold)
  return positives, np.maximum(positives, absent)


def _checklist(batch, positives, observer):
  del observer
  return positives, np.maximum(positives, 1 - batch["checklist"])


def _full(batch, positives, observer):
  del observer
  return batch["audible_in_window"], np.ones_like(positives)


LABEL_MODES.add("target_only", LabelMode(_target_only))
LABEL_MODES.add("geo", LabelMode(_geo, needs=("geo_prior",)))
LABEL_MODES.add("checklist", LabelMode(_checklist, needs=("checklists",)))
LABEL_MODES.add("full", LabelMode(_full, needs=("strong_labels",)))


@dataclasses.dataclass(frozen=True)
class LabelObserver:
  """Targets and masks for host batches, in one mode."""
  mode: LabelMode
  num_classes: int
  prior: prior_lib.GeoPrior | None = None
  geo_threshold: float = 0.1
  # The batch feature holding this mode's mask, for data that carries one
  # (L48); empty: derived from the label and the mode's sources.
  mask_feature: str = ""

  def __call__(self, batch: dict) -> dict[str, np.ndarray]:
    """`{"targets", "label_mask"}` float32 `[batch, classes]` for `batch`."""
    if self.mask_feature:
      mask = np.asarray(batch[self.mask_feature], np.float32)
      return {"targets": np.asarray(batch["labels"], np.float32) * mask,
              "label_mask": mask}
    label = np.asarray(batch["label"])
    positives = np.zeros((len(label), self.num_classes), np.float32)
    # -1: no labelled species (a soundscape chunk without a call, an
    # unlabelled folder's window): no positive, nothing known from it.
    labelled = label >= 0
    positives[np.flatnonzero(labelled), label[labelled]] = 1
    targets, mask = self.mode.observe(
        {k: np.asarray(v) for k, v in batch.items()}, positives, self)
    return {"targets": np.asarray(targets, np.float32),
            "label_mask": np.maximum(np.asarray(mask, np.float32),
                                     positives)}


def from_config(config, builder: tfds.core.DatasetBuilder,
                label_names: Sequence[str], priors: prior_lib.Priors
                ) -> LabelObserver:
  """The observer for `config.label_mode` over `builder`'s records (the
  `geo` mode takes `config.geo_prior` from the run's `priors`).

  Raises:
    registry.ConfigError: unknown mode, or the data lacks what it needs
      (named, with where to get it).
  """
  name = config.get("label_mode", "target_only")
  mode = LABEL_MODES.get(name)
  have = data.label_sources(builder)
  if have["label_masks"]:
    return LabelObserver(mode, len(label_names),
                         mask_feature=l48.MASK_OF_MODE[name])
  have["geo_prior"] = bool(config.get("geo_prior"))
  missing = [n for n in mode.needs if not have[n]]
  if missing:
    raise registry.ConfigError(
        f"label_mode {name!r} needs " + "; and ".join(
            _WHERE[n] for n in missing)
        + f"; the dataset in {builder.data_path} has none")
  prior = priors(config.geo_prior) if "geo_prior" in mode.needs else None
  return LabelObserver(mode, len(label_names), prior,
                       float(config.get("geo_threshold", 0.1)))
