"""Import of AudioMAE / Bird-MAE-style PyTorch ViT checkpoints (timm keys):
parity with timm's VisionTransformer built with the same settings, on
random weights, with and without class token: the original on its Kaldi
layout ([time, mel], lowest band first) against the imported model on our
frontend's image of the same waveform ([mel, time], highest band first)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inatsounds_jax import frontend
from inatsounds_jax.models import classifier
from inatsounds_jax.models import convert
from inatsounds_jax.models import image as image_lib

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

# vit_mu16's shape: width 64, 2 blocks, 2 heads, MLP 128.
MU = dict(patch_size=16, in_chans=1, embed_dim=64, depth=2, num_heads=2,
          mlp_ratio=2.0, global_pool="avg")
TIME, MEL = 64, 32  # The checkpoint's images are [time, mel].
FRONTEND = frontend.FrontendConfig(num_mel_bins=MEL, quantize=False)


def random_timm_vit(class_token: bool, num_classes: int = 5):
  torch.manual_seed(0)
  model = timm.models.vision_transformer.VisionTransformer(
      img_size=(TIME, MEL), num_classes=num_classes, class_token=class_token,
      **MU).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0, 0.05 if p.ndim > 1 else 0.2)
    # Of the scale of AudioMAE's sin-cos embeddings, so one misplaced
    # position shows in the outputs.
    model.pos_embed.normal_(0, 1.0)
  return model


def asymmetric_waveform() -> np.ndarray:
  """A chirp rising from 0.5 to 6 kHz over the first two thirds, then a
  300 Hz tone: no symmetry in time or in frequency."""
  t = np.arange(FRONTEND.num_samples(TIME)) / FRONTEND.sample_rate
  split = t[-1] * 2 / 3
  chirp = np.sin(2 * np.pi * (500 * t + 5500 / (2 * split) * t ** 2))
  tone = 0.3 * np.sin(2 * np.pi * 300 * t)
  return np.where(t < split, chirp, tone).astype(np.float32)


def kaldi_layout_image(waveform: np.ndarray) -> np.ndarray:
  """The waveform's spectrogram laid out as Kaldi's fbank (AudioMAE's and
  Bird-MAE's input): `[frames, bands]`, band j = column j of the mel
  matrix, so the lowest band first; our frontend's values, computed here
  without `frontend.py`'s own orientation."""
  starts = np.arange(FRONTEND.num_frames(len(waveform))) * FRONTEND.hop_length
  window = frontend.periodic_hann(FRONTEND.window_length)
  frames = waveform[starts[:, None] + np.arange(FRONTEND.window_length)]
  magnitude = np.abs(np.fft.rfft(frames * window, FRONTEND.fft_length))
  mel = magnitude * 2 / window.sum() @ frontend.mel_weight_matrix(FRONTEND)
  return FRONTEND.db_to_pixels(
      20 * np.log10(np.maximum(FRONTEND.magnitude_floor, mel)))


@pytest.mark.parametrize("class_token", [True, False])
def test_kaldi_layout_checkpoint_sees_our_frontend_image_as_the_original(
    class_token):
  # The original model on its own layout ([time, mel], lowest band first)
  # and the imported one on our frontend's image of the same waveform
  # ([mel, time], highest band first) give the same patch embeddings at
  # the same time and band, and the same outputs.
  tm = random_timm_vit(class_token)
  waveform = asymmetric_waveform()
  mean, std = 0.6, 0.2
  source = (kaldi_layout_image(waveform) / 255 - mean) / std
  x = torch.from_numpy(source[None, None].astype(np.float32))
  with torch.no_grad():
    want_patches = tm.patch_embed(x).numpy()  # (time, band) row-major.
    want = tm(x).numpy()
  options = {"global_pool": "avg", "class_token": class_token}
  model = classifier.Classifier(
      "vit_mu16", 5, frontend=FRONTEND,
      image=image_lib.ImageConfig(size=None, channels=1, mean=mean, std=std),
      window_frames=TIME, backbone_options=tuple(sorted(options.items())))
  variables = classifier.from_backbone_variables(convert.from_torch(
      "vit_mu16", tm.state_dict(), num_classes=5, in_channels=1,
      image_size=(MEL, TIME), source_grid=(TIME // 16, MEL // 16),
      time_major=True, backbone_options=options))
  got, state = jax.jit(lambda v, w: model.apply(
      v, w, capture_intermediates=True, mutable=["intermediates"]))(
          variables, jnp.asarray(waveform[None]))
  got_patches = np.asarray(
      state["intermediates"]["net"]["patch_embed_proj"]["__call__"][0])
  # Our patch row r holds the band group MEL / 16 - 1 - r from the bottom.
  want_grid = want_patches.reshape(1, TIME // 16, MEL // 16, -1).transpose(
      0, 2, 1, 3)[:, ::-1]
  patches_rel = np.abs(got_patches - want_grid).max() / np.abs(
      want_grid).max()
  # float32 frontend against the float64 spectrogram here; a missing flip or
  # transposition is off by the whole scale.
  assert patches_rel < 1e-3, patches_rel
  # The position embedding of each patch is the original's at the same
  # time and band.
  skip = int(class_token)
  pos = variables["params"]["net"]["pos_embed"][0, skip:]
  want_pos = tm.pos_embed[0, skip:].detach().numpy().reshape(
      TIME // 16, MEL // 16, -1).transpose(1, 0, 2)[::-1]
  np.testing.assert_array_equal(pos.reshape(want_pos.shape), want_pos)
  rel = np.abs(np.asarray(got) - want).max() / np.abs(want).max()
  assert rel < 1e-4, rel


def test_mae_pretraining_checkpoint_loads_its_encoder_and_resamples():
  tm = random_timm_vit(class_token=True)
  state = {k: v for k, v in tm.state_dict().items()
           if not k.startswith(("head.", "fc_norm."))}
  # What an AudioMAE pretraining checkpoint holds besides the encoder.
  state["norm.weight"] = torch.ones(64)
  state["norm.bias"] = torch.zeros(64)
  state["mask_token"] = torch.zeros(1, 1, 32)
  state["decoder_embed.weight"] = torch.zeros(32, 64)
  state["decoder_blocks.0.attn.qkv.weight"] = torch.zeros(96, 32)
  variables = convert.from_torch(
      "vit_mu16", state, num_classes=5, in_channels=1, image_size=(32, 128),
      source_grid=(TIME // 16, MEL // 16), time_major=True,
      backbone_options={"global_pool": "avg"}, head_bias_init=-1.6)
  params = variables["params"]
  assert params["pos_embed"].shape == (1, 1 + 2 * 8, 64)
  np.testing.assert_array_equal(params["pos_embed"][0, 0],
                                tm.pos_embed[0, 0].detach().numpy())
  np.testing.assert_array_equal(params["fc_norm"]["scale"], np.ones(64))
  np.testing.assert_array_equal(params["head"]["kernel"], np.zeros((64, 5)))
  np.testing.assert_array_equal(params["head"]["bias"],
                                np.full(5, -1.6, np.float32))
  np.testing.assert_array_equal(
      params["blocks_1_mlp_fc1"]["kernel"],
      tm.blocks[1].mlp.fc1.weight.detach().numpy().T)
  # The patch kernel: kh now runs over mel from the highest band.
  np.testing.assert_array_equal(
      params["patch_embed_proj"]["kernel"][:, :, 0, 3],
      tm.patch_embed.proj.weight[3, 0].detach().numpy().T[::-1])


def test_checkpoint_without_class_token_for_a_model_with_one_is_named():
  tm = random_timm_vit(class_token=False)
  with pytest.raises(convert.ConversionError, match="cls_token"):
    convert.from_torch(
        "vit_mu16", tm.state_dict(), num_classes=5, in_channels=1,
        image_size=(MEL, TIME), source_grid=(TIME // 16, MEL // 16),
        time_major=True, backbone_options={"global_pool": "avg"})


def test_checkpoint_with_another_patch_size_names_both_shapes():
  torch.manual_seed(0)
  options = dict(MU, patch_size=8)
  tm = timm.models.vision_transformer.VisionTransformer(
      img_size=(TIME, MEL), num_classes=5, **options)
  with pytest.raises(convert.ConversionError) as e:
    convert.from_torch(
        "vit_mu16", tm.state_dict(), num_classes=5, in_channels=1,
        image_size=(MEL, TIME), source_grid=(TIME // 8, MEL // 8),
        time_major=True, backbone_options={"global_pool": "avg"})
  assert ("params/patch_embed_proj/kernel: checkpoint (8, 8, 1, 64) vs "
          "model (16, 16, 1, 64)") in str(e.value)
