"""Task heads on top of token sequences (the fused tokens or one tower's tokens)."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models.layers import Dtype, Tokens

POOLINGS = ("cls", "mean")


def pool(seq: Tokens, pooling: str) -> jax.Array:
  """Tokens [B, T, D] -> [B, D]: token 0 (`cls`) or the mean over real tokens (`mean`)."""
  if pooling == "cls":
    return seq.tokens[:, 0]
  if pooling == "mean":
    weights = seq.mask.astype(seq.tokens.dtype)[..., None]
    return (seq.tokens * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1.0)
  raise ValueError(f"unknown pooling '{pooling}'; expected one of {', '.join(POOLINGS)}")


class ClassificationHead(nn.Module):
  """Pooled tokens -> LayerNorm -> Dense -> logits [B, num_classes] (float32)."""

  num_classes: int
  pooling: str = "cls"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, seq: Tokens) -> jax.Array:
    pooled = pool(seq, self.pooling)
    pooled = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="norm")(pooled)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                      kernel_init=nn.initializers.zeros, name="logits")(pooled)
    return logits.astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class HeadSpec:
  """A named classification head reading `input`: "fused", or a tower ("image", "text")."""

  name: str
  input: str
  num_classes: int
  pooling: str = "cls"


class Heads(nn.Module):
  """{sequence name: Tokens} -> {head name: logits}; parameters under `heads/<name>/`."""

  specs: tuple[HeadSpec, ...]
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, sequences: dict[str, Tokens]) -> dict[str, jax.Array]:
    return {spec.name: ClassificationHead(spec.num_classes, spec.pooling, self.dtype,
                                          self.param_dtype, name=spec.name)(sequences[spec.input])
            for spec in self.specs}
