import jax
import jax.numpy as jnp
import numpy as np

from inatsounds_jax import augment


def _images(batch=8, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.uniform(1, 255, (batch, 128, 512)).astype(np.float32))


def test_spec_augment_masks_bands_with_zero():
  config = augment.AugmentConfig()
  images = _images()
  out = np.asarray(augment.spec_augment(jax.random.PRNGKey(1), images, config))
  for i in range(out.shape[0]):
    zero = out[i] == 0
    rows = np.nonzero(zero.all(axis=1))[0]
    cols = np.nonzero(zero.all(axis=0))[0]
    assert len(rows) <= 14 and len(cols) <= 14
    if len(rows):
      assert rows.max() - rows.min() + 1 == len(rows)  # One band.
    np.testing.assert_array_equal(zero, np.isin(np.arange(128), rows)[:, None]
                                  | np.isin(np.arange(512), cols)[None, :])
  assert (out == 0).any()  # With 8 examples some mask is non-empty.


def test_spec_augment_is_deterministic_under_a_seed():
  config = augment.AugmentConfig()
  a = augment.spec_augment(jax.random.PRNGKey(3), _images(), config)
  b = augment.spec_augment(jax.random.PRNGKey(3), _images(), config)
  c = augment.spec_augment(jax.random.PRNGKey(4), _images(), config)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_spec_augment_off():
  config = augment.AugmentConfig(freq_mask_max_width=0, time_mask_max_width=0)
  images = _images()
  np.testing.assert_array_equal(
      augment.spec_augment(jax.random.PRNGKey(0), images, config), images)


def test_mixup_in_exponential_domain_with_soft_labels():
  config = augment.AugmentConfig(mixup=True)
  images = _images(4)
  targets = jax.nn.one_hot(jnp.arange(4), 5)
  mixed, soft, lam = augment.mixup(jax.random.PRNGKey(0), images, targets,
                                   config)
  lam = np.asarray(lam)
  assert np.all((lam >= 0) & (lam <= 1))
  np.testing.assert_allclose(soft.sum(1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(soft[1, 1], lam[1], rtol=1e-6)
  np.testing.assert_allclose(soft[1, 0], 1 - lam[1], rtol=1e-6)
  # Pixel p is 20 log10(amplitude) mapped from [-100, 0] dB onto 0..255.
  def amp(p):
    return 10 ** ((np.asarray(p, np.float64) / 255 * 100 - 100) / 20)

  want_amp = lam[2] * amp(images[2]) + (1 - lam[2]) * amp(images[1])
  want = (20 * np.log10(want_amp) + 100) / 100 * 255
  np.testing.assert_allclose(mixed[2], want, atol=1e-2)
  # Louder than the plain (log-domain) average wherever the two differ.
  plain = lam[2] * images[2] + (1 - lam[2]) * images[1]
  assert np.all(np.asarray(mixed[2]) >= np.asarray(plain) - 1e-2)


def test_augment_deterministic_and_mixup_switch():
  images, targets = _images(4), jax.nn.one_hot(jnp.arange(4), 4)
  off = augment.AugmentConfig()
  _, t = augment.augment(jax.random.PRNGKey(0), images, targets, off)
  np.testing.assert_array_equal(t, targets)
  on = augment.AugmentConfig(mixup=True)
  a = augment.augment(jax.random.PRNGKey(0), images, targets, on)
  b = augment.augment(jax.random.PRNGKey(0), images, targets, on)
  np.testing.assert_array_equal(a[0], b[0])
  assert not np.array_equal(a[1], targets)

