"""The masked autoencoder: masking, the masked-patch loss and its targets,
and the options it refuses (fast, CPU)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inatsounds_jax import augment
from inatsounds_jax import registry
from inatsounds_jax import objectives
from inatsounds_jax.models import image as image_lib
from inatsounds_jax.models import mae
from inatsounds_jax.models import vit


def tiny_mae(**options):
  fields = dict(size="mu", image=image_lib.ImageConfig(size=(32, 128),
                                                       channels=1),
                window_frames=64, decoder="global", decoder_width=64,
                decoder_depth=1, decoder_heads=4, local_window=(2, 4),
                mask_ratio=0.75)
  fields.update(options)
  return mae.MaskedAutoencoder(**fields)


@functools.lru_cache(maxsize=None)
def reconstruction(decoder="global", norm_pix_loss=True):
  """(model, outputs, model image) of three random spectrogram images."""
  model = tiny_mae(decoder=decoder, norm_pix_loss=norm_pix_loss)
  images = np.random.default_rng(0).uniform(0, 255, (3, 32, 128)).astype(
      np.float32)

  @jax.jit
  def run(images):
    variables = model.init({"params": jax.random.PRNGKey(1)}, images,
                           method=mae.MaskedAutoencoder.reconstruct)
    return model.apply(variables, images, rngs={"mask": jax.random.PRNGKey(2)},
                       method=mae.MaskedAutoencoder.reconstruct)

  model_image = np.asarray(image_lib.to_model_image(images, model.image))
  return model, jax.device_get(run(images)), model_image


def numpy_patches(image, patch=16):
  """[b, H, W, 1] -> [b, n, p*p] by loops over the patch grid."""
  b, h, w, _ = image.shape
  out = []
  for i in range(h // patch):
    for j in range(w // patch):
      out.append(image[:, i * patch:(i + 1) * patch,
                       j * patch:(j + 1) * patch, 0].reshape(b, -1))
  return np.stack(out, axis=1)


@pytest.mark.parametrize("masking,ratio,expected_visible", [
    ("random", 0.8, 13), ("random", 0.75, 16), ("time", 0.75, 4 * 4),
    ("frequency", 0.5, 2 * 16)])
def test_masking_keeps_exactly_the_configured_number_of_patches(
    masking, ratio, expected_visible):
  grid = (4, 16)
  ids_keep, mask = jax.device_get(mae.random_mask(
      jax.random.PRNGKey(0), 5, grid, ratio, masking))
  assert ids_keep.shape == (5, expected_visible)
  for row_ids, row_mask in zip(ids_keep, mask):
    assert len(set(row_ids.tolist())) == expected_visible
    np.testing.assert_array_equal(np.flatnonzero(row_mask == 0),
                                  np.sort(row_ids))
    masked = row_mask.reshape(grid).astype(bool)
    if masking == "time":  # Whole columns.
      assert (masked.all(0) | ~masked.any(0)).all()
    if masking == "frequency":  # Whole rows.
      assert (masked.all(1) | ~masked.any(1)).all()
  # Different windows get different masks.
  assert not np.array_equal(mask[0], mask[1])


# Each decoder kind compiles its own model (~10 s on a busy 2-core machine).
@pytest.mark.parametrize("decoder", [
    "global", pytest.param("local", marks=pytest.mark.slow)])
def test_loss_is_the_mse_of_masked_patches_against_normalised_patches(
    decoder):
  model, out, image = reconstruction(decoder)
  patches = numpy_patches(image.astype(np.float64))
  mean = patches.mean(-1, keepdims=True)
  std = np.sqrt(patches.var(-1, ddof=1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(out["targets"], (patches - mean) / std,
                             rtol=1e-4, atol=1e-4)
  mask = out["mask"].astype(bool)
  assert mask.sum(1).tolist() == [12] * 3  # 0.75 of 16 patches.
  errors = ((out["predictions"] - out["targets"]) ** 2).mean(-1)
  expected = np.array([errors[i][mask[i]].mean() for i in range(3)])
  np.testing.assert_allclose(out["loss"], expected, rtol=1e-5)
  assert model.grid == (2, 8)


def test_visible_patches_do_not_count_in_the_loss():
  _, out, _ = reconstruction()
  mask = jnp.asarray(out["mask"])
  predictions = jnp.asarray(out["predictions"])
  wild = predictions + 100.0 * (1.0 - mask)[:, :, None]
  np.testing.assert_allclose(
      mae.masked_patch_loss(wild, out["targets"], mask), out["loss"],
      rtol=1e-6)
  moved = predictions + 1.0 * mask[:, :, None]
  assert (np.asarray(mae.masked_patch_loss(moved, out["targets"], mask))
          > out["loss"]).all()


def test_normalised_patches_have_zero_mean_and_unit_variance():
  rng = np.random.default_rng(0)
  patches = rng.normal(3.0, 5.0, (2, 7, 256)).astype(np.float32)
  normalised = np.asarray(mae.normalise_patches(patches))
  np.testing.assert_allclose(normalised.mean(-1), 0.0, atol=1e-5)
  np.testing.assert_allclose(normalised.var(-1, ddof=1), 1.0, rtol=1e-4)


@pytest.mark.slow
def test_without_patch_normalisation_targets_are_the_raw_patches():
  _, out, image = reconstruction(norm_pix_loss=False)
  np.testing.assert_allclose(out["targets"], numpy_patches(image),
                             rtol=1e-6, atol=1e-6)


def test_patchify_inverts_and_matches_the_patch_embedding_order():
  x = np.arange(2 * 32 * 64, dtype=np.float32).reshape(2, 32, 64, 1)
  patches = mae.patchify(x, 16)
  np.testing.assert_array_equal(patches, numpy_patches(x))
  np.testing.assert_array_equal(mae.unpatchify(patches, (2, 4), 16, 1), x)


def test_sincos_position_embeddings_encode_time_then_frequency():
  pos = vit.sincos_pos_embed(8, (2, 3))
  assert pos.shape == (6, 8)
  # Index 4 = row 1, column 1; the first half encodes the column.
  np.testing.assert_allclose(pos[4, :4], pos[1, :4])
  np.testing.assert_allclose(pos[4, 4:], pos[3, 4:])
  np.testing.assert_allclose(pos[0], [0, 0, 1, 1, 0, 0, 1, 1], atol=1e-7)


@pytest.mark.parametrize("options,message", [
    ({"mask_ratio": 0.0}, "mask_ratio=0.0 must be in (0, 1)"),
    ({"mask_ratio": 1.0}, "mask_ratio=1.0 must be in (0, 1)"),
    ({"mask_ratio": -0.5}, "must be in (0, 1)"),
    ({"image": image_lib.ImageConfig(size=(40, 128), channels=1)},
     "the patch size 16 does not divide the MAE input 40 x 128"),
    ({"image": image_lib.ImageConfig(size=None, channels=1),
      "window_frames": 100},
     "does not divide the MAE input 128 x 100"),
    ({"decoder": "local", "local_window": (4, 4)},
     "local_window (4, 4) does not tile the 2 x 8 patch grid"),
    ({"masking": "checkerboard"}, "masking 'checkerboard' is not one of"),
])
def test_bad_options_are_refused_with_a_message(options, message):
  with pytest.raises(registry.ConfigError) as e:
    tiny_mae(**options)
  assert message in str(e.value)


@pytest.mark.slow
def test_a_pretraining_step_trains_encoder_and_decoder_and_ignores_labels():
  # pylint: disable=g-import-not-at-top
  import optax
  from inatsounds_jax import losses
  from inatsounds_jax import train
  model = tiny_mae()
  objective = objectives.get("masked_reconstruction")
  loss = losses.LOSSES.get("softmax_ce")
  tx = optax.adamw(1e-2)
  state = train.init_state(model, tx, loss, jax.random.PRNGKey(0), ema=False)
  waveform = np.random.default_rng(0).integers(
      -8000, 8000, (2, model.window_samples), dtype=np.int16)
  step = jax.jit(functools.partial(
      train.train_step, model=model, tx=tx, loss=loss,
      augment_config=augment.AugmentConfig(), ema_decay=0.0,
      schedule=lambda s: 1e-2, objective=objective))
  new, metrics = step(state, {"waveform": waveform,
                              "label": np.array([0, 1], np.int32)})
  relabelled, _ = step(state, {"waveform": waveform,
                               "label": np.array([5, 5], np.int32)})
  assert np.isfinite(metrics["loss"]) and metrics["finite_update"]
  assert set(metrics) >= {"loss", "grad_norm", "learning_rate"}
  for name in ("blocks_0_attn_qkv", "decoder_pred", "patch_embed_proj"):
    assert not np.allclose(new.params[name]["kernel"],
                           state.params[name]["kernel"]), name
  jax.tree.map(np.testing.assert_array_equal, new.params, relabelled.params)


def test_figures_show_input_masked_input_and_denormalised_reconstruction():
  from inatsounds_jax.evaluators import reconstruction  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  image = rng.normal(size=(1, 32, 64, 1)).astype(np.float32)
  patches = np.asarray(mae.patchify(image, 16))  # [1, 8, 256]
  mask = np.zeros((1, 8), np.float32)
  mask[0, [1, 6]] = 1.0
  mean = patches.mean(-1, keepdims=True)
  std = patches.std(-1, keepdims=True) + 0.5
  predictions = rng.normal(size=patches.shape).astype(np.float32)
  out = {"image": image, "mask": mask, "predictions": predictions,
         "patch_mean": mean, "patch_std": std}
  shown, masked, rebuilt = reconstruction.figure_images(out, 0)
  np.testing.assert_array_equal(shown, image[0, :, :, 0])
  # Patch 1 is row 0, columns 16..32; patch 6 is row 1, columns 32..48.
  assert np.isnan(masked[:16, 16:32]).all() and np.isnan(
      masked[16:, 32:48]).all()
  np.testing.assert_array_equal(masked[:16, :16], image[0, :16, :16, 0])
  np.testing.assert_allclose(
      rebuilt[16:, 32:48],
      (predictions[0, 6] * std[0, 6] + mean[0, 6]).reshape(16, 16),
      rtol=1e-6)
  np.testing.assert_array_equal(rebuilt[:16, :16], image[0, :16, :16, 0])


def test_figures_draw_the_highest_band_at_the_top(monkeypatch, tmp_path):
  # The frontend puts the highest mel band in row 0, so row 0 is drawn at
  # the top (origin "upper"), as every spectrogram of the library.
  from inatsounds_jax import plots  # pylint: disable=g-import-not-at-top
  from inatsounds_jax.evaluators import reconstruction  # pylint: disable=g-import-not-at-top
  drawn = []
  monkeypatch.setattr(plots, "save", lambda fig, path: drawn.append(fig))
  image = np.arange(8 * 16, dtype=np.float32).reshape(8, 16)
  reconstruction.plot_reconstructions(str(tmp_path / "r.png"),
                                      [(image, image, image)])
  (fig,) = drawn
  assert {im.origin for ax in fig.axes for im in ax.images} == {"upper"}
