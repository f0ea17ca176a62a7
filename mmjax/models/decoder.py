"""Causal text decoder: next-token logits given earlier tokens and a context (fused tokens)."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models.layers import BlockOptions, Dtype, Encoder, Tokens, dense, embed_tokens


class TextDecoder(nn.Module):
  """Token ids [B, T] int32 + context Tokens [B, S, D'] -> logits [B, T, vocab_size] float32.

  Token embedding + learned positional embedding, then `depth` blocks of causal
  self-attention, cross-attention to the context (padded context tokens are ignored through
  `context.mask`) and MLP, then a final LayerNorm (pre-norm stacks only: post-norm blocks
  already end normalised), then vocabulary logits. Logits at position t depend only on
  tokens 0..t and the context, so right padding of `token_ids` needs no mask: callers mask
  the loss instead. Self-attention is causal whatever `options.causal` says.

  Parameters: `token_embedding`, `pos_embedding` [1, max_len, width], `decoder` (the block
  stack, as in `layers.Encoder`) and, unless `tie_embeddings`, `logits` (a Dense
  [width, vocab_size]). With `tie_embeddings` the logits are the final activations times the
  transposed token embedding table.
  """

  vocab_size: int
  max_len: int
  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  tie_embeddings: bool = False
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  options: BlockOptions = BlockOptions()

  @nn.compact
  def __call__(self, token_ids: jax.Array, context: Tokens, *, train: bool) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    tokens, embed = embed_tokens(self, token_ids, vocab_size=self.vocab_size, width=self.width,
                                 max_len=self.max_len, **kw)
    tokens = nn.Dropout(self.dropout_rate)(tokens, deterministic=not train)
    options = dataclasses.replace(self.options, causal=True)
    mask = jnp.ones(token_ids.shape, dtype=bool)
    hidden = Encoder(self.depth, self.num_heads, self.mlp_dim, cross_attention=True,
                     dropout_rate=self.dropout_rate, options=options,
                     final_norm=options.norm_position == "pre", name="decoder", **kw)(
                         Tokens(tokens, mask), context, train=train).tokens
    if self.tie_embeddings:
      logits = embed.attend(hidden)
    else:
      logits = dense(self.vocab_size, "logits", **kw)(hidden)
    return logits.astype(jnp.float32)
