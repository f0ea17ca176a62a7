"""BERT-style text encoder (bidirectional, padding-masked), sized by name.

The defaults are mmjax's own pre-norm encoder. Fields with defaults express the pretrained
architectures the converters load (`mmjax.convert`):

  BERT:       options=BlockOptions("post", "gelu", 1e-12), type_vocab_size=2, embed_norm=True,
              final_norm=False, pooler="cls_tanh"
  CLIP text:  options=BlockOptions("pre", "quick_gelu", 1e-5, causal=True), pooler="eos",
              projection_dim=512 (eos_token_id: see `TextEncoder`)
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
  embed_tokens,
  perturbation_point,
  resolve_size,
)

SIZES = {
    "nano": dict(width=32, depth=1, mlp_dim=64, num_heads=2),
    "mu": dict(width=64, depth=2, mlp_dim=256, num_heads=2),
    "Ti": dict(width=192, depth=12, mlp_dim=768, num_heads=3),
    "S": dict(width=384, depth=12, mlp_dim=1536, num_heads=6),   # MiniLM-L12-sized
    "B": dict(width=768, depth=12, mlp_dim=3072, num_heads=12),  # BERT-base
    "L": dict(width=1024, depth=24, mlp_dim=4096, num_heads=16),  # BERT-large
}
# none: no pooled output; cls_tanh: tanh(Dense(token 0)) (BERT); eos: the hidden state at
# the end-of-text token (CLIP).
POOLERS = ("none", "cls_tanh", "eos")


def parse_variant(variant: str, **overrides) -> dict[str, int]:
  return resolve_size(variant, SIZES, overrides)


class TextEncoder(nn.Module):
  """Token ids [B, T] int32 and mask [B, T] bool -> Tokens [B, T, width].

  The tokenizer puts [CLS] at position 0, so token 0 summarises the text.
  Outputs at real positions do not depend on what padded positions hold.
  `embed(...)` gives one pooled (and, with `projection_dim`, projected) vector per text.

  Attributes:
    type_vocab_size: > 0 adds learned token-type (segment) embeddings `type_embedding`.
    embed_norm: LayerNorm `embed_norm` on the summed embeddings (BERT).
    final_norm: LayerNorm `encoder/norm_out` after the blocks (pre-norm stacks need it).
    pooler: one of POOLERS; cls_tanh adds a Dense `pooler`.
    eos_token_id: for pooler="eos", the first position holding this id is pooled; None pools
      the position of the largest id (original CLIP vocabularies, where end-of-text is last).
    projection_dim: > 0 maps the pooled vector through a bias-free Dense `projection`.
    drop_path_rate: stochastic depth of the last block (`layers.Encoder`); 0 = none.

  The embeddings [B, T, width] (token plus position, before token types and `embed_norm`)
  are the tower's perturbation point (`layers.perturbation_point`, adversarial training):
  a perturbation there is one of the token embeddings.
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
  options: BlockOptions = BlockOptions()
  type_vocab_size: int = 0
  embed_norm: bool = False
  final_norm: bool = True
  pooler: str = "none"
  eos_token_id: int | None = None
  projection_dim: int = 0
  drop_path_rate: float = 0.0

  def __call__(self, text_ids: jax.Array, text_mask: jax.Array, *, train: bool,
               type_ids: jax.Array | None = None) -> Tokens:
    """Tokens [B, T, width]; `type_ids` [B, T] int32 (segment ids) default to 0."""
    return self.encode(text_ids, text_mask, type_ids, train=train)[0]

  def embed(self, text_ids: jax.Array, text_mask: jax.Array, *, train: bool = False,
            type_ids: jax.Array | None = None) -> jax.Array:
    """The pooled, then projected embedding [B, projection_dim or width] (pooler != none)."""
    pooled = self.encode(text_ids, text_mask, type_ids, train=train)[1]
    if pooled is None:
      raise ConfigError("TextEncoder.pooler: embed() needs a pooler; expected one of "
                        f"{', '.join(POOLERS[1:])}, got 'none'")
    return pooled

  @nn.compact
  def encode(self, text_ids: jax.Array, text_mask: jax.Array,
             type_ids: jax.Array | None = None, *, train: bool) -> tuple[Tokens, jax.Array | None]:
    """(Tokens [B, T, width], pooled [B, D] or None). Every parameter is created here, so
    `init` through `__call__` also creates the pooler and projection."""
    if self.pooler not in POOLERS:
      raise ConfigError(f"TextEncoder.pooler: unknown pooler '{self.pooler}'; expected one of "
                        f"{', '.join(POOLERS)}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    tokens, _ = embed_tokens(self, text_ids, vocab_size=self.vocab_size, width=self.width,
                             max_len=self.max_len, **kw)
    tokens = perturbation_point(self, tokens)
    if type_ids is not None and not self.type_vocab_size:
      raise ValueError("type_ids were given but the encoder has no token-type embeddings "
                       "(type_vocab_size=0)")
    if self.type_vocab_size:
      type_ids = jnp.zeros_like(text_ids) if type_ids is None else type_ids
      tokens = tokens + nn.Embed(self.type_vocab_size, self.width,
                                 embedding_init=nn.initializers.normal(0.02),
                                 name="type_embedding", **kw)(type_ids)
    if self.embed_norm:
      tokens = nn.LayerNorm(epsilon=self.options.layer_norm_eps, name="embed_norm", **kw)(tokens)
    tokens = nn.Dropout(self.dropout_rate)(tokens, deterministic=not train)
    out = Encoder(self.depth, self.num_heads, self.mlp_dim, dropout_rate=self.dropout_rate,
                  options=self.options, final_norm=self.final_norm,
                  drop_path_rate=self.drop_path_rate, name="encoder",
                  **kw)(Tokens(tokens, text_mask.astype(bool)), train=train)
    pooled = None
    if self.pooler == "cls_tanh":
      pooled = jnp.tanh(dense(self.width, "pooler", **kw)(out.tokens[:, 0]))
    elif self.pooler == "eos":
      ids = text_ids if self.eos_token_id is None else (text_ids == self.eos_token_id)
      pooled = out.tokens[jnp.arange(out.tokens.shape[0]), jnp.argmax(ids, axis=-1)]
    if pooled is not None and self.projection_dim:
      pooled = dense(self.projection_dim, "projection", use_bias=False, **kw)(pooled)
    return out, pooled
