"""The recording's location as a classifier input (geo/location_input.py)."""

import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from inatsounds_jax import adaptation
from inatsounds_jax import curate
from inatsounds_jax import export
from inatsounds_jax import inference
from inatsounds_jax import predict
from inatsounds_jax import registry
from inatsounds_jax import tables
from inatsounds_jax import train
from inatsounds_jax import trained as trained_lib
from inatsounds_jax.geo import location_input
from inatsounds_jax.geo import prior as prior_lib
from inatsounds_jax.geo import range_model as range_lib
from inatsounds_jax.geo import sinr
from inatsounds_jax.models import classifier as classifier_lib
from inatsounds_jax.models import image as image_lib

import model_workdir
import test_train

NUM_CLASSES = 5


def small_classifier(**fields):
  return classifier_lib.Classifier(
      backbone="placeholder", num_classes=NUM_CLASSES,
      image=image_lib.ImageConfig(size=(16, 32), channels=1), window_frames=32,
      **fields)


def waveforms(model, n=3, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.integers(-3000, 3000, (n, model.window_samples)),
                     jnp.int16)


def half_world_prior():
  """Species 0 lives north of the equator, 1 south, 2 everywhere; the
  classifier's fourth and fifth labels are not in the range model."""
  def presence(lat, lon):
    del lon
    north = (np.asarray(lat) > 0).astype(np.float64)
    return np.stack([north, 1 - north, np.full_like(north, 0.5)], axis=1)
  return prior_lib.GeoPrior(presence, ["a", "b", "c"],
                            ["a", "b", "c", "x", "y"])


def test_encoding_head_uses_the_missing_embedding_for_unknown_locations():
  head = location_input.EncodedLocationHead(NUM_CLASSES, width=8)
  features = jnp.array([[10.0, 20.0], [-40.0, 100.0], [np.nan, 20.0],
                        [10.0, np.nan], [np.nan, np.nan]], jnp.float32)
  variables = head.init(jax.random.PRNGKey(0), features)
  params = jax.tree.map(np.asarray, variables["params"])
  params["missing_embedding"] = np.arange(8, dtype=np.float32) / 8
  out = np.asarray(head.apply({"params": params}, features))
  assert out.shape == (5, NUM_CLASSES) and np.isfinite(out).all()
  # Any NaN coordinate is an unknown location: the learned embedding and a
  # known-flag of 0 go to the head.
  w = params["head"]["kernel"]
  expected_missing = np.concatenate([params["missing_embedding"], [0.0]]) @ w
  for row in (2, 3, 4):
    np.testing.assert_allclose(out[row], expected_missing, rtol=1e-5)
  # A known location: SINR's encoding through the learned layer, flag 1.
  encoded = np.asarray(sinr.encode(jnp.array([10.0]), jnp.array([20.0])))
  embedding = np.maximum(encoded @ params["embed"]["kernel"]
                         + params["embed"]["bias"], 0)[0]
  np.testing.assert_allclose(out[0], np.concatenate([embedding, [1.0]]) @ w,
                             rtol=1e-5, atol=1e-6)
  assert not np.allclose(out[0], out[1])


def test_prior_logits_are_floored_log_probabilities_and_zero_where_unknown():
  features = location_input.LocationFeatures(
      location_input.LOCATION_INPUTS.get("prior_logits"), {"floor": 0.01},
      half_world_prior())
  out = features(np.array([45.0, -30.0, np.nan]),
                 np.array([0.0, 0.0, 5.0]))
  assert out.dtype == np.float32 and out.shape == (3, NUM_CLASSES)
  np.testing.assert_allclose(out[0], np.log([1, 0.01, 0.5, 1, 1]),
                             rtol=1e-6)
  np.testing.assert_allclose(out[1], np.log([0.01, 1, 0.5, 1, 1]),
                             rtol=1e-6)
  # No location, and labels the prior does not cover: no prior term.
  assert (out[2] == 0).all() and (out[:, 3:] == 0).all()
  # None for both coordinates: n unknown locations.
  assert (features(None, None, 4) == 0).all()


def test_prior_logits_with_missing_locations_equal_the_plain_classifier():
  plain, with_prior = small_classifier(), small_classifier(
      location_input="prior_logits")
  w = waveforms(plain)
  variables = plain.init(jax.random.PRNGKey(0), w)
  # The prior adds no parameters: one set of variables serves both.
  assert jax.tree.structure(variables) == jax.tree.structure(
      with_prior.init(jax.random.PRNGKey(0), w))
  features = location_input.LocationFeatures(
      location_input.LOCATION_INPUTS.get("prior_logits"), {},
      half_world_prior())
  unknown = features(np.full(3, np.nan), np.full(3, np.nan))
  expected = plain.apply(variables, w)
  np.testing.assert_array_equal(
      with_prior.apply(variables, w, location=unknown), expected)
  np.testing.assert_array_equal(with_prior.apply(variables, w), expected)
  # A known location moves exactly the covered species' logits by log p.
  north = features(np.full(3, 45.0), np.zeros(3))
  np.testing.assert_allclose(
      with_prior.apply(variables, w, location=north) - expected, north,
      atol=1e-5)


def test_encoding_classifier_without_locations_uses_the_missing_embedding():
  model = small_classifier(location_input="encoding",
                           location_options=(("width", 4),))
  w = waveforms(model)
  variables = model.init(jax.random.PRNGKey(0), w)
  assert variables["params"]["location_head"]["embed"]["kernel"].shape == (
      4, 4)
  unknown = np.full((3, 2), np.nan, np.float32)
  np.testing.assert_array_equal(model.apply(variables, w),
                                model.apply(variables, w, location=unknown))
  located = np.array([[45.0, 10.0], [-30.0, 150.0], [np.nan, np.nan]],
                     np.float32)
  out = np.asarray(model.apply(variables, w, location=located))
  # Only the located rows change (the head starts random, not zero).
  np.testing.assert_array_equal(out[2], model.apply(variables, w)[2])
  assert not np.allclose(out[:2], model.apply(variables, w)[:2])


def test_a_linear_probe_trains_the_location_head_with_the_head():
  model = small_classifier(location_input="encoding")
  params = model.init(jax.random.PRNGKey(0), waveforms(model))["params"]
  groups = adaptation.trained_or_frozen(params, 0, linear_probe=True)
  assert set(jax.tree.leaves(groups["location_head"])) == {
      adaptation.TRAINED}
  assert adaptation.FROZEN in jax.tree.leaves(groups["net"])
  assert adaptation.TRAINED in jax.tree.leaves(groups["net"])  # Its head.


def test_location_head_offsets_the_logits_not_the_embedding():
  plain = small_classifier()
  located = small_classifier(location_input="encoding")
  w = waveforms(plain)
  v_plain = plain.init(jax.random.PRNGKey(0), w)
  v_located = located.init(jax.random.PRNGKey(0), w)
  v_located = {**v_located, "params": {**v_located["params"],
                                       "net": v_plain["params"]["net"]},
               "batch_stats": v_plain["batch_stats"]}
  location = np.full((3, 2), 10.0, np.float32)
  want = plain.apply(v_plain, w, method=classifier_lib.Classifier.infer)
  out = located.apply(v_located, w, location=location,
                      method=classifier_lib.Classifier.infer)
  np.testing.assert_array_equal(out.embedding, want.embedding)
  # The logits carry the location head's offsets.
  np.testing.assert_array_equal(
      out.logits, located.apply(v_located, w, location=location))
  assert not np.allclose(out.logits, want.logits)


def config(**fields):
  c = ml_collections.ConfigDict({"location_input": "", "geo_prior": "",
                                 "location_options": {}})
  c.update(fields)
  return c


def no_prior(source):
  raise AssertionError(f"no prior should be loaded (asked for {source})")


def test_bad_location_input_name_lists_the_choices():
  with pytest.raises(registry.ConfigError,
                     match=r"location_input 'gps'.*encoding.*prior_logits"):
    location_input.from_config(config(location_input="gps"), no_prior)


def test_location_options_of_another_input_are_refused():
  with pytest.raises(registry.ConfigError, match=r"\['floor'\].*'encoding'"):
    location_input.from_config(
        config(location_input="encoding", location_options={"floor": 0.1}),
        no_prior)


def test_prior_logits_need_a_geo_prior():
  with pytest.raises(registry.ConfigError, match="needs geo_prior"):
    location_input.from_config(config(location_input="prior_logits"),
                               no_prior)


def test_off_by_default_and_encoding_needs_no_prior():
  assert location_input.from_config(config(), no_prior) is None
  features = location_input.from_config(config(location_input="encoding"),
                                        no_prior)
  np.testing.assert_array_equal(
      features([1.0, np.nan], [2.0, 3.0]),
      np.array([[1.0, 2.0], [np.nan, 3.0]], np.float32))


# -- Prediction and export of a model with a location input ----------------

@pytest.fixture(scope="module")
def encoding_workdir(tmp_path_factory):
  return model_workdir.make_workdir(
      str(tmp_path_factory.mktemp("encoding_model")),
      location_input="encoding")


def test_prediction_passes_the_recordings_location_to_an_encoding_model(
    encoding_workdir):
  predictor = inference.Predictor(encoding_workdir, batch_size=4)
  wav = model_workdir.bird_wav()
  unknown = predictor.predict_file(wav)
  located = predictor.predict_file(wav, latitude=42.4, longitude=-76.5)
  trained = predictor.trained

  def offset(features):
    return np.asarray(trained.model.apply(
        trained.variables, jnp.asarray(features, jnp.float32),
        method=lambda m, x: m.location_head(x)))[0]

  # Every window moves by the head's offset at the location minus its
  # offset for an unknown location (the learned missing embedding).
  expected = offset([[42.4, -76.5]]) - offset([[np.nan, np.nan]])
  np.testing.assert_allclose(located.logits - unknown.logits,
                             np.broadcast_to(expected, unknown.logits.shape),
                             atol=1e-4)
  assert np.abs(expected).max() > 1e-3
  # The embedding is the backbone's, whatever the location.
  np.testing.assert_allclose(located.embeddings, unknown.embeddings,
                             atol=1e-6)


def test_prediction_command_passes_the_location_and_warns_without_one(
    encoding_workdir, tmp_path, capsys):
  folder = tmp_path / "recordings"
  folder.mkdir()
  shutil.copy(model_workdir.bird_wav(), folder / "birds.wav")
  predictor = inference.Predictor(encoding_workdir, batch_size=4)
  every_row = inference.Selection(0.0, top_k=len(predictor.species))
  for name, where in (("located", {"latitude": 42.4, "longitude": -76.5}),
                      ("unlocated", {})):
    predict.run(predictor, str(folder), str(tmp_path / name),
                predict.RunOptions(formats=("csv",), selection=every_row,
                                   **where))
  warned = capsys.readouterr().err
  assert warned.count("classifies them as at an unknown location") == 1
  located, unlocated = (
      tables.read_table(str(tmp_path / name / "birds.BirdNET.results.csv"))
      for name in ("located", "unlocated"))
  expected = predictor.predict_file(model_workdir.bird_wav(), 42.4, -76.5)
  assert len(located) == len(unlocated) > 0
  assert located != unlocated
  assert max(float(r["Confidence"]) for r in located) == pytest.approx(
      float(expected.probabilities.max()), abs=1e-3)


@pytest.mark.slow  # Trains a range model (about 8 s on CPU).
def test_prediction_adds_the_training_range_models_log_prior(tmp_path):
  names = [row["species"] for row in model_workdir.labels(6)]
  rng = np.random.default_rng(0)
  observations = range_lib.Observations(
      rng.uniform(-60, 60, 60), rng.uniform(-180, 180, 60),
      rng.integers(0, 4, 60), names[:4])  # Two labels are not covered.
  range_lib.train(observations, epochs=1, batch_size=32).save(
      str(tmp_path / "range_model"))
  workdir = model_workdir.make_workdir(
      str(tmp_path / "model"), location_input="prior_logits",
      geo_prior=str(tmp_path / "range_model"))
  predictor = inference.Predictor(workdir, batch_size=4)
  wav = model_workdir.bird_wav()
  unknown = predictor.predict_file(wav)
  located = predictor.predict_file(wav, latitude=42.4, longitude=-76.5)
  p = prior_lib.load(str(tmp_path / "range_model"),
                     names).probabilities([42.4], [-76.5])[0]
  expected = np.log(np.maximum(np.nan_to_num(p, nan=1.0), 1e-3))
  assert (expected[4:] == 0).all() and (expected[:4] < 0).all()
  np.testing.assert_allclose(located.logits - unknown.logits,
                             np.broadcast_to(expected, unknown.logits.shape),
                             atol=1e-4)


def test_prediction_refuses_a_prior_logits_model_whose_prior_it_cannot_rebuild(
    tmp_path):
  workdir = model_workdir.make_workdir(
      str(tmp_path / "model"), location_input="prior_logits",
      geo_prior="synthetic_truth")
  with pytest.raises(inference.InputError, match="synthetic_truth"):
    inference.Predictor(workdir)


def test_export_refuses_a_model_with_a_location_input(encoding_workdir,
                                                      tmp_path):
  with pytest.raises(trained_lib.BundleError,
                     match="location_input 'encoding'"):
    export.export_bundle(encoding_workdir, str(tmp_path / "bundle"))
  assert not (tmp_path / "bundle").exists()


def test_curation_refuses_a_model_with_a_location_input(encoding_workdir):
  trained = trained_lib.load_workdir(encoding_workdir)
  with pytest.raises(registry.ConfigError,
                     match="location_input 'encoding'.*does not pass"):
    curate.window_scorer(trained, "confidence")


# -- Training end to end ---------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", ["encoding", "prior_logits"])
def test_tiny_run_with_a_location_input_trains_and_evaluates_consistently(
    name, data_dir, tmp_path):
  c = test_train.tiny_config(data_dir, geo_prior="synthetic_truth",
                             location_input=name)
  results = train.train_and_evaluate(c, str(tmp_path))
  metrics = results["validation"].metrics
  assert 0.0 <= metrics["mean/no_prior/top1"] <= 1.0
  assert 0.0 <= metrics["mean/prior/map"] <= 1.0
  # --mode=eval rebuilds the location features and gives the same numbers.
  again = train.evaluate_checkpoint(c, str(tmp_path))
  assert again["validation"].summary == results["validation"].summary
