"""Vision Transformer image encoder, sized by name ("mu/2", "Ti/16", "S/16", "B/16", "L/14").

The defaults are mmjax's own pre-norm ViT. Fields with defaults express the pretrained
architectures the converters load (`mmjax.convert`):

  HF ViT:       options=BlockOptions("pre", "gelu", 1e-12), pooler="cls_tanh"
  CLIP vision:  options=BlockOptions("pre", "quick_gelu", 1e-5), patch_bias=False,
                pre_norm=True, final_norm=False, pooler="cls_norm", projection_dim=512
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.config import ConfigError
from mmjax.models.layers import (
  BlockOptions,
  Dtype,
  Encoder,
  Tokens,
  dense,
  perturbation_point,
  prepend_cls_add_positions,
  resolve_size,
)

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
# none: no pooled output; cls_tanh: tanh(Dense(token 0)) (HF ViT); cls_norm: LayerNorm
# `pooler_norm` of token 0 (CLIP).
POOLERS = ("none", "cls_tanh", "cls_norm")


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
  `embed(images)` gives one pooled (and, with `projection_dim`, projected) vector per image.

  Attributes:
    patch_bias: the patch-embedding convolution has a bias (CLIP's has none).
    pre_norm: LayerNorm `pre_norm` on the embedded tokens before the blocks (CLIP).
    final_norm: LayerNorm `encoder/norm_out` after the blocks.
    pooler: one of POOLERS.
    projection_dim: > 0 maps the pooled vector through a bias-free Dense `projection`.
    posemb: "learn" (a `pos_embedding` parameter) or "sincos2d" (fixed 2-D sine-cosine
      embeddings of the patch grid, none on [CLS]; they tell near from far patches from
      the first step, which position-reasoning tasks learn much faster with).
    drop_path_rate: stochastic depth of the last block (`layers.Encoder`); 0 = none.

  The patch embeddings [B, N, width] (before [CLS] and positions) are the tower's
  perturbation point (`layers.perturbation_point`, adversarial training).
  """

  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  patch_size: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  options: BlockOptions = BlockOptions()
  patch_bias: bool = True
  pre_norm: bool = False
  final_norm: bool = True
  pooler: str = "none"
  projection_dim: int = 0
  posemb: str = "learn"
  drop_path_rate: float = 0.0

  def __call__(self, images: jax.Array, *, train: bool) -> Tokens:
    return self.encode(images, train=train)[0]

  def embed(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    """The pooled, then projected embedding [B, projection_dim or width] (pooler != none)."""
    pooled = self.encode(images, train=train)[1]
    if pooled is None:
      raise ConfigError("ViT.pooler: embed() needs a pooler; expected one of "
                        f"{', '.join(POOLERS[1:])}, got 'none'")
    return pooled

  @nn.compact
  def encode(self, images: jax.Array, *, train: bool) -> tuple[Tokens, jax.Array | None]:
    """(Tokens [B, N, width], pooled [B, D] or None). Every parameter is created here, so
    `init` through `__call__` also creates the pooler and projection."""
    if self.pooler not in POOLERS:
      raise ConfigError(f"ViT.pooler: unknown pooler '{self.pooler}'; expected one of "
                        f"{', '.join(POOLERS)}")
    batch, height, width, _ = images.shape
    if height % self.patch_size or width % self.patch_size:
      raise ValueError(f"image size {height}x{width} is not divisible by patch size "
                       f"{self.patch_size}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    patches = nn.Conv(
        self.width, (self.patch_size, self.patch_size), strides=self.patch_size,
        padding="VALID", use_bias=self.patch_bias, name="patch_embedding",
        **kw)(images.astype(self.dtype))
    grid = patches.shape[1:3]
    patches = perturbation_point(self, patches.reshape(batch, -1, self.width))
    tokens = prepend_cls_add_positions(self, patches, posemb=self.posemb, grid=grid, **kw)
    tokens = nn.Dropout(self.dropout_rate)(tokens, deterministic=not train)
    if self.pre_norm:
      tokens = nn.LayerNorm(epsilon=self.options.layer_norm_eps, name="pre_norm", **kw)(tokens)
    mask = jnp.ones(tokens.shape[:2], dtype=bool)
    out = Encoder(self.depth, self.num_heads, self.mlp_dim, dropout_rate=self.dropout_rate,
                  options=self.options, final_norm=self.final_norm,
                  drop_path_rate=self.drop_path_rate, name="encoder",
                  **kw)(Tokens(tokens, mask), train=train)
    pooled = None
    if self.pooler == "cls_tanh":
      pooled = jnp.tanh(dense(self.width, "pooler", **kw)(out.tokens[:, 0]))
    elif self.pooler == "cls_norm":
      pooled = nn.LayerNorm(epsilon=self.options.layer_norm_eps, name="pooler_norm",
                            **kw)(out.tokens[:, 0])
    if pooled is not None and self.projection_dim:
      pooled = dense(self.projection_dim, "projection", use_bias=False, **kw)(pooled)
    return out, pooled
