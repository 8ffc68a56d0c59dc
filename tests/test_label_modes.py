"""Label modes: which entries of the label vector are known."""

import json
import types

import ml_collections
import numpy as np
import pytest

from inatsounds_jax import l48
from inatsounds_jax import label_modes
from inatsounds_jax import registry
from inatsounds_jax.geo import prior as prior_lib

# Three examples, four classes; example 2 has no location.
BATCH = {
    "label": np.array([1, 0, 2]),
    "latitude": np.array([10.0, -5.0, np.nan]),
    "longitude": np.array([20.0, 30.0, np.nan]),
    "audible_in_window": np.array([[0, 1, 0, 1], [1, 0, 0, 0], [0, 1, 1, 0]],
                                  np.uint8),
    "checklist": np.array([[0, 1, 1, 0], [1, 0, 0, 1], [0, 0, 0, 0]],
                          np.uint8),
}
NAMES = ("a", "b", "c", "d")


def observer(mode, prior=None):
  return label_modes.LabelObserver(label_modes.LABEL_MODES.get(mode), 4,
                                   prior, 0.5)


def test_target_only_knows_only_the_positive():
  out = observer("target_only")(BATCH)
  np.testing.assert_array_equal(out["targets"], np.eye(4)[[1, 0, 2]])
  np.testing.assert_array_equal(out["label_mask"], np.eye(4)[[1, 0, 2]])
  assert out["targets"].dtype == out["label_mask"].dtype == np.float32


def test_an_unlabelled_window_has_no_positive_and_full_reads_its_calls():
  # Label -1 (a soundscape chunk with no labelled call): no positive, and
  # never the last class by negative indexing.
  batch = dict(BATCH, label=np.array([1, -1, 2]))
  out = observer("target_only")(batch)
  np.testing.assert_array_equal(out["targets"][1], np.zeros(4))
  np.testing.assert_array_equal(out["label_mask"][1], np.zeros(4))
  full = observer("full")(batch)
  np.testing.assert_array_equal(full["targets"][1],
                                BATCH["audible_in_window"][1])


def test_target_only_follows_the_dataset_where_the_target_is_silent():
  # Two crops of recordings naming b; b calls only in the first, d in the
  # second. iNatSounds (the paper's protocol): b is positive in both.
  batch = {"label": np.array([1, 1]),
           "audible_in_window": np.array([[0, 1, 0, 0], [0, 0, 0, 1]])}
  recording = observer("target_only")(batch)
  np.testing.assert_array_equal(recording["targets"], np.eye(4)[[1, 1]])
  np.testing.assert_array_equal(recording["label_mask"], np.eye(4)[[1, 1]])
  # L48: the same crops as clips of one asset, their masks as the L48 path
  # marks them (b and d possible and observed there).
  asset = l48.Asset(7, "train", "b", ("b", "d"), ("b", "d"))
  clips = [l48.clip_labels(l48.Clip(i, 7, i, "", present, ()), asset, NAMES)
           for i, present in enumerate((("b",), ("d",)))]
  batch.update({f"mask_{k}": np.stack([c[k] for c in clips])
                for k in ("target", "geo")},
               labels=np.stack([c["labels"] for c in clips]))

  def clip_observer(mode):
    return label_modes.LabelObserver(label_modes.LABEL_MODES.get(mode), 4,
                                     mask_feature=l48.MASK_OF_MODE[mode])
  # Target-only: b positive only where annotated; the silent clip knows
  # nothing (and is not trained on).
  out = clip_observer("target_only")(batch)
  np.testing.assert_array_equal(out["targets"], [[0, 1, 0, 0], [0] * 4])
  np.testing.assert_array_equal(out["label_mask"], [[0, 1, 0, 0], [0] * 4])
  # Geo: the silent clip keeps its range negatives; b is unknown there.
  out = clip_observer("geo")(batch)
  np.testing.assert_array_equal(out["targets"], [[0, 1, 0, 0], [0] * 4])
  np.testing.assert_array_equal(out["label_mask"], [[1, 1, 1, 0],
                                                    [1, 0, 1, 0]])


def test_data_with_label_masks_reads_the_modes_mask(tmp_path):
  builder = fake_builder(tmp_path, label_masks=True)
  for mode, feature in (("target_only", "mask_target"), ("geo", "mask_geo"),
                        ("checklist", "mask_checklist"), ("full", "mask_full")):
    made = label_modes.from_config(config(label_mode=mode), builder, NAMES,
                                   prior_lib.Priors(NAMES))
    assert made.mask_feature == feature
  made = label_modes.from_config(config(), fake_builder(tmp_path), NAMES,
                                 prior_lib.Priors(NAMES))
  assert made.mask_feature == ""


def test_geo_makes_out_of_range_species_known_negatives():
  # Presence: species d lives only north of the equator, c nowhere; the
  # range model does not cover a.
  def presence(lat, lon):
    del lon
    return np.stack([np.ones_like(lat), np.zeros_like(lat),
                     (lat > 0).astype(float)], axis=1)
  prior = prior_lib.GeoPrior(presence, ["b", "c", "d"], NAMES)
  out = observer("geo", prior)(BATCH)
  np.testing.assert_array_equal(out["targets"], np.eye(4)[[1, 0, 2]])
  np.testing.assert_array_equal(out["label_mask"], [
      [0, 1, 1, 0],   # c absent; d present at lat 10; a not covered.
      [1, 0, 1, 1],   # c and d absent at lat -5.
      [0, 0, 1, 0],   # No location: only the positive (c, kept though
  ])                  # the prior says absent everywhere).


def test_checklist_makes_unlisted_species_known_negatives():
  out = observer("checklist")(BATCH)
  np.testing.assert_array_equal(out["targets"], np.eye(4)[[1, 0, 2]])
  np.testing.assert_array_equal(out["label_mask"], [
      [1, 1, 0, 1], [1, 1, 1, 0], [1, 1, 1, 1]])


def test_full_knows_everything_and_every_species_calling_is_positive():
  out = observer("full")(BATCH)
  np.testing.assert_array_equal(out["targets"], [
      [0, 1, 0, 1], [1, 0, 0, 0], [0, 1, 1, 0]])
  np.testing.assert_array_equal(out["label_mask"], np.ones((3, 4)))


def test_full_makes_the_named_species_negative_where_it_is_silent():
  # Example 0 names b, but only d calls in its window.
  silent = dict(BATCH, audible_in_window=np.array(
      [[0, 0, 0, 1], [1, 0, 0, 0], [0, 1, 1, 0]], np.uint8))
  out = observer("full")(silent)
  np.testing.assert_array_equal(out["targets"], silent["audible_in_window"])
  np.testing.assert_array_equal(out["label_mask"], np.ones((3, 4)))


def fake_builder(tmp_path, **sources):
  with open(tmp_path / "label_sources.json", "w") as f:
    json.dump(sources, f)
  return types.SimpleNamespace(data_path=tmp_path)


def config(**fields):
  c = ml_collections.ConfigDict({"label_mode": "target_only",
                                 "geo_prior": "", "geo_threshold": 0.1})
  c.update(fields)
  return c


@pytest.mark.parametrize("mode,needs", [
    ("checklist", "checklists"), ("full", "strong labels"),
    ("geo", "geo_prior to 'synthetic_truth'")])
def test_a_mode_names_what_the_data_lacks_and_where_to_get_it(
    tmp_path, mode, needs):
  builder = fake_builder(tmp_path, strong_labels=False, checklists=False)
  with pytest.raises(registry.ConfigError, match=needs):
    label_modes.from_config(config(label_mode=mode), builder, NAMES,
                            prior_lib.Priors(NAMES))


def test_an_unknown_mode_lists_the_choices(tmp_path):
  with pytest.raises(registry.ConfigError,
                     match=r"'targets_only'.*checklist.*full.*geo"):
    label_modes.from_config(config(label_mode="targets_only"),
                            fake_builder(tmp_path), NAMES,
                            prior_lib.Priors(NAMES))


def test_modes_with_their_data_are_built(tmp_path):
  builder = fake_builder(tmp_path, strong_labels=True, checklists=True)
  for mode in ("target_only", "checklist", "full"):
    observer = label_modes.from_config(config(label_mode=mode), builder,
                                       NAMES, prior_lib.Priors(NAMES))
    assert observer.mode is label_modes.LABEL_MODES.get(mode)
