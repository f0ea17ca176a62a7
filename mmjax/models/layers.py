"""Transformer building blocks shared by every tower and fusion module.

Dtype policy: every module takes `dtype` (the compute dtype of activations and matmuls,
e.g. bfloat16) and `param_dtype` (what parameters are stored in, float32 by default).
Masks are boolean, True where a token is real.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from mmjax.config import ConfigError

Dtype = Any

# No float16: it needs loss scaling, which the train step does not do.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def dtype_from_name(name: str) -> Dtype:
  try:
    return DTYPES[name]
  except KeyError:
    raise ConfigError(f"unknown dtype '{name}'; expected one of {sorted(DTYPES)}") from None


@flax.struct.dataclass
class Tokens:
  """A token sequence and its padding mask.

  Attributes:
    tokens: [batch, length, width] activations.
    mask: [batch, length] bool, True for real tokens.
  """

  tokens: jax.Array
  mask: jax.Array


def key_padding_mask(kv_mask: jax.Array) -> jax.Array:
  """[batch, kv_len] bool -> [batch, 1, 1, kv_len], broadcastable to attention logits.

  Only keys are masked: padded query rows still attend to real keys (so no row is
  empty and nothing becomes NaN); callers ignore padded rows through the mask.
  """
  return kv_mask[:, None, None, :]


class MultiHeadAttention(nn.Module):
  """Multi-head attention through `jax.nn.dot_product_attention` (cuDNN flash on GPU)."""

  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, queries: jax.Array, keys_values: jax.Array,
               mask: jax.Array | None = None) -> jax.Array:
    """queries [B, T, D], keys_values [B, S, D], mask broadcastable to [B, heads, T, S]."""
    width = queries.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
    head_dim = width // self.num_heads
    dense = lambda name, use_bias=True: nn.DenseGeneral(  # noqa: E731
        (self.num_heads, head_dim), use_bias=use_bias, dtype=self.dtype,
        param_dtype=self.param_dtype, kernel_init=nn.initializers.xavier_uniform(), name=name)
    query = dense("query")(queries)
    # No key bias: it adds the same q.b to every logit of a query row, which softmax
    # ignores, so its gradient is exactly zero and Adam would only amplify rounding
    # noise into it. Checkpoints that have one (BERT, ViT) load without it, exactly.
    key = dense("key", use_bias=False)(keys_values)
    value = dense("value")(keys_values)
    attended = jax.nn.dot_product_attention(query, key, value, mask=mask)  # [B, T, N, H]
    return nn.DenseGeneral(
        width, axis=(-2, -1), dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=nn.initializers.xavier_uniform(), name="out")(attended)


class MlpBlock(nn.Module):
  """Dense -> GELU -> dropout -> Dense, back to the input width."""

  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    width = x.shape[-1]
    dense = lambda features, name: nn.Dense(  # noqa: E731
        features, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=nn.initializers.xavier_uniform(),
        bias_init=nn.initializers.normal(stddev=1e-6), name=name)
    x = nn.gelu(dense(self.mlp_dim, "fc1")(x))
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    return dense(width, "fc2")(x)


class TransformerBlock(nn.Module):
  """Pre-norm block: self-attention, optional cross-attention to a context, MLP.

  With `cross_attention=False` this is a plain encoder block (ViT/BERT style);
  with True it is the ALBEF/decoder-style block whose queries also read a second
  token sequence.
  """

  num_heads: int
  mlp_dim: int
  cross_attention: bool = False
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Tokens, context: Tokens | None = None, *, train: bool) -> Tokens:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    dropout = lambda y: nn.Dropout(self.dropout_rate)(y, deterministic=not train)  # noqa: E731
    tokens = x.tokens

    normed = nn.LayerNorm(name="norm_self", **kw)(tokens)
    tokens = tokens + dropout(MultiHeadAttention(self.num_heads, name="self_attention", **kw)(
        normed, normed, key_padding_mask(x.mask)))

    if self.cross_attention:
      if context is None:
        raise ValueError("a cross-attention block needs a context sequence")
      normed = nn.LayerNorm(name="norm_cross", **kw)(tokens)
      tokens = tokens + dropout(MultiHeadAttention(self.num_heads, name="cross_attention", **kw)(
          normed, context.tokens.astype(self.dtype), key_padding_mask(context.mask)))

    normed = nn.LayerNorm(name="norm_mlp", **kw)(tokens)
    tokens = tokens + dropout(MlpBlock(self.mlp_dim, self.dropout_rate, name="mlp", **kw)(
        normed, train=train))
    return Tokens(tokens, x.mask)


class Encoder(nn.Module):
  """A stack of `depth` TransformerBlocks followed by a final LayerNorm."""

  depth: int
  num_heads: int
  mlp_dim: int
  cross_attention: bool = False
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Tokens, context: Tokens | None = None, *, train: bool) -> Tokens:
    for i in range(self.depth):
      x = TransformerBlock(
          self.num_heads, self.mlp_dim, self.cross_attention, self.dropout_rate,
          self.dtype, self.param_dtype, name=f"block_{i}")(x, context, train=train)
    tokens = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype,
                          name="norm_out")(x.tokens)
    return Tokens(tokens, x.mask)


def resolve_size(variant: str, variants: dict[str, dict[str, int]],
                 overrides: dict[str, Any]) -> dict[str, int]:
  """Width/depth/mlp_dim/num_heads of a named size, with non-None overrides applied."""
  if variant not in variants:
    raise ConfigError(f"unknown model size '{variant}'; expected one of {', '.join(variants)}")
  size = dict(variants[variant])
  size.update({k: v for k, v in overrides.items() if k in size and v is not None})
  return size
