"""Masked autoencoder on spectrogram windows (AudioMAE, Huang et al. 2022).

The encoder is the ViT of `vit.py` (same parameter names, so a fine-tune
loads it into a `vit_*16` classifier) with fixed 2-D sin-cos position
embeddings; it sees only the visible 16 x 16 patches of the model image
(the frontend is inside, as for the classifier: waveform in). The decoder
(`decoder_*` parameters, dropped after pretraining) fills in mask tokens
and predicts every patch's pixels, with global attention (8 blocks) or
AudioMAE's shifted local-window attention (16 blocks, Swin-style windows
with relative position bias, shifted on odd blocks). The loss is the mean
squared error on masked patches only, against per-patch-normalised targets
(He et al. 2022, s. 3; "norm_pix_loss"), the objective of the MAE study on
iNatSounds (Liu et al. 2026, s. 3).

Masking draws its randomness from the "mask" rng stream; without one
(initialisation, evaluation) a fixed key is used, so evaluation losses of
different checkpoints are measured on the same masks.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from inatsounds_jax import frontend as frontend_lib
from inatsounds_jax import registry
from inatsounds_jax.models import classifier as classifier_lib
from inatsounds_jax.models import image as image_lib
from inatsounds_jax.models import layers as layers_lib
from inatsounds_jax.models import vit

MASKINGS = ("random", "time", "frequency")
DECODERS = {"global": 8, "local": 16}  # Default depths (AudioMAE).


def patchify(images: jax.Array, patch: int) -> jax.Array:
  """NHWC `[b, H, W, C]` -> `[b, (H/p) * (W/p), p * p * C]`, row-major."""
  b, h, w, c = images.shape
  x = images.reshape(b, h // patch, patch, w // patch, patch, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, patch * patch * c)


def unpatchify(patches: jax.Array, grid, patch: int, channels: int
               ) -> jax.Array:
  """Inverse of `patchify`."""
  b = patches.shape[0]
  rows, cols = grid
  x = patches.reshape(b, rows, cols, patch, patch, channels)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(
      b, rows * patch, cols * patch, channels)


def normalise_patches(patches: jax.Array) -> jax.Array:
  """Each patch to zero mean and unit variance (MAE's norm_pix_loss target:
  unbiased variance, eps 1e-6)."""
  mean = patches.mean(axis=-1, keepdims=True)
  var = patches.var(axis=-1, keepdims=True, ddof=1)
  return (patches - mean) / jnp.sqrt(var + 1e-6)


def random_mask(rng: jax.Array, batch: int, grid, ratio: float,
                masking: str = "random") -> tuple[jax.Array, jax.Array]:
  """(ids of the kept patches `[batch, keep]`, mask `[batch, n]` 1 = masked).

  "random" masks `round(n * ratio)` patches; "time" masks whole time
  columns (`round(cols * ratio)` of them) and "frequency" whole frequency
  rows, so those keep `rows * kept columns` (resp. `cols * kept rows`).
  """
  rows, cols = grid
  n = rows * cols
  # Noise per patch, or shared by a column (time) or a row (frequency).
  shape = {"random": (batch, rows, cols), "time": (batch, 1, cols),
           "frequency": (batch, rows, 1)}[masking]
  noise = jnp.broadcast_to(jax.random.uniform(rng, shape),
                           (batch, rows, cols)).reshape(batch, n)
  keep = visible_patches(grid, ratio, masking)
  # A stable sort keeps the patches of one column (row) together.
  order = jnp.argsort(noise, axis=1, stable=True)
  ids_keep = order[:, :keep]
  mask = jnp.ones((batch, n), jnp.float32).at[
      jnp.arange(batch)[:, None], ids_keep].set(0.0)
  return ids_keep, mask


def visible_patches(grid, ratio: float, masking: str) -> int:
  """How many patches `random_mask` keeps visible."""
  rows, cols = grid
  if masking == "time":
    return rows * (cols - int(round(cols * ratio)))
  if masking == "frequency":
    return cols * (rows - int(round(rows * ratio)))
  return rows * cols - int(round(rows * cols * ratio))


def masked_patch_loss(predictions: jax.Array, targets: jax.Array,
                      mask: jax.Array) -> jax.Array:
  """Per-window mean squared error over the masked patches only `[batch]`."""
  per_patch = jnp.mean((predictions - targets) ** 2, axis=-1)
  return (per_patch * mask).sum(-1) / mask.sum(-1)


def _window_partition(x: jax.Array, window) -> jax.Array:
  """`[b, H, W, ...]` -> `[b * nw, wh * ww, ...]`."""
  b, h, w = x.shape[:3]
  wh, ww = window
  rest = x.shape[3:]
  x = x.reshape((b, h // wh, wh, w // ww, ww) + rest)
  x = jnp.moveaxis(x, 2, 3)  # b, H/wh, W/ww, wh, ww, ...
  return x.reshape((b * (h // wh) * (w // ww), wh * ww) + rest)


def _window_merge(x: jax.Array, batch: int, grid, window) -> jax.Array:
  """Inverse of `_window_partition`."""
  (h, w), (wh, ww) = grid, window
  rest = x.shape[2:]
  x = x.reshape((batch, h // wh, w // ww, wh, ww) + rest)
  x = jnp.moveaxis(x, 3, 2)
  return x.reshape((batch, h, w) + rest)


def shifted_window_regions(grid, window, shift) -> np.ndarray:
  """`[nw, wh*ww, wh*ww]` True where two tokens of a window may attend to
  each other after the cyclic shift (same region of the unshifted grid)."""
  h, w = grid
  labels = np.zeros((h, w), np.int32)
  region = 0
  for rows in (slice(0, -window[0]), slice(-window[0], -shift[0]),
               slice(-shift[0], None)):
    for cols in (slice(0, -window[1]), slice(-window[1], -shift[1]),
                 slice(-shift[1], None)):
      labels[rows, cols] = region
      region += 1
  windows = labels.reshape(h // window[0], window[0], w // window[1],
                           window[1]).transpose(0, 2, 1, 3).reshape(
                               -1, window[0] * window[1])
  return windows[:, :, None] == windows[:, None, :]


def relative_position_index(window) -> np.ndarray:
  """`[wh*ww, wh*ww]` index into a `(2wh-1)(2ww-1)` bias table (Swin)."""
  coords = np.stack(np.meshgrid(np.arange(window[0]), np.arange(window[1]),
                                indexing="ij")).reshape(2, -1)
  rel = coords[:, :, None] - coords[:, None, :]
  return ((rel[0] + window[0] - 1) * (2 * window[1] - 1) +
          rel[1] + window[1] - 1)


class MaskedAutoencoder(classifier_lib.WindowedModel, nn.Module):
  """Waveforms `[batch, samples]` -> reconstruction outputs (a dict).

  Attributes:
    size: encoder size, a key of `vit.SIZES` ("b" = ViT-B).
    mask_ratio: fraction of patches (columns, rows) masked, in (0, 1).
    masking: one of `MASKINGS`.
    decoder: "global" or "local" (shifted windows).
    decoder_depth: 0 = the default of the decoder kind (8 / 16).
    local_window: window of the local decoder, in patches (rows, cols).
    norm_pix_loss: normalise each target patch (mean 0, variance 1).
  """
  size: str = "b"
  frontend: frontend_lib.FrontendConfig = frontend_lib.INATSOUNDS
  image: image_lib.ImageConfig = image_lib.ImageConfig(size=None, channels=1)
  window_frames: int = 512
  mask_ratio: float = 0.8
  masking: str = "random"
  decoder: str = "local"
  decoder_width: int = 512
  decoder_depth: int = 0
  decoder_heads: int = 16
  local_window: tuple[int, int] = (4, 4)
  norm_pix_loss: bool = True
  drop_path: float = 0.0
  dtype: Any = jnp.float32

  def __post_init__(self):
    super().__post_init__()
    check_options(self)

  @property
  def grid(self) -> tuple[int, int]:
    return vit.grid_size(self.image_size)

  @property
  def patch_pixels(self) -> int:
    return vit.PATCH * vit.PATCH * self.image.channels

  def setup(self):
    self.spectrogram_frontend = frontend_lib.Frontend(self.frontend)

  def spectrogram(self, waveform: jax.Array) -> jax.Array:
    """`[batch, mel, frames]` image, values 0..255."""
    return self.spectrogram_frontend(waveform)

  # -- Encoder --------------------------------------------------------------

  def encode(self, images: jax.Array, ids_keep: jax.Array,
             train: bool) -> jax.Array:
    """Visible patches `[b, keep]` of model images -> `[b, 1 + keep, D]`."""
    width, depth, heads, mlp = vit.SIZES[self.size]
    L = layers_lib.Layers(self.dtype, train, 0.9, 1e-5)  # pylint: disable=invalid-name
    x = L.conv("patch_embed_proj", width, vit.PATCH, vit.PATCH, bias=True,
               padding="VALID")(images)
    x = x.reshape((x.shape[0], -1, width))
    x = x + vit.sincos_pos_embed(width, self.grid)[None].astype(x.dtype)
    x = jnp.take_along_axis(x, ids_keep[:, :, None], axis=1)
    # The class token's position embedding is zero (MAE).
    cls = self.param("cls_token", nn.initializers.normal(0.02), (1, 1, width))
    x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, width)
                                          ).astype(x.dtype), x], axis=1)
    for i in range(depth):
      x = vit.encoder_block(
          x, prefix=f"blocks_{i}_", heads=heads, mlp=mlp, layers=L,
          drop_path=self.drop_path * i / max(depth - 1, 1), dropout=0.0,
          train=train)
    return nn.LayerNorm(1e-6, dtype=self.dtype, name="norm")(x)

  # -- Decoder --------------------------------------------------------------

  def _local_attention(self, index: int, batch: int) -> Any:
    """Windowed attention for decoder block `index` (shifted when odd)."""
    window = tuple(self.local_window)
    shift = (window[0] // 2, window[1] // 2) if index % 2 else (0, 0)
    table = self.param(
        f"decoder_blocks_{index}_attn_relative_position_bias_table",
        nn.initializers.truncated_normal(0.02),
        ((2 * window[0] - 1) * (2 * window[1] - 1), self.decoder_heads))
    bias = table[relative_position_index(window).reshape(-1)].reshape(
        window[0] * window[1], window[0] * window[1], -1).transpose(2, 0, 1)
    allowed = (shifted_window_regions(self.grid, window, shift)
               if any(shift) else None)

    def attend(q, k, v):
      def windows(t):
        t = t.reshape((batch,) + self.grid + t.shape[2:])
        t = jnp.roll(t, (-shift[0], -shift[1]), axis=(1, 2))
        return _window_partition(t, window)
      qw, kw, vw = windows(q), windows(k), windows(v)
      b = jnp.broadcast_to(bias[None], (qw.shape[0],) + bias.shape)
      mask = None
      if allowed is not None:
        mask = jnp.tile(jnp.asarray(allowed), (batch, 1, 1))[:, None]
      out = jax.nn.dot_product_attention(qw, kw, vw, bias=b.astype(qw.dtype),
                                         mask=mask)
      out = _window_merge(out, batch, self.grid, window)
      out = jnp.roll(out, shift, axis=(1, 2))
      return out.reshape(q.shape)

    return attend

  def decode(self, latent: jax.Array, ids_keep: jax.Array,
             train: bool) -> jax.Array:
    """Encoder tokens -> predicted pixels of every patch `[b, n, p*p*C]`."""
    b = latent.shape[0]
    n = self.grid[0] * self.grid[1]
    width = self.decoder_width
    depth = self.decoder_depth or DECODERS[self.decoder]
    L = layers_lib.Layers(self.dtype, train, 0.9, 1e-5)  # pylint: disable=invalid-name
    x = L.dense("decoder_embed", width)(latent)
    mask_token = self.param("mask_token", nn.initializers.normal(0.02),
                            (1, 1, width))
    # Scatter the visible tokens to their places; mask tokens elsewhere.
    patches = jnp.broadcast_to(mask_token, (b, n, width)).astype(x.dtype)
    patches = patches.at[jnp.arange(b)[:, None], ids_keep].set(x[:, 1:])
    patches = patches + vit.sincos_pos_embed(width, self.grid)[None].astype(
        x.dtype)
    if self.decoder == "global":
      x = jnp.concatenate([x[:, :1], patches], axis=1)
    else:  # Windows tile the patch grid; the class token has no place.
      x = patches
    for i in range(depth):
      x = vit.encoder_block(
          x, prefix=f"decoder_blocks_{i}_", heads=self.decoder_heads,
          mlp=4 * width, layers=L, drop_path=0.0, dropout=0.0, train=train,
          attend=(self._local_attention(i, b) if self.decoder == "local"
                  else None))
    x = nn.LayerNorm(1e-6, dtype=self.dtype, name="decoder_norm")(x)
    x = L.dense("decoder_pred", self.patch_pixels)(x)
    if self.decoder == "global":
      x = x[:, 1:]
    return x.astype(jnp.float32)

  # -- Together --------------------------------------------------------------

  @nn.compact
  def reconstruct(self, images: jax.Array, train: bool = False) -> dict:
    """Spectrogram images `[b, mel, frames]` (0..255) -> a dict of
    `loss` `[b]` (each window's masked-patch MSE), `mask` `[b, n]`
    (1 = masked), `predictions` and `targets` `[b, n, p*p*C]` (in the
    normalised-patch space when `norm_pix_loss`), `patch_mean`,
    `patch_std` `[b, n, 1]` (to map predictions back to the image) and
    `image` (the model image `[b, H, W, C]`)."""
    x = image_lib.to_model_image(images, self.image).astype(self.dtype)
    rng = (self.make_rng("mask") if self.has_rng("mask")
           else jax.random.PRNGKey(0))
    ids_keep, mask = random_mask(rng, x.shape[0], self.grid, self.mask_ratio,
                                 self.masking)
    predictions = self.decode(self.encode(x, ids_keep, train), ids_keep,
                              train)
    raw = patchify(x.astype(jnp.float32), vit.PATCH)
    mean = raw.mean(axis=-1, keepdims=True)
    std = jnp.sqrt(raw.var(axis=-1, keepdims=True, ddof=1) + 1e-6)
    if self.norm_pix_loss:
      targets = normalise_patches(raw)
    else:
      targets, mean, std = raw, jnp.zeros_like(mean), jnp.ones_like(std)
    return {"loss": masked_patch_loss(predictions, targets, mask),
            "mask": mask, "predictions": predictions, "targets": targets,
            "patch_mean": mean, "patch_std": std,
            "image": x.astype(jnp.float32)}

  def __call__(self, waveform: jax.Array, train: bool = False) -> dict:
    return self.reconstruct(self.spectrogram(waveform), train=train)


def check_options(model: MaskedAutoencoder) -> None:
  """Raises `registry.ConfigError` naming the option and the problem."""
  if model.size not in vit.SIZES:
    raise registry.ConfigError(
        f"mae.size {model.size!r} is not one of {sorted(vit.SIZES)}")
  if not 0.0 < model.mask_ratio < 1.0:
    raise registry.ConfigError(
        f"mae.mask_ratio={model.mask_ratio} must be in (0, 1)")
  if model.masking not in MASKINGS:
    raise registry.ConfigError(
        f"mae.masking {model.masking!r} is not one of {MASKINGS}")
  if model.decoder not in DECODERS:
    raise registry.ConfigError(
        f"mae.decoder {model.decoder!r} is not one of {sorted(DECODERS)}")
  h, w = model.image_size
  if h % vit.PATCH or w % vit.PATCH:
    raise registry.ConfigError(
        f"the patch size {vit.PATCH} does not divide the MAE input "
        f"{h} x {w} (mel bands x frames, or image.size)")
  if model.decoder == "local":
    rows, cols = vit.grid_size(model.image_size)
    wr, wc = model.local_window
    if rows % wr or cols % wc:
      raise registry.ConfigError(
          f"mae.local_window {tuple(model.local_window)} does not tile the "
          f"{rows} x {cols} patch grid")
  if model.decoder_width % model.decoder_heads or model.decoder_width % 4:
    raise registry.ConfigError(
        f"mae.decoder_width={model.decoder_width} must be divisible by 4 "
        f"and by decoder_heads={model.decoder_heads}")
  grid = vit.grid_size(model.image_size)
  kept = visible_patches(grid, model.mask_ratio, model.masking)
  if not 0 < kept < grid[0] * grid[1]:
    raise registry.ConfigError(
        f"mae.mask_ratio={model.mask_ratio} with masking {model.masking!r} "
        f"keeps {kept} of the {grid[0]} x {grid[1]} patches visible; it "
        "must keep some and mask some")
