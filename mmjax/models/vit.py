"""Vision Transformer image encoder, sized by name ("mu/2", "Ti/16", "S/16", "B/16", "L/14")."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.config import ConfigError
from mmjax.models.layers import Dtype, Encoder, Tokens, resolve_size

# width, depth, mlp_dim, num_heads (ViT paper sizes, plus "mu" and "nano" for laptops and tests).
SIZES = {
    "nano": dict(width=32, depth=1, mlp_dim=64, num_heads=2),
    "mu": dict(width=64, depth=2, mlp_dim=256, num_heads=2),
    "Ti": dict(width=192, depth=12, mlp_dim=768, num_heads=3),
    "S": dict(width=384, depth=12, mlp_dim=1536, num_heads=6),
    "M": dict(width=512, depth=12, mlp_dim=2048, num_heads=8),
    "B": dict(width=768, depth=12, mlp_dim=3072, num_heads=12),
    "L": dict(width=1024, depth=24, mlp_dim=4096, num_heads=16),
    "H": dict(width=1280, depth=32, mlp_dim=5120, num_heads=16),
}


def parse_variant(variant: str, **overrides) -> dict[str, int]:
  """"S/16" -> dict(width=384, depth=12, mlp_dim=1536, num_heads=6, patch_size=16)."""
  name, sep, patch = variant.partition("/")
  if not sep or not patch.isdigit():
    raise ConfigError(f"ViT variant '{variant}' must look like NAME/PATCH, e.g. 'S/16'")
  size = resolve_size(name, SIZES, overrides)
  size["patch_size"] = int(patch)
  return size


class ViT(nn.Module):
  """Images [B, H, W, C] (float, already normalised) -> Tokens [B, 1 + H*W/patch^2, width].

  Token 0 is a learned [CLS] token; the rest are patch tokens in row-major order.
  """

  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  patch_size: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> Tokens:
    batch, height, width, _ = images.shape
    if height % self.patch_size or width % self.patch_size:
      raise ValueError(f"image size {height}x{width} is not divisible by patch size "
                       f"{self.patch_size}")
    patches = nn.Conv(
        self.width, (self.patch_size, self.patch_size), strides=self.patch_size,
        padding="VALID", dtype=self.dtype, param_dtype=self.param_dtype,
        name="patch_embedding")(images.astype(self.dtype))
    patches = patches.reshape(batch, -1, self.width)
    cls = self.param("cls", nn.initializers.zeros, (1, 1, self.width), self.param_dtype)
    tokens = jnp.concatenate([jnp.tile(cls.astype(self.dtype), (batch, 1, 1)), patches], axis=1)
    pos = self.param("pos_embedding", nn.initializers.normal(stddev=0.02),
                     (1, tokens.shape[1], self.width), self.param_dtype)
    tokens = tokens + pos.astype(self.dtype)
    tokens = nn.Dropout(self.dropout_rate)(tokens, deterministic=not train)
    mask = jnp.ones(tokens.shape[:2], dtype=bool)
    return Encoder(self.depth, self.num_heads, self.mlp_dim, dropout_rate=self.dropout_rate,
                   dtype=self.dtype, param_dtype=self.param_dtype,
                   name="encoder")(Tokens(tokens, mask), train=train)
