"""The bundle: jax.export artefact without the library, TFLite agreement,
Flax load, prediction from the bundle alone, version check."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from inatsounds_jax import audio
from inatsounds_jax import export
from inatsounds_jax import inference
from inatsounds_jax import trained as trained_lib
from inatsounds_jax import windows as windows_lib
from inatsounds_jax.models import classifier as classifier_lib

import model_workdir


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return model_workdir.make_workdir(str(tmp_path_factory.mktemp("model")))


@pytest.fixture(scope="module")
def bundle(workdir, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("bundles") / "bundle")
  export.export_bundle(workdir, out, tflite=True)
  return out


@pytest.fixture(scope="module")
def real_windows(bundle):
  """float32 windows of the two real recordings, as prediction cuts them."""
  model, _ = export.load(bundle)
  windows = windows_lib.WindowConfig(512, 258, model.frontend)
  out = []
  for path in (model_workdir.bird_wav(), model_workdir.yellowthroat_mp3()):
    waveform = audio.read_audio_file(path)
    starts, left = windows_lib.eval_layout(len(waveform), windows)
    out.append(windows_lib.cut_windows(waveform, starts, left, windows))
  return np.concatenate(out).astype(np.float32) / audio.INT16_SCALE


def test_bundle_describes_itself(bundle):
  assert sorted(os.listdir(bundle)) == sorted(
      [trained_lib.BUNDLE_CONFIG_FILE, trained_lib.BUNDLE_LABELS_FILE,
       trained_lib.EXPORTED_FILE, trained_lib.TFLITE_FILE,
       trained_lib.VARIABLES_DIR])
  with open(os.path.join(bundle, trained_lib.BUNDLE_CONFIG_FILE)) as f:
    config = json.load(f)
  assert config["sample_rate"] == 22_050
  assert config["window_samples"] == 65_920  # 511 hops + 512.
  assert config["default_hop_seconds"] == 1.5
  assert config["frontend_preset"] == "inatsounds"
  assert config["frontend"]["num_mel_bins"] == 128
  assert config["model_name"] == "placeholder"
  assert config["output"] == "multiclass"
  assert config["platforms"] == ["cpu", "cuda", "tpu"]
  assert config["training_data"]["dataset"] == "synthetic"
  assert config["tflite_batch"] is None  # model.tflite takes any batch.
  with open(os.path.join(bundle, trained_lib.BUNDLE_LABELS_FILE)) as f:
    lines = f.read().splitlines()
  assert lines[0] == "index,species,common_name,supercategory,taxonomy"
  assert lines[1] == "0,Genus species0,Bird 0,Aves,Animalia;Aves"


def test_exported_model_runs_without_the_library(bundle, real_windows,
                                                 tmp_path):
  model, variables = export.load(bundle)
  logits, embedding = export.inference_fn(model, variables)(real_windows)
  np.save(tmp_path / "x.npy", real_windows)
  script = textwrap.dedent(f"""
      import sys
      sys.modules["inatsounds_jax"] = None  # Importing it would fail.
      import jax, numpy as np
      with open({os.path.join(bundle, trained_lib.EXPORTED_FILE)!r}, "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
      x = np.load({str(tmp_path / "x.npy")!r})
      for batch in (x[:1], x):
        logits, embedding = exported.call(batch)
      np.save({str(tmp_path / "logits.npy")!r}, np.asarray(logits))
      np.save({str(tmp_path / "embedding.npy")!r}, np.asarray(embedding))
      assert not any(m.startswith(("inatsounds_jax", "flax", "tensorflow"))
                     for m in sys.modules if sys.modules[m] is not None)
  """)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", script], env=env,
                          capture_output=True, text=True, timeout=300,
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), logits,
                             atol=1e-5)
  np.testing.assert_allclose(np.load(tmp_path / "embedding.npy"), embedding,
                             atol=1e-5)


@pytest.mark.parametrize("batch", [1, 7])
def test_tflite_agrees_with_the_jax_export(bundle, real_windows, batch):
  exported = export.load_exported(bundle)
  tflite = export.TFLiteModel(os.path.join(bundle, trained_lib.TFLITE_FILE))
  x = real_windows[:batch]
  logits, embedding = tflite(x)
  want_logits, want_embedding = (np.asarray(a) for a in exported.call(x))
  assert logits.shape == want_logits.shape
  np.testing.assert_array_equal(logits.argmax(-1), want_logits.argmax(-1))
  assert np.abs(logits - want_logits).max() < 1e-3
  assert np.abs(embedding - want_embedding).max() < 1e-3


def test_a_fixed_batch_tflite_model_scores_as_the_jax_model(bundle,
                                                           real_windows):
  """A model for batches of 4 runs 7 windows as a full batch and a padded
  one, and scores them as the JAX export does."""
  model, variables = export.load(bundle)
  tflite = export.TFLiteModel(export.to_tflite(model, variables,
                                               batch_size=4))
  assert tflite.batch_size == 4
  x = real_windows[:7]
  logits, embedding = tflite(x)
  want_logits, want_embedding = (np.asarray(a) for a in
                                 export.load_exported(bundle).call(x))
  assert logits.shape == want_logits.shape == (7, model.num_classes)
  np.testing.assert_array_equal(logits.argmax(-1), want_logits.argmax(-1))
  assert np.abs(logits - want_logits).max() < 1e-3
  assert np.abs(embedding - want_embedding).max() < 1e-3


def test_load_gives_the_flax_module_and_variables(bundle, workdir):
  model, variables = export.load(bundle)
  assert isinstance(model, classifier_lib.Classifier)
  from_workdir = trained_lib.load(workdir)
  x = np.zeros((2, model.window_samples), np.float32)
  np.testing.assert_array_equal(
      model.apply(variables, x),
      from_workdir.model.apply(from_workdir.variables, x))


def test_predict_from_the_bundle_alone(bundle, workdir, tmp_path):
  copy = tmp_path / "bundle"
  subprocess.run(["cp", "-r", bundle, str(copy)], check=True)
  path = model_workdir.yellowthroat_mp3()
  from_bundle = inference.Predictor(str(copy)).predict_file(path)
  from_workdir = inference.Predictor(workdir).predict_file(path)
  np.testing.assert_array_equal(from_bundle.logits, from_workdir.logits)


def test_a_bundle_of_another_format_is_refused(bundle, tmp_path):
  copy = tmp_path / "old"
  subprocess.run(["cp", "-r", bundle, str(copy)], check=True)
  config_path = copy / trained_lib.BUNDLE_CONFIG_FILE
  config = json.loads(config_path.read_text())
  config.update(bundle_format=0, library_version="0.0.1")
  config_path.write_text(json.dumps(config))
  with pytest.raises(trained_lib.BundleError,
                     match=r"bundle format 0 \(written "
                     r"by inatsounds_jax 0.0.1\).*export it again"):
    inference.Predictor(str(copy))
