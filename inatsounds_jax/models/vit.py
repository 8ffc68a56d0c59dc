"""Vision Transformers with 16x16 patches (timm / torchvision layout).

Patch conv, class token, learned position embeddings, pre-norm blocks (layer
norm eps 1e-6, fused qkv attention, exact-GELU MLP), final norm, head on the
class token. Non-square inputs (e.g. a 128 x 512 spectrogram) work: the
position embeddings cover the patch grid of `image_size`, and
`resample_pos_embed` moves weights trained at 224 x 224 to another grid.
`global_pool="avg"` pools the patch tokens (mean, then `fc_norm`: the MAE
fine-tuning head) and `head_batchnorm` adds MAE's non-affine batch norm for
linear probing. `encoder_block` and `sincos_pos_embed` are shared with the
masked autoencoder (`mae.py`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from inatsounds_jax.models import attention
from inatsounds_jax.models import layers as layers_lib

# width, depth, heads, MLP width.
SIZES = {
    "ti": (192, 12, 3, 768),
    "s": (384, 12, 6, 1536),
    "b": (768, 12, 12, 3072),
    "l": (1024, 24, 16, 4096),
    # Not a published size: two narrow blocks for CPU smoke runs and tests.
    "mu": (64, 2, 2, 128),
}
PATCH = 16


class ViT(nn.Module):
  """NHWC images -> logits `[batch, num_classes]`; with `with_embedding`,
  (the head's input `[batch, width]`: the normed class token, or the normed
  patch mean with `global_pool="avg"`, after `head_batchnorm` if set;
  logits)."""
  size: str
  num_classes: int
  image_size: tuple[int, int] = (224, 224)
  dtype: Any = jnp.float32
  dropout: float = 0.0
  drop_path: float = 0.0
  head_bias_init: float = 0.0
  global_pool: str = "token"  # "token" (class token) or "avg" (patch mean).
  head_batchnorm: bool = False  # Non-affine batch norm before the head.
  class_token: bool = True  # False: patch tokens only (needs "avg" pooling).

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               with_embedding: bool = False):
    width, depth, heads, mlp = SIZES[self.size]
    if tuple(x.shape[1:3]) != tuple(self.image_size):
      raise ValueError(f"ViT built for {self.image_size} images got "
                       f"{x.shape[1:3]}; set image_size or resample weights")
    if self.global_pool not in ("token", "avg"):
      raise ValueError(f"global_pool must be 'token' or 'avg', got "
                       f"{self.global_pool!r}")
    if not self.class_token and self.global_pool == "token":
      raise ValueError("a ViT without class token needs global_pool='avg'")
    L = layers_lib.Layers(self.dtype, train, 0.9, 1e-5)  # pylint: disable=invalid-name

    def norm(name):
      return nn.LayerNorm(1e-6, dtype=self.dtype, name=name)

    x = L.conv("patch_embed_proj", width, PATCH, PATCH, bias=True,
               padding="VALID")(x)
    x = x.reshape((x.shape[0], -1, width))
    if self.class_token:
      cls = self.param("cls_token", nn.initializers.zeros, (1, 1, width))
      x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, width)
                                            ).astype(x.dtype), x], axis=1)
    pos = self.param("pos_embed", nn.initializers.normal(0.02),
                     (1, x.shape[1], width))
    x = nn.Dropout(self.dropout, deterministic=not train)(x + pos)
    for i in range(depth):
      x = encoder_block(
          x, prefix=f"blocks_{i}_", heads=heads, mlp=mlp, layers=L,
          drop_path=self.drop_path * i / max(depth - 1, 1),
          dropout=self.dropout, train=train)
    if self.global_pool == "avg":
      # Mean of the patch tokens, then its own norm (timm's "avg" pooling,
      # the MAE fine-tuning head of He et al. 2022, s. A.2).
      x = norm("fc_norm")(x[:, int(self.class_token):].mean(axis=1))
    else:
      x = norm("norm")(x)[:, 0]
    if self.head_batchnorm:
      # Linear probing (He et al. 2022, s. A.3): a batch norm without affine
      # parameters calibrates the frozen features for the linear head.
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                       epsilon=1e-6, use_bias=False, use_scale=False,
                       dtype=self.dtype, name="head_norm")(x)
    logits = L.dense("head", self.num_classes, self.head_bias_init)(x)
    return layers_lib.backbone_output(x, logits, with_embedding)


def encoder_block(x: jax.Array, *, prefix: str, heads: int, mlp: int,
                  layers: layers_lib.Layers, drop_path: float, dropout: float,
                  train: bool, attend: Callable | None = None) -> jax.Array:
  """One pre-norm transformer block on tokens `[batch, n, width]`.

  Called inside a compact module, so its layers are that module's, named
  `prefix + norm1 | attn_qkv | attn_proj | norm2 | mlp_fc1 | mlp_fc2` (timm's
  `blocks.i.*`). `attend(q, k, v)` (`[batch, n, heads, head_dim]` each)
  replaces global attention, e.g. with windowed attention.
  """
  width = x.shape[-1]
  head_dim = width // heads

  def norm(name):
    return nn.LayerNorm(1e-6, dtype=layers.dtype, name=name)

  y = norm(prefix + "norm1")(x)
  qkv = layers.dense(prefix + "attn_qkv", 3 * width)(y)
  qkv = qkv.reshape(x.shape[:2] + (3, heads, head_dim))
  if attend is None:
    y = attention.self_attention(qkv)
  else:
    y = attend(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
  y = y.reshape(x.shape)
  y = layers.dense(prefix + "attn_proj", width)(y)
  y = nn.Dropout(dropout, deterministic=not train)(y)
  x = x + layers_lib.DropPath(drop_path, name=prefix + "drop_path1")(y, train)
  y = norm(prefix + "norm2")(x)
  y = layers_lib.gelu_exact(layers.dense(prefix + "mlp_fc1", mlp)(y))
  y = nn.Dropout(dropout, deterministic=not train)(y)
  y = layers.dense(prefix + "mlp_fc2", width)(y)
  y = nn.Dropout(dropout, deterministic=not train)(y)
  return x + layers_lib.DropPath(drop_path, name=prefix + "drop_path2")(
      y, train)


def sincos_pos_embed(width: int, grid) -> np.ndarray:
  """Fixed 2-D sin-cos position embeddings `[rows * cols, width]`.

  The MAE layout (He et al. 2022; AudioMAE, Huang et al. 2022): the first
  half of the channels encodes the column (time) index, the second half the
  row (frequency) index, each as [sin | cos] of the index times
  1 / 10000^(k / (width / 4)); patches in row-major order.
  """
  if width % 4:
    raise ValueError(f"sin-cos position embeddings need a width divisible "
                     f"by 4, got {width}")
  rows, cols = grid
  omega = 1.0 / 10000 ** (np.arange(width // 4, dtype=np.float64) /
                          (width / 4.0))

  def one_axis(positions):
    angles = np.outer(positions.reshape(-1), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

  row_index, col_index = np.meshgrid(np.arange(rows), np.arange(cols),
                                     indexing="ij")
  return np.concatenate([one_axis(col_index), one_axis(row_index)],
                        axis=1).astype(np.float32)


def block_index(param_name: str) -> int | None:
  """i for a parameter of `blocks_i_*`, else None."""
  match = re.match(r"blocks_(\d+)_", param_name)
  return int(match.group(1)) if match else None


def layer_index(param_name: str, depth: int) -> int:
  """The layer a ViT parameter belongs to, for layer-wise learning rates:
  0 the embeddings (patch, class token, position), i + 1 block i, depth + 1
  everything after the blocks (final norm, head)."""
  if param_name in EMBEDDING_PARAMS:
    return 0
  block = block_index(param_name)
  return depth + 1 if block is None else block + 1


EMBEDDING_PARAMS = ("patch_embed_proj", "cls_token", "pos_embed")


def grid_size(image_size) -> tuple[int, int]:
  return image_size[0] // PATCH, image_size[1] // PATCH


def resample_pos_embed(pos_embed: np.ndarray, old_grid, new_grid,
                       transpose: bool = False) -> np.ndarray:
  """[1, c + h*w, D] -> [1, c + H*W, D]: bilinear on the patch grid.

  c (0 or 1) is whether there is a class token; its embedding is kept.
  `transpose` first swaps the grid's axes (weights trained on time-major
  spectrograms, as AudioMAE's [time, mel] input, moved to our [mel, time]
  images). An unchanged grid is returned as is.
  """
  prefix = pos_embed.shape[1] - old_grid[0] * old_grid[1]
  cls, grid = pos_embed[:, :prefix], pos_embed[:, prefix:]
  grid = grid.reshape((1,) + tuple(old_grid) + (-1,))
  if transpose:
    grid = grid.transpose(0, 2, 1, 3)
    old_grid = tuple(old_grid)[::-1]
  if tuple(old_grid) == tuple(new_grid):
    return np.concatenate([cls, grid.reshape(1, -1, grid.shape[-1])], axis=1)
  grid = jax.image.resize(grid, (1,) + tuple(new_grid) + (grid.shape[-1],),
                          "bilinear", antialias=False)
  return np.concatenate(
      [cls, np.asarray(grid).reshape(1, -1, pos_embed.shape[-1])], axis=1)
