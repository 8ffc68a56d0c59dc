"""Vision Transformers with 16x16 patches (timm / torchvision layout).

Patch conv, class token, learned position embeddings, pre-norm blocks (layer
norm eps 1e-6, fused qkv attention, exact-GELU MLP), final norm, head on the
class token. Non-square inputs (e.g. a 128 x 512 spectrogram) work: the
position embeddings cover the patch grid of `image_size`, and
`resample_pos_embed` moves weights trained at 224 x 224 to another grid.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from inatsounds_jax.models import layers as layers_lib

# width, depth, heads, MLP width.
SIZES = {
    "ti": (192, 12, 3, 768),
    "s": (384, 12, 6, 1536),
    "b": (768, 12, 12, 3072),
    "l": (1024, 24, 16, 4096),
}
PATCH = 16


class ViT(nn.Module):
  """NHWC images -> logits `[batch, num_classes]`."""
  size: str
  num_classes: int
  image_size: tuple[int, int] = (224, 224)
  dtype: Any = jnp.float32
  dropout: float = 0.0
  drop_path: float = 0.0
  head_bias_init: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    width, depth, heads, mlp = SIZES[self.size]
    if tuple(x.shape[1:3]) != tuple(self.image_size):
      raise ValueError(f"ViT built for {self.image_size} images got "
                       f"{x.shape[1:3]}; set image_size or resample weights")
    L = layers_lib.Layers(self.dtype, train, 0.9, 1e-5)  # pylint: disable=invalid-name

    def norm(name):
      return nn.LayerNorm(1e-6, dtype=self.dtype, name=name)

    x = L.conv("patch_embed_proj", width, PATCH, PATCH, bias=True,
               padding="VALID")(x)
    x = x.reshape((x.shape[0], -1, width))
    cls = self.param("cls_token", nn.initializers.zeros, (1, 1, width))
    x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, width)
                                          ).astype(x.dtype), x], axis=1)
    pos = self.param("pos_embed", nn.initializers.normal(0.02),
                     (1, x.shape[1], width))
    x = nn.Dropout(self.dropout, deterministic=not train)(x + pos)
    head_dim = width // heads
    for i in range(depth):
      p = f"blocks_{i}_"
      rate = self.drop_path * i / max(depth - 1, 1)
      y = norm(p + "norm1")(x)
      qkv = L.dense(p + "attn_qkv", 3 * width)(y)
      qkv = qkv.reshape(x.shape[:2] + (3, heads, head_dim))
      q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
      y = jax.nn.dot_product_attention(q, k, v).reshape(x.shape)
      y = L.dense(p + "attn_proj", width)(y)
      y = nn.Dropout(self.dropout, deterministic=not train)(y)
      x = x + layers_lib.DropPath(rate, name=p + "drop_path1")(y, train)
      y = norm(p + "norm2")(x)
      y = layers_lib.gelu_exact(L.dense(p + "mlp_fc1", mlp)(y))
      y = nn.Dropout(self.dropout, deterministic=not train)(y)
      y = L.dense(p + "mlp_fc2", width)(y)
      y = nn.Dropout(self.dropout, deterministic=not train)(y)
      x = x + layers_lib.DropPath(rate, name=p + "drop_path2")(y, train)
    x = norm("norm")(x)[:, 0]
    return L.dense("head", self.num_classes, self.head_bias_init)(x).astype(
        jnp.float32)


def grid_size(image_size) -> tuple[int, int]:
  return image_size[0] // PATCH, image_size[1] // PATCH


def resample_pos_embed(pos_embed: np.ndarray, old_grid, new_grid
                       ) -> np.ndarray:
  """[1, 1 + h*w, D] -> [1, 1 + H*W, D]: bilinear on the patch grid.

  The class token's embedding is kept; an unchanged grid is returned as is.
  """
  if tuple(old_grid) == tuple(new_grid):
    return pos_embed
  cls, grid = pos_embed[:, :1], pos_embed[:, 1:]
  grid = grid.reshape((1,) + tuple(old_grid) + (-1,))
  grid = jax.image.resize(grid, (1,) + tuple(new_grid) + (grid.shape[-1],),
                          "bilinear", antialias=False)
  return np.concatenate(
      [cls, np.asarray(grid).reshape(1, -1, pos_embed.shape[-1])], axis=1)
