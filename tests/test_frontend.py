import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from inatsounds_jax import audio
from inatsounds_jax import frontend
from inatsounds_jax import frontend_reference


def real_recording() -> np.ndarray:
  """10 s of birds at 32 kHz shipped in the opensoundscape wheel (installed
  with --no-deps by .ci/run), resampled to 22,050 Hz, as float."""
  spec = importlib.util.find_spec("opensoundscape")
  if spec is None:
    pytest.skip("opensoundscape's sample audio is not installed "
                "(pip install --no-deps opensoundscape==0.13.2)")
  path = os.path.join(spec.submodule_search_locations[0], "sample_data",
                      "birds_10s.wav")
  return audio.read_audio_file(path).astype(np.float64) / 32767.0


def synthetic_recording(small_corpus) -> np.ndarray:
  name = sorted(os.listdir(os.path.join(small_corpus, "train")))[0]
  folder = os.path.join(small_corpus, "train", name)
  path = os.path.join(folder, sorted(os.listdir(folder))[0])
  return audio.read_audio_file(path).astype(np.float64) / 32767.0


def _assert_matches_reference(x, preset="inatsounds"):
  ref = frontend_reference.reference_mel_image(x, preset)
  got = np.asarray(frontend.mel_image(x.astype(np.float32), preset))
  assert got.shape == ref.shape
  diff = np.abs(got - ref)
  assert np.mean(diff <= 1) >= 0.999, np.mean(diff <= 1)
  assert diff.max() <= 2
  return got, ref


def _assert_same_image(a, b):
  """Equal up to float32 rounding: a pixel on a level boundary may move 1."""
  diff = np.abs(np.asarray(a) - np.asarray(b))
  assert diff.max() <= 1 and np.mean(diff == 0) > 0.9999


def test_mel_matrix_matches_tensorflow():
  cfg = frontend.PRESETS.get("inatsounds")
  ours = frontend.mel_weight_matrix(cfg)
  theirs = tf.signal.linear_to_mel_weight_matrix(
      128, 513, 22050, 50.0, 11025.0, dtype=tf.float64).numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-12)


def test_real_recording_matches_float64_reference():
  x = real_recording()
  got, ref = _assert_matches_reference(x)
  assert got.shape == (128, 1 + (len(x) - 512) // 128)
  assert 0 <= got.min() and got.max() <= 255
  assert np.all(got == np.floor(got))
  assert got.std() > 10  # Real content, not a blank image.


@pytest.mark.parametrize("preset", ["inatsounds_legacy", "inatsounds_float"])
def test_other_presets_match_reference(preset):
  _assert_matches_reference(real_recording(), preset)


def test_synthetic_recording_matches_reference(small_corpus):
  _assert_matches_reference(synthetic_recording(small_corpus))


def test_highest_band_is_row_zero():
  t = np.arange(22050) / 22050
  high = np.sin(2 * np.pi * 9000 * t) * 0.5
  low = np.sin(2 * np.pi * 200 * t) * 0.5
  img_high = np.asarray(frontend.mel_image(high.astype(np.float32)))
  img_low = np.asarray(frontend.mel_image(low.astype(np.float32)))
  assert np.argmax(img_high.mean(1)) < 20
  assert np.argmax(img_low.mean(1)) > 100


@pytest.mark.parametrize("samples, frames", [
    (512, 1), (513, 1), (639, 1), (640, 2), (65920, 512), (65921, 512),
    (66048, 513)])
def test_frame_count(samples, frames):
  cfg = frontend.PRESETS.get("inatsounds")
  assert cfg.num_frames(samples) == frames
  x = np.zeros((2, samples), np.float32)
  assert frontend.mel_image(x).shape == (2, 128, frames)


def test_too_short_and_wrong_rank_raise():
  with pytest.raises(ValueError, match="fewer than one window"):
    frontend.mel_image(np.zeros(511, np.float32))
  with pytest.raises(ValueError, match=r"\[batch, samples\]"):
    frontend.mel_image(np.zeros((1, 2, 1000), np.float32))
  with pytest.raises(ValueError, match="unknown frontend preset"):
    frontend.mel_image(np.zeros(1000, np.float32), "nope")


def test_silence_is_black_and_batch_equals_single():
  rng = np.random.default_rng(0)
  x = (rng.standard_normal((3, 4000)) * 0.1).astype(np.float32)
  x[1] = 0
  batch = np.asarray(frontend.mel_image(x))
  assert np.all(batch[1] == 0)
  for i in range(3):
    np.testing.assert_array_equal(batch[i], frontend.mel_image(x[i]))


def test_window_of_file_equals_file_frames():
  # A window cut on the hop grid gives exactly those frames of the file.
  x = real_recording().astype(np.float32)
  whole = np.asarray(frontend.mel_image(x))
  start = 37
  window = x[start * 128:start * 128 + 65920]
  _assert_same_image(frontend.mel_image(window), whole[:, start:start + 512])


def test_frontend_module_takes_int16_and_carries_config():
  x = (real_recording()[:40000] * 32767).round().astype(np.int16)
  module = frontend.Frontend(frontend.PRESETS.get("inatsounds"))
  variables = module.init(jax.random.PRNGKey(0), x[None])
  assert not variables  # Nothing learned: the config is the whole state.
  out = module.apply(variables, jnp.asarray(x[None]))
  np.testing.assert_array_equal(
      out[0], frontend.mel_image(x.astype(np.float32) / 32767.0))
  assert module.config.to_dict()["hop_length"] == 128


def test_segmented_equals_one_pass_on_long_input():
  cfg = frontend.PRESETS.get("inatsounds")
  x = jnp.asarray(np.random.default_rng(1).uniform(-0.5, 0.5, (2, 200_003))
                  .astype(np.float32))
  one_pass = frontend._dense_mel_image(x, cfg)  # pylint: disable=protected-access
  segmented = frontend.mel_image(x)
  assert segmented.shape == (2, 128, cfg.num_frames(200_003))
  _assert_same_image(segmented, one_pass)
  float_cfg = frontend.PRESETS.get("inatsounds_float")
  np.testing.assert_allclose(frontend.mel_image(x, float_cfg),
                              frontend._dense_mel_image(x, float_cfg),  # pylint: disable=protected-access
                              atol=0.01)
