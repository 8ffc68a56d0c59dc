"""Weight files that are not weight files fail naming the file; the input
normalisation of imported AudioMAE / Bird-MAE checkpoints."""

import numpy as np
import pytest

from inatsounds_jax import frontend
from inatsounds_jax.models import convert
from inatsounds_jax.models import image as image_lib


def _raises_naming(path, *fragments):
  with pytest.raises(convert.CheckpointFileError) as e:
    convert.load_state_dict(str(path))
  message = str(e.value)
  assert message.startswith(str(path))
  assert "expected a state dict" in message
  for fragment in fragments:
    assert fragment in message, message
  assert "weights_only=False" not in message
  assert "file an issue" not in message


def test_safetensors_round_trip_and_broken_file(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  good = tmp_path / "w.safetensors"
  save_file({"module.fc.weight": np.ones((2, 3), np.float32)}, str(good))
  state = convert.load_state_dict(str(good))
  np.testing.assert_array_equal(state["fc.weight"], np.ones((2, 3)))
  broken = tmp_path / "broken.safetensors"
  broken.write_bytes(good.read_bytes()[:20])
  _raises_naming(broken, "not a readable .safetensors file")


def test_text_file_is_not_a_checkpoint(tmp_path):
  path = tmp_path / "resnet50.pth"
  path.write_text("<html>404 Not Found</html>\n")
  _raises_naming(path, "not a PyTorch checkpoint", "<html>")


def test_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nothing.pth: no such file"):
    convert.load_state_dict(str(tmp_path / "nothing.pth"))


def test_torch_files_that_hold_something_else(tmp_path):
  torch = pytest.importorskip("torch")
  model = torch.nn.Linear(3, 2)
  good = tmp_path / "good.pth"
  torch.save({"state_dict": model.state_dict(), "epoch": 3}, good)
  assert set(convert.load_state_dict(str(good))) == {"weight", "bias"}

  pickled_model = tmp_path / "model.pth"
  torch.save(model, pickled_model)
  _raises_naming(pickled_model, "pickled model", "state_dict()")
  a_list = tmp_path / "list.pth"
  torch.save([1, 2, 3], a_list)
  _raises_naming(a_list, "holds a list, not a state dict")
  mixed = tmp_path / "mixed.pth"
  torch.save({"weight": torch.zeros(2), "note": "hello"}, mixed)
  _raises_naming(mixed, "entries that are not tensors: ['note']")
  cut = tmp_path / "cut.pth"
  cut.write_bytes(good.read_bytes()[:200])
  _raises_naming(cut, "damaged or unreadable PyTorch checkpoint")


def test_from_torch_reports_the_file(tmp_path):
  path = tmp_path / "weights.pth"
  path.write_text("not weights")
  with pytest.raises(convert.CheckpointFileError, match="weights.pth: not a "
                     "PyTorch checkpoint"):
    convert.from_torch("resnet18", str(path), num_classes=3)


# The originals' constants, restated: Kaldi's 25 ms symmetric Hann window
# sums to (N - 1) / 2 over N = 400 (16 kHz) or 800 (32 kHz) samples.
ORIGINALS = {"audiomae": (199.5, -4.2677393, 4.5689974),
             "birdmae": (399.5, -7.2, 4.43)}


@pytest.mark.parametrize("preset", ["inatsounds", "inatsounds_legacy"])
@pytest.mark.parametrize("source", sorted(ORIGINALS))
def test_source_statistics_normalise_a_sinusoid_as_the_original(source,
                                                                 preset):
  # A sinusoid of amplitude A at a band's centre: our band reads 20 log10 A
  # dB of the [-1, 1] signal; Kaldi's fbank ln((A sum(window) / 2)^2); the
  # original feeds (fbank - mean) / (2 std).
  window_sum, mean, std = ORIGINALS[source]
  config = frontend.get_config(preset)
  amplitude = np.array([1e-5, 1e-4, 1e-3, 5e-3])  # Unclipped in both.
  pixels = config.db_to_pixels(
      20 * np.log10(amplitude * config.waveform_scale))
  image_mean, image_std = convert.input_normalization(source, config,
                                                      "source")
  got = image_lib.to_model_image(
      pixels.reshape(1, 1, -1), image_lib.ImageConfig(
          size=None, channels=1, mean=image_mean, std=image_std))
  fbank = np.log((amplitude * window_sum / 2) ** 2)
  np.testing.assert_allclose(np.ravel(got), (fbank - mean) / (2 * std),
                             rtol=1e-5, atol=1e-5)


def test_dataset_statistics_give_mean_zero_and_deviation_one_half():
  # AudioMAE normalises each fine-tuning set by its own mean and twice its
  # deviation: our images at their mean read 0, one deviation above 1/2.
  ours = image_lib.ImageConfig()
  pixels = 255 * np.array([ours.mean, ours.mean + ours.std])
  image_mean, image_std = convert.input_normalization(
      "audiomae", frontend.INATSOUNDS)
  got = image_lib.to_model_image(
      pixels.reshape(1, 1, -1), image_lib.ImageConfig(
          size=None, channels=1, mean=image_mean, std=image_std))
  np.testing.assert_allclose(np.ravel(got), [0.0, 0.5], atol=1e-6)
  assert convert.input_normalization(
      "birdmae", frontend.INATSOUNDS) == convert.input_normalization(
          "birdmae", frontend.INATSOUNDS, "source")


def test_unknown_source_or_statistics_are_named():
  with pytest.raises(ValueError, match="'beats'.*audiomae"):
    convert.input_normalization("beats", frontend.INATSOUNDS)
  with pytest.raises(ValueError, match="'imagenet'.*dataset"):
    convert.input_normalization("audiomae", frontend.INATSOUNDS, "imagenet")


def test_finetune_variant_sets_the_sources_grid_layout_and_normalisation():
  from test_train import load_config  # pylint: disable=import-outside-toplevel
  c = load_config("mae_finetune", "birdmae,dataset_statistics")
  assert tuple(c.init_checkpoint_grid) == (32, 8)
  assert c.init_checkpoint_time_major
  assert (c.image.mean, c.image.std) == convert.input_normalization(
      "birdmae", frontend.INATSOUNDS, "dataset")
  c = load_config("mae_finetune", "audiomae")
  assert tuple(c.init_checkpoint_grid) == (64, 8)
  assert (c.image.mean, c.image.std) == convert.input_normalization(
      "audiomae", frontend.INATSOUNDS, "dataset")
  for variant in ("audiomae,birdmae", "source_statistics"):
    with pytest.raises(ValueError, match="at most one checkpoint source"):
      load_config("mae_finetune", variant)
