"""The L48 layout reader and builder, on a fake in the authors' layout."""

import dataclasses
import json
import os
import shutil

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from inatsounds_jax import data
from inatsounds_jax import frontend
from inatsounds_jax import input_pipeline
from inatsounds_jax import l48
from inatsounds_jax import label_modes
from inatsounds_jax import registry
from inatsounds_jax import train
from inatsounds_jax.objectives import classification
from inatsounds_jax.geo import prior as prior_lib
from inatsounds_jax.models import classifier
from inatsounds_jax.models import image as image_lib
from tests import l48_fake
from tests.test_train import load_config


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("l48"))
  return root, l48_fake.write(root)


@pytest.fixture(scope="module")
def built(fake, tmp_path_factory):
  return data.prepare("l48", data_dir=str(tmp_path_factory.mktemp("tfds")),
                      manual_dir=fake[0])


def _examples(builder, split):
  """The split's examples in clips.json order (`example_index`)."""
  return sorted(tfds.as_numpy(builder.as_dataset(split=split)),
                key=lambda ex: int(ex["example_index"]))


def _copy(fake, tmp_path):
  root = str(tmp_path / "copy")
  shutil.copytree(fake[0], root)
  return root


def _edit_json(root, name, edit):
  path = os.path.join(root, name)
  with open(path) as f:
    records = json.load(f)
  edit(records)
  with open(path, "w") as f:
    json.dump(records, f)


def test_builder_splits_clips_by_asset_as_the_benchmark_does(fake, built):
  _, written = fake
  splits = built.info.splits
  # 4 species: 3 train assets (one of them validation) and 1 test asset
  # each, 3 clips per asset.
  assert {s: splits[s].num_examples for s in splits} == {
      "train": 24, "validation": 12, "test": 12}
  assert built.info.features["label"].names == list(l48_fake.SPECIES)
  train = _examples(built, "train")
  expected = [c for c in written["clips"]
              if c["asset_id"] < 8000
              and c["asset_id"] not in written["validation"]]
  # clips.json order within the split: example_index is the row of the
  # benchmark's matrices.
  assert [int(ex["clip_id"]) for ex in train] == [c["id"] for c in expected]
  assert [int(ex["example_index"]) for ex in train] == list(range(24))
  assert [int(ex["recording_id"]) for ex in train] == [
      c["asset_id"] for c in expected]
  assert [ex["file_path"].decode() for ex in train] == [
      c["file_path"] for c in expected]
  first = train[0]
  assert first["image"].shape == (l48_fake.HEIGHT, l48_fake.WIDTH, 3)
  assert first["image"].dtype == np.uint8
  # Clip of asset 1 (amerob), the target drawn in the top band.
  assert first["image"][:3].mean() > 150 and first["image"][-3:].mean() < 100
  assets = sorted({c["asset_id"] for c in expected})
  assert [int(ex["asset_index"]) for ex in train] == [
      assets.index(c["asset_id"]) for c in expected]


def test_clip_labels_and_masks_match_the_format_script(built):
  train = _examples(built, "train")
  by_order = {int(ex["clip_order"]): ex for ex in train
              if int(ex["recording_id"]) == 1}  # amerob; blujay off range.
  expected = {
      # target alone, fully labelled
      0: {"labels": [1, 0, 0, 0], "mask_full": [1, 1, 1, 1],
          "mask_target": [1, 0, 0, 0], "mask_geo": [1, 0, 1, 0],
          "mask_checklist": [1, 0, 1, 1]},
      # target absent, everything else unknown: the target entry is unknown
      # too, so target-only has nothing known
      1: {"labels": [0, 0, 0, 0], "mask_full": [0, 0, 0, 0],
          "mask_target": [0, 0, 0, 0], "mask_geo": [0, 0, 1, 0],
          "mask_checklist": [0, 0, 1, 1]},
      # target and a background species (norcar, on the checklist)
      2: {"labels": [1, 1, 0, 0], "mask_full": [1, 1, 1, 1],
          "mask_target": [1, 0, 0, 0], "mask_geo": [1, 0, 1, 0],
          "mask_checklist": [1, 0, 1, 1]},
  }
  for order, fields in expected.items():
    ex = by_order[order]
    assert int(ex["label"]) == 0
    for name, value in fields.items():
      assert ex[name].dtype == np.uint8
      np.testing.assert_array_equal(ex[name], value, err_msg=f"{order} {name}")


def test_builder_writes_the_side_files_the_loop_reads(built):
  sources = data.label_sources(built)
  assert sources["label_masks"] and not sources["strong_labels"]
  assert sources["example_index_size"] == {"train": 24, "validation": 12,
                                           "test": 12}
  assert sources["asset_index_size"] == {"train": 8, "validation": 4,
                                         "test": 4}
  # Fully annotated train clips hold 1 or 2 positives (clips 0 and 2).
  assert sources["mean_audible_species"]["train"] == pytest.approx(1.5)
  table = data.class_table(built)
  assert [r["species"] for r in table] == list(l48_fake.SPECIES)
  assert table[1]["common_name"] == "Common norcar"
  counts = data.label_counts(built)
  assert counts["train"] == [6, 6, 6, 6]


def test_missing_image_stops_the_build_naming_the_file(fake, tmp_path):
  root = _copy(fake, tmp_path)
  os.remove(os.path.join(root, "images", "8010", "2.jpg"))
  with pytest.raises(l48.L48Error, match=r"images/8010/2.jpg: missing "
                     r"\(the image of clip \d+ in clips.json\)"):
    data.prepare("l48", data_dir=str(tmp_path / "tfds"), manual_dir=root)


def test_building_without_the_folder_says_what_to_download(tmp_path):
  with pytest.raises(l48.L48Error, match=r"dataset 'l48' needs manual_dir "
                     r"(.|\n)*ml48s.tar.gz(.|\n)*val_split.npy"):
    data.prepare("l48", data_dir=str(tmp_path / "tfds"),
                 manual_dir=str(tmp_path / "absent"))


def test_unreadable_image_is_named(fake, tmp_path):
  root = _copy(fake, tmp_path)
  path = os.path.join(root, "images", "1", "0.jpg")
  with open(path, "wb") as f:
    f.write(b"not an image")
  with pytest.raises(l48.L48Error, match=r"images/1/0.jpg: unreadable image"):
    l48.check_image(path, "clip 3")


@pytest.mark.parametrize("edit, message", [
    (lambda root: os.remove(os.path.join(root, "val_split.npy")),
     r"val_split.npy: missing; copy val_split.npy from the root of "
     r"github.com/cvl-umass/l48-benchmarking"),
    (lambda root: os.remove(os.path.join(root, "clips.json")),
     r"clips.json: missing"),
    (lambda root: _edit_json(root, "assets.json",
                             lambda r: r[0].update(target_species_code="xxx")),
     r"assets.json: asset 0 has target species 'xxx', which is not in "
     r"taxa.csv"),
    (lambda root: _edit_json(root, "assets.json",
                             lambda r: r[0].update(split="val")),
     r"assets.json: asset 0 has split 'val'"),
    (lambda root: _edit_json(root, "clips.json",
                             lambda r: r[0].pop("asset_id")),
     r"clips.json: clip 0 has no field 'asset_id'"),
    (lambda root: _edit_json(root, "clips.json",
                             lambda r: r[0].update(asset_id=77)),
     r"clips.json: clip 0 names asset 77, which is not in assets.json"),
    (lambda root: _edit_json(root, "clips.json",
                             lambda r: r[0].update(
                                 present_species_codes="amerob")),
     r"clips.json: clip 0 field 'present_species_codes' is 'amerob', "
     r"expected a list"),
    (lambda root: np.save(os.path.join(root, "val_split.npy"),
                          np.array([5000])),
     r"val_split.npy: asset ids \[5000\] are not in assets.json"),
])
def test_bad_metadata_is_named_with_its_problem(fake, tmp_path, edit,
                                                message):
  root = _copy(fake, tmp_path)
  edit(root)
  with pytest.raises(l48.L48Error, match=message):
    l48.read(root)


def _first_clip_labels(root, **extra_codes):
  """Labels of clips.json's first clip, and of it with `extra_codes`
  appended to its lists (`present`, `unknown`)."""
  release = l48.read(root)
  clip = release.clips[0]
  changed = dataclasses.replace(clip, **{
      k: getattr(clip, k) + tuple(v) for k, v in extra_codes.items()})
  asset = release.assets[clip.asset_id]
  return (l48.clip_labels(clip, asset, release.species_codes),
          lambda: l48.clip_labels(changed, asset, release.species_codes))


def test_present_species_outside_the_range_prior_is_an_error(fake):
  _, changed = _first_clip_labels(fake[0], present=["blujay"])
  with pytest.raises(l48.L48Error, match=r"clip 0 has present species "
                     r"outside asset 0's possible species"):
    changed()


def test_codes_outside_taxa_are_ignored_like_the_format_script(fake):
  labels, changed = _first_clip_labels(fake[0], unknown=["Unknown bird"])
  np.testing.assert_array_equal(changed()["full"], labels["full"])


def tiny_l48_config(root, data_dir, **overrides):
  c = load_config("l48", "tiny")
  c.update(manual_dir=root, data_dir=str(data_dir), **overrides)
  return c


@pytest.mark.slow
@pytest.mark.parametrize("mode,loss,asset_weight,steps_per_epoch", [
    # Target-only and full leave out the 8 clips with nothing known
    # (target absent, the rest unknown): 16 clips, 2 batches of 8.
    ("target_only", "an", 0.0, 2),
    ("full", "full_bce", 0.0, 2),
    # The checklist's negatives make every clip count: 24 clips.
    ("checklist", "em", 0.5, 3),
])
def test_tiny_l48_config_trains_in_each_label_mode(
    fake, tmp_path, mode, loss, asset_weight, steps_per_epoch):
  c = tiny_l48_config(fake[0], tmp_path / "tfds", label_mode=mode, loss=loss,
                      asset_reg={"weight": asset_weight, "rate": 0.1})
  assert train.setup(c).steps_per_epoch == steps_per_epoch
  outputs = train.train_and_evaluate(c, str(tmp_path / "work"))
  for split in ("validation", "test"):
    summary = outputs[split].summary
    # Windows are clips (3 per asset), files are assets; only the clips with
    # every label known are scored per window (2 of 3 in the fake).
    assert summary["num_files"] == 4 and summary["num_windows"] == 12
    assert summary["num_annotated_windows"] == 8
    assert 0 < outputs[split].metrics["no_prior/window_map"] <= 1
  # The test assets pooled over their clips, against their target species.
  assets = outputs["test_assets"]
  assert 0 <= assets.metrics["mean/no_prior/top1"] <= 1


def test_training_reads_one_clip_per_example_without_unlabelled_ones(built):
  size = frontend.ImageInputConfig(height=12, width=20)
  windows = input_pipeline.WindowConfig(frontend=size)
  stream = input_pipeline.train_windows(
      built, "train", windows, seed=1, num_epochs=1, process_index=0,
      process_count=1, require_known="mask_target")
  # The 8 clips without their target (nothing known in target-only) are
  # left out: an epoch is the other 16, each once.
  epoch = list(tfds.as_numpy(stream.take(16)))
  assert sorted(int(x["example_index"]) for x in epoch) == sorted(
      int(ex["example_index"]) for ex in _examples(built, "train")
      if ex["mask_target"].any())
  assert all(x["image"].shape == (12, 20, 3) and x["image"].dtype == np.uint8
             for x in epoch)
  assert all(x["mask_target"].any() for x in epoch)


def test_evaluation_gives_each_clip_as_a_window_of_its_asset(built):
  windows = input_pipeline.WindowConfig(
      frontend=frontend.ImageInputConfig(height=l48_fake.HEIGHT,
                                         width=l48_fake.WIDTH))
  batches = list(tfds.as_numpy(input_pipeline.eval_dataset(
      built, "test", 5, windows, process_index=0, process_count=1)))
  rows = {k: np.concatenate([b[k] for b in batches]) for k in
          ("mask", "recording_id", "annotated", "audible_in_window",
           "image")}
  valid = rows["mask"]
  assert valid.sum() == 12 and len(valid) == 15  # Padded to whole batches.
  assert sorted(set(rows["recording_id"][valid])) == [8000, 8010, 8020, 8030]
  # Clips with the target absent (all unknown) are not annotated.
  assert rows["annotated"][valid].sum() == 8
  by_clip = {int(ex["clip_id"]): ex for ex in _examples(built, "test")}
  assert sorted(rows["audible_in_window"][valid].sum(axis=1)) == sorted(
      int(ex["labels"].sum()) for ex in by_clip.values())
  assert rows["image"].shape[1:] == (l48_fake.HEIGHT, l48_fake.WIDTH, 3)


def test_label_modes_read_each_clips_mask_from_the_data(built):
  names = built.info.features["label"].names
  clips = _examples(built, "train")
  batch = {k: np.stack([ex[k] for ex in clips]) for k in
           ("label", "labels", "mask_target", "mask_geo", "mask_checklist",
            "mask_full")}
  for mode, feature in (("target_only", "mask_target"), ("geo", "mask_geo"),
                        ("checklist", "mask_checklist"),
                        ("full", "mask_full")):
    observer = label_modes.from_config(
        ml_collections.ConfigDict({"label_mode": mode}), built, names,
        prior_lib.Priors(names))
    out = observer(batch)
    np.testing.assert_array_equal(out["label_mask"], batch[feature])
    # Known entries carry the clip's labels; unknown ones are 0 (what the
    # assume-negative losses read).
    np.testing.assert_array_equal(out["targets"],
                                  batch["labels"] * batch[feature])


def test_image_classifier_normalises_grey_clips_like_the_benchmark():
  mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
  model = classifier.Classifier(
      backbone="placeholder", num_classes=4,
      frontend=frontend.ImageInputConfig(height=6, width=10),
      image=image_lib.ImageConfig(size=None, channels=3, mean=mean, std=std))
  grey = np.random.default_rng(0).integers(0, 256, (2, 6, 10), np.uint8)
  images = np.repeat(grey[..., None], 3, axis=-1)
  one_channel = model.apply({}, jnp.asarray(images),
                            method=classifier.Classifier.spectrogram)
  np.testing.assert_allclose(one_channel, grey)
  # torchvision's ToTensor + Normalize on the RGB clip.
  expected = (images / 255.0 - np.array(mean)) / np.array(std)
  np.testing.assert_allclose(
      image_lib.to_model_image(one_channel, model.image), expected, rtol=1e-5,
      atol=1e-5)
  assert model.example_input.shape == (6, 10, 3)
  variables = model.init({"params": np.zeros(2, np.uint32)},
                         jnp.zeros((1, 6, 10, 3), jnp.uint8))
  assert model.apply(variables, jnp.asarray(images)).shape == (2, 4)


def test_config_must_read_clips_with_the_image_frontend_no_augment_no_prior(
    built):
  c = load_config("l48", "tiny")
  classification.check_input(c, built)
  with pytest.raises(registry.ConfigError, match=r"frontend_preset "
                     r"'inatsounds' takes waveforms, and dataset 'l48' "
                     r"holds images; use frontend_preset='image'"):
    classification.check_input(ml_collections.ConfigDict(
        {**c.to_dict(), "frontend_preset": "inatsounds"}), built)
  c.augment.mixup = True
  with pytest.raises(registry.ConfigError, match="augment.mixup=False"):
    classification.check_input(c, built)
  c.augment.mixup = False
  c.geo_prior = "/runs/sinr"
  with pytest.raises(registry.ConfigError, match=r"geo_prior='/runs/sinr': "
                     r"dataset 'l48' holds spectrogram images without "
                     r"recording locations"):
    classification.check_input(c, built)
  c.geo_prior = ""
  c.location_input = "encoding"
  with pytest.raises(registry.ConfigError, match=r"location_input='encoding'"
                     r": dataset 'l48' holds spectrogram images without "
                     r"recording locations"):
    classification.check_input(c, built)
