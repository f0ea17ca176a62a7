"""BERT-style text encoder (bidirectional, padding-masked), sized by name."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models.layers import Dtype, Encoder, Tokens, resolve_size

SIZES = {
    "nano": dict(width=32, depth=1, mlp_dim=64, num_heads=2),
    "mu": dict(width=64, depth=2, mlp_dim=256, num_heads=2),
    "Ti": dict(width=192, depth=12, mlp_dim=768, num_heads=3),
    "S": dict(width=384, depth=12, mlp_dim=1536, num_heads=6),   # MiniLM-L12-sized
    "B": dict(width=768, depth=12, mlp_dim=3072, num_heads=12),  # BERT-base
    "L": dict(width=1024, depth=24, mlp_dim=4096, num_heads=16),  # BERT-large
}


def parse_variant(variant: str, **overrides) -> dict[str, int]:
  return resolve_size(variant, SIZES, overrides)


class TextEncoder(nn.Module):
  """Token ids [B, T] int32 and mask [B, T] bool -> Tokens [B, T, width].

  The tokenizer puts [CLS] at position 0, so token 0 summarises the text.
  Outputs at real positions do not depend on what padded positions hold.
  """

  vocab_size: int
  max_len: int
  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, text_ids: jax.Array, text_mask: jax.Array, *, train: bool) -> Tokens:
    length = text_ids.shape[1]
    if length > self.max_len:
      raise ValueError(f"text length {length} exceeds the encoder's max_len {self.max_len}")
    embed = nn.Embed(self.vocab_size, self.width, embedding_init=nn.initializers.normal(0.02),
                     dtype=self.dtype, param_dtype=self.param_dtype, name="token_embedding")
    pos = self.param("pos_embedding", nn.initializers.normal(stddev=0.02),
                     (1, self.max_len, self.width), self.param_dtype)
    tokens = embed(text_ids) + pos[:, :length].astype(self.dtype)
    tokens = nn.Dropout(self.dropout_rate)(tokens, deterministic=not train)
    return Encoder(self.depth, self.num_heads, self.mlp_dim, dropout_rate=self.dropout_rate,
                   dtype=self.dtype, param_dtype=self.param_dtype,
                   name="encoder")(Tokens(tokens, text_mask.astype(bool)), train=train)
