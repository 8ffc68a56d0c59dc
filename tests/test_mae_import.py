"""Import of AudioMAE / Bird-MAE-style PyTorch ViT checkpoints (timm keys):
parity with timm's VisionTransformer built with the same settings, on
random weights, for time-major checkpoints with and without class token."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inatsounds_jax import models
from inatsounds_jax.models import convert

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

# vit_mu16's shape: width 64, 2 blocks, 2 heads, MLP 128.
MU = dict(patch_size=16, in_chans=1, embed_dim=64, depth=2, num_heads=2,
          mlp_ratio=2.0, global_pool="avg")
TIME, MEL = 64, 32  # The checkpoint's images are [time, mel].


def random_timm_vit(class_token: bool, num_classes: int = 5):
  torch.manual_seed(0)
  model = timm.models.vision_transformer.VisionTransformer(
      img_size=(TIME, MEL), num_classes=num_classes, class_token=class_token,
      **MU).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0, 0.05 if p.ndim > 1 else 0.2)
  return model


def our_logits(variables, images_mel_time, class_token):
  model = models.create("vit_mu16", 5, image_size=(MEL, TIME),
                        global_pool="avg", class_token=class_token)
  x = jnp.asarray(images_mel_time[..., None])
  return np.asarray(jax.jit(lambda v, x: model.apply(v, x))(variables, x))


@pytest.mark.parametrize("class_token", [True, False])
def test_time_major_checkpoint_matches_timm(class_token):
  tm = random_timm_vit(class_token)
  x = np.random.default_rng(0).standard_normal((2, 1, TIME, MEL)).astype(
      np.float32)
  with torch.no_grad():
    want = tm(torch.from_numpy(x)).numpy()
  variables = convert.from_torch(
      "vit_mu16", tm.state_dict(), num_classes=5, in_channels=1,
      image_size=(MEL, TIME), source_grid=(TIME // 16, MEL // 16),
      time_major=True,
      backbone_options={"global_pool": "avg", "class_token": class_token})
  got = our_logits(variables, x[:, 0].transpose(0, 2, 1), class_token)
  rel = np.abs(got - want).max() / np.abs(want).max()
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
  # The transposed patch kernel: kh now runs over mel.
  np.testing.assert_array_equal(
      params["patch_embed_proj"]["kernel"][:, :, 0, 3],
      tm.patch_embed.proj.weight[3, 0].detach().numpy().T)


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
