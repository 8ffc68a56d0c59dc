"""Custom classifiers (`custom_classifier.py`), linear and finetune: class
folders of synthetic recordings, an initialised placeholder base (its
embedding, the time-averaged mel spectrum, separates the corpus's
species)."""

import importlib.util
import json
import os
import shutil
import types

import jax
import numpy as np
import pytest

from inatsounds_jax import custom_classifier
from inatsounds_jax import embedding_store
from inatsounds_jax import export
from inatsounds_jax import inference
from inatsounds_jax import metrics
from inatsounds_jax import trained as trained_lib

import model_workdir


def _class_folders(corpus: str, split: str, out, species: range,
                   negatives: int | None = None):
  """Class folders named BirdNET's way from the corpus's category folders
  (`<id>_<taxonomy>_<Genus>_<species>`), plus `noise` from another
  species' recordings."""
  categories = sorted(os.listdir(os.path.join(corpus, split)))
  for i in species:
    genus, epithet = categories[i].split("_")[-2:]
    shutil.copytree(os.path.join(corpus, split, categories[i]),
                    out / f"{genus} {epithet}_Common {i}")
  if negatives is not None:
    shutil.copytree(os.path.join(corpus, split, categories[negatives]),
                    out / "Noise")
  return out


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  return model_workdir.make_workdir(str(tmp_path_factory.mktemp("base")))


@pytest.fixture(scope="module")
def folders(small_corpus, tmp_path_factory):
  root = tmp_path_factory.mktemp("folders")
  train = _class_folders(small_corpus, "train", root / "train", range(3),
                         negatives=6)
  held_out = _class_folders(small_corpus, "val", root / "val", range(3))
  return train, held_out


@pytest.fixture(scope="module")
def custom(base, folders, tmp_path_factory):
  train, _ = folders
  out = tmp_path_factory.mktemp("custom")
  settings = custom_classifier.Settings(
      train=str(train), base=base, output=str(out / "bundle"),
      validation_fraction=0.25)
  lines = []
  report = custom_classifier.train_linear(settings, log=lines.append)
  return settings, report, lines


def test_linear_bundle_predicts_its_classes_above_chance_on_held_out_files(
    custom, folders):
  settings, _, _ = custom
  _, held_out = folders
  predictor = inference.Predictor(settings.output)
  names = sorted(os.listdir(held_out))
  assert [row["species"] for row in predictor.labels] == [
      custom_classifier.parse_label(n)["species"] for n in names]
  scores, positives = [], []
  for k, name in enumerate(names):
    for path, _ in inference.find_audio(str(held_out / name)):
      table = predictor.predict_file(path)
      scores.append(table.probabilities)
      positives.append(np.broadcast_to(np.arange(len(names)) == k,
                                       table.probabilities.shape))
  scores, positives = np.concatenate(scores), np.concatenate(positives)
  ap, _ = metrics.per_class_ap_and_best_f1(scores, positives)
  chance = positives.mean(axis=0)
  assert np.all(ap > chance + 0.2), (ap, chance)
  assert predictor.activation == "sigmoid"


def test_bundle_loads_like_any_other_and_carries_its_report(custom):
  settings, report, _ = custom
  model, variables = export.load(settings.output)
  assert model.num_classes == 3
  description = trained_lib.read_description(settings.output)
  assert description["output"] == "multilabel"
  recorded = description["custom_training"]
  assert recorded["settings"]["train"] == settings.train
  assert [row["species"] for row in recorded["classes"]][-1] == "(negatives)"
  assert all(row["train_recordings"] >= 1 for row in recorded["classes"])
  assert recorded["classes"][-1]["train_windows"] > 0  # Noise trained.
  thresholds = (open(os.path.join(settings.work_folder,
                                  custom_classifier.THRESHOLDS_FILE))
                .read().splitlines())
  assert thresholds[0].startswith("species,threshold,")
  assert len(thresholds) == 4
  assert report == json.load(open(os.path.join(
      settings.work_folder, custom_classifier.REPORT_FILE)))


def test_a_second_run_reuses_the_stored_embeddings(custom, folders):
  settings, _, _ = custom
  train, _ = folders
  store_folder = os.path.join(settings.work_folder,
                              custom_classifier.STORE_DIR)
  shards_before = embedding_store.EmbeddingStore.open(store_folder).num_shards
  lines = []
  custom_classifier.train_linear(
      custom_classifier.Settings(**dict(vars(settings), overwrite=True)),
      log=lines.append)
  assert any(line.startswith("embedding 0 of") for line in lines), lines
  after = embedding_store.EmbeddingStore.open(store_folder)
  assert after.num_shards == shards_before


def test_bad_folders_are_reported_and_the_rest_trains(base, folders,
                                                      tmp_path):
  train, _ = folders
  root = tmp_path / "train"
  shutil.copytree(train, root)
  (root / "Empty species_Nothing").mkdir()
  lonely = root / "Lonely species"
  lonely.mkdir()
  first = sorted((root / "Noise").iterdir())[0]
  shutil.copy(first, lonely / "one.wav")
  broken = next(p for p in sorted(root.iterdir()) if "Common 0" in p.name)
  (broken / "broken.wav").write_bytes(b"RIFF not audio at all")
  lines = []
  report = custom_classifier.train_linear(custom_classifier.Settings(
      train=str(root), base=base, output=str(tmp_path / "bundle")),
      log=lines.append)
  text = "\n".join(lines)
  assert "Empty species_Nothing: no audio files; the class is left out" in (
      text)
  assert "one recording of 'Lonely species'" in text
  assert f"skipped {broken / 'broken.wav'}:" in text
  assert [p["file"] for p in report["problems"]] == [
      str(broken / "broken.wav")]
  labels = trained_lib.load(str(tmp_path / "bundle")).labels
  species = [row["species"] for row in labels]
  assert "Lonely species" in species and len(species) == 4


def test_a_new_label_naming_a_kept_base_class_is_refused(base, folders,
                                                         tmp_path):
  train, _ = folders
  root = tmp_path / "train"
  shutil.copytree(train, root)
  # model_workdir's labels are "Genus species<i>", common name "Bird <i>".
  os.rename(root / "Noise", root / "Other species_Bird 2")
  with pytest.raises(custom_classifier.CustomError,
                     match=r"Other species_Bird 2: 'Bird 2' is the base "
                     r"model's class 'Genus species2'"):
    custom_classifier.train_linear(custom_classifier.Settings(
        train=str(root), base=base, output=str(tmp_path / "bundle"),
        keep_base_classes=True))
  assert not os.path.exists(tmp_path / "bundle")
  assert not os.path.exists(tmp_path / "bundle.work")


def test_kept_base_classes_come_first_and_keep_their_head(base, folders,
                                                          tmp_path):
  train, _ = folders
  settings = custom_classifier.Settings(
      train=str(train), base=base, output=str(tmp_path / "bundle"),
      keep_base_classes=True, steps=50)
  custom_classifier.train_linear(settings, log=lambda line: None)
  before, after = trained_lib.load(base), trained_lib.load(settings.output)
  assert [row["species"] for row in after.labels[:6]] == [
      row["species"] for row in before.labels]
  assert len(after.labels) == 9 and not after.multilabel
  noise = np.random.default_rng(1).integers(
      -3000, 3000, (2, before.model.window_samples)).astype(np.int16)
  logits_before = before.model.apply(before.variables, noise)
  logits_after = after.model.apply(after.variables, noise)
  np.testing.assert_allclose(logits_after[:, :6], logits_before, rtol=1e-5,
                             atol=1e-5)


def test_birdnet_folder_names_give_species_and_common_name():
  assert custom_classifier.parse_label("Turdus merula_Eurasian Blackbird") == {
      "species": "Turdus merula", "common_name": "Eurasian Blackbird"}
  assert custom_classifier.parse_label("dog bark") == {
      "species": "dog bark", "common_name": ""}


def test_a_recording_in_two_class_folders_carries_both_labels(folders,
                                                              tmp_path):
  train, _ = folders
  root = tmp_path / "train"
  shutil.copytree(train, root)
  names = sorted(p.name for p in root.iterdir() if p.name != "Noise")
  shared = sorted((root / names[0]).iterdir())[0]
  shutil.copy(shared, root / names[1] / "copy.wav")
  read = custom_classifier.read_class_folders(str(root))
  digest = embedding_store.content_digest(str(shared))
  assert read.classes[digest] == {0, 1}
  assert read.count(None) == len(os.listdir(root / "Noise"))


def test_a_base_without_embeddings_is_refused(base):
  trained = trained_lib.load(base)
  not_a_classifier = trained_lib.TrainedModel(
      model=object(), variables={}, config=trained.config, labels=[],
      multilabel=False, step=0)
  with pytest.raises(custom_classifier.CustomError,
                     match="MAE: a object gives no embeddings"):
    custom_classifier.head_paths(not_a_classifier, "MAE")


@pytest.mark.parametrize("fields, message", [
    ({"loss": "softmax_ce"}, "--loss=softmax_ce is single-label"),
    ({"keep_base_classes": True},
     "--keep_base_classes applies to --mode=linear"),
    ({"validation_fraction": 0.0}, "give --validation folders"),
])
def test_finetune_refuses_what_it_cannot_do_before_any_work(
    base, folders, tmp_path, fields, message):
  train, _ = folders
  settings = custom_classifier.Settings(
      train=str(train), base=base, output=str(tmp_path / "bundle"),
      mode="finetune", **fields)
  with pytest.raises(custom_classifier.CustomError, match=message):
    custom_classifier.train_finetune(settings, log=lambda line: None)
  assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_finetune_trains_the_whole_model_into_a_bundle_that_predicts(
    base, folders, tmp_path):
  train, held_out = folders
  settings = custom_classifier.Settings(
      train=str(train), base=base, output=str(tmp_path / "bundle"),
      validation=str(held_out), mode="finetune", epochs=6.0,
      finetune_learning_rate=0.03, chunk_seconds=3.0)
  report = custom_classifier.train_finetune(settings, log=lambda line: None)
  assert report["mode"] == "finetune" and report["finetune"]["step"] > 0
  tuned = trained_lib.load(settings.output)
  assert [row["species"] for row in tuned.labels] == [
      row["species"] for row in report["classes"][:-1]]
  assert tuned.multilabel
  # The backbone moved from the base's weights: the run trained it.
  base_model = trained_lib.load(base)
  moved = [not np.allclose(a, b) for a, b in zip(
      jax.tree.leaves(base_model.variables["params"]),
      jax.tree.leaves(tuned.variables["params"]))
      if np.shape(a) == np.shape(b)]
  assert any(moved)
  # Validated on the held-out folders' windows, above chance.
  assert report["validation"]["classes_validated"] == 3
  assert report["validation"]["class_mean_ap"] > 0.5
  assert os.path.exists(os.path.join(settings.work_folder,
                                     custom_classifier.THRESHOLDS_FILE))


def test_an_output_folder_holding_other_files_is_refused_by_its_flag(
    base, folders, tmp_path):
  train, _ = folders
  (tmp_path / "notes.txt").write_text("mine")
  settings = custom_classifier.Settings(train=str(train), base=base,
                                        output=str(tmp_path))
  with pytest.raises(export.TargetError,
                     match=rf"--output={tmp_path} holds notes.txt"):
    custom_classifier.train_linear(settings, log=lambda line: None)
  assert os.listdir(tmp_path) == ["notes.txt"]


def test_custom_heads_stack_on_one_backbone(custom, small_corpus, tmp_path):
  settings, _, _ = custom
  more = _class_folders(small_corpus, "train", tmp_path / "more", range(3, 5))
  stacked = custom_classifier.Settings(
      train=str(more), base=settings.output, output=str(tmp_path / "both"),
      keep_base_classes=True, validation_fraction=0.25)
  custom_classifier.train_linear(stacked, log=lambda line: None)
  first = inference.Predictor(settings.output)
  both = inference.Predictor(stacked.output)
  assert both.labels[:3] == first.labels and len(both.labels) == 5
  path = inference.find_audio(str(more))[0][0]
  np.testing.assert_allclose(both.predict_file(path).probabilities[:, :3],
                             first.predict_file(path).probabilities,
                             rtol=1e-5, atol=1e-6)


def test_finetune_runs_the_base_recipe_without_its_data_bound_settings(
    tmp_path):
  # The quickstart's recipe trains a range model first (a ConfigDict job):
  # fine-tuning on class folders has no locations, so it is dropped.
  spec = importlib.util.spec_from_file_location(
      "quickstart", os.path.join(os.path.dirname(__file__), os.pardir,
                                 "configs", "quickstart.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  recipe = module.get_config()
  recipe.update(loss="ll_r", train_window_filter="keep.csv")
  recipe.loss_options = {"delta": 0.1}
  recipe.asset_reg.weight = 1.0
  base = types.SimpleNamespace(config=recipe)
  settings = custom_classifier.Settings(train="T", base="B",
                                        output=str(tmp_path / "o"),
                                        mode="finetune")
  c = custom_classifier._finetune_config(  # pylint: disable=protected-access
      settings, base, {"audio": "A"}, {"audio": "V"},
      [{"species": "X y", "common_name": ""}])
  assert c.range_model is None and c.geo_prior == ""
  # Nothing bound to the base's data or loss carries over.
  assert (c.loss, dict(c.loss_options), c.train_window_filter,
          c.asset_reg.weight) == ("assume_negative_bce", {}, "", 0.0)
  assert (c.dataset, c.label_mode, c.init_checkpoint) == ("soundscapes",
                                                          "full", "B")
  assert c.evals.validation.soundscapes.audio == "V"
  assert c.model == "mobilenet_v3_small"  # The base's backbone.
