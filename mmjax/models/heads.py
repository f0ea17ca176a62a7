"""Task heads on token sequences: the fused tokens, or one tower's tokens.

Pooling (`config.model.heads.<name>.pooling`) turns Tokens [B, T, D] into [B, D]:
  cls   token 0 (a tower's or the fusion's [CLS]).
  mean  the mean over real tokens (mask True).
  map   multi-head attention pooling (as big_vision's MAP head): a learned query `probe`
        attends over the real tokens, then a residual MLP; parameters under `map/`,
        with `heads.<name>.num_heads` heads (default 1).

A head is LayerNorm `norm` -> Dense `logits` (zero-initialised) on the pooled vector.
Pooling, norm and logits are computed in float32 (`head_dtype`) whatever the model's
compute dtype: a head costs little next to the towers (MAP's key/value projections are
one attention layer's), and bf16 there would add its rounding to every logit. Under late
fusion a head reading "fused" is a `VoteHead` (see mmjax/models/fusion.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.config import ConfigError
from mmjax.models.layers import Dtype, MlpBlock, MultiHeadAttention, Tokens, key_padding_mask

if TYPE_CHECKING:
  from mmjax.models.fusion import Fused

POOLINGS = ("cls", "mean", "map")


def pool(seq: Tokens, pooling: str) -> jax.Array:
  """Tokens [B, T, D] -> [B, D]: token 0 (`cls`) or the mean over real tokens (`mean`)."""
  if pooling == "cls":
    return seq.tokens[:, 0]
  if pooling == "mean":
    weights = seq.mask.astype(seq.tokens.dtype)[..., None]
    total = (seq.tokens * weights).sum(axis=1, dtype=jnp.float32)
    count = jnp.maximum(weights.sum(axis=1, dtype=jnp.float32), 1.0)
    return (total / count).astype(seq.tokens.dtype)
  raise ConfigError(f"unknown pooling '{pooling}'; expected cls or mean here "
                    f"(map is the MapPooling module)")


class MapPooling(nn.Module):
  """Multihead attention pooling: Tokens [B, T, D] -> [B, D].

  A learned `probe` [1, 1, D] queries the real tokens (`attention`), then
  x + MLP(LayerNorm(x)) (`norm`, `mlp` with hidden width `mlp_ratio` * D).
  """

  num_heads: int = 1
  mlp_ratio: int = 4
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, seq: Tokens) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    batch, _, width = seq.tokens.shape
    probe = self.param("probe", nn.initializers.normal(stddev=0.02), (1, 1, width),
                       self.param_dtype)
    queries = jnp.tile(probe.astype(self.dtype), (batch, 1, 1))
    x = MultiHeadAttention(self.num_heads, name="attention", **kw)(
        queries, seq.tokens.astype(self.dtype), key_padding_mask(seq.mask))
    x = x + MlpBlock(self.mlp_ratio * width, name="mlp", **kw)(
        nn.LayerNorm(name="norm", **kw)(x), train=False)
    return x[:, 0]


class ClassificationHead(nn.Module):
  """Tokens [B, T, D] -> pooled -> LayerNorm -> Dense -> logits [B, num_classes] float32.

  `dtype` is the model's compute dtype (unused: the head computes in `head_dtype`).
  """

  num_classes: int
  pooling: str = "cls"
  num_heads: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  head_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, seq: Tokens) -> jax.Array:
    if self.pooling == "map":
      pooled = MapPooling(self.num_heads, dtype=self.head_dtype, param_dtype=self.param_dtype,
                          name="map")(seq)
    else:
      pooled = pool(seq, self.pooling)
    kw = dict(dtype=self.head_dtype, param_dtype=self.param_dtype)
    pooled = nn.LayerNorm(name="norm", **kw)(pooled.astype(self.head_dtype))
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name="logits",
                    **kw)(pooled)


class _Votes(nn.Module):
  """One learned scalar per modality (parameters named by modality), zero-initialised."""

  modalities: tuple[str, ...]
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self) -> jax.Array:
    return jnp.stack([self.param(name, nn.initializers.zeros, (), self.param_dtype)
                      for name in self.modalities]).astype(jnp.float32)


class VoteHead(nn.Module):
  """Late fusion's head: {modality: Tokens} -> logits [B, num_classes] float32.

  One ClassificationHead per modality (`<modality>/...`), combined as
  sum_m softmax(vote)_m * logits_m with one learned scalar `vote/<modality>` each.
  The per-modality logits are sown as intermediates `<modality>_logits`.
  """

  num_classes: int
  pooling: str = "cls"
  num_heads: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, streams: Mapping[str, Tokens]) -> jax.Array:
    names = tuple(sorted(streams))
    logits = []
    for name in names:
      head_logits = ClassificationHead(self.num_classes, self.pooling, self.num_heads,
                                       self.dtype, self.param_dtype, name=name)(streams[name])
      self.sow("intermediates", f"{name}_logits", head_logits)
      logits.append(head_logits)
    weights = jax.nn.softmax(_Votes(names, self.param_dtype, name="vote")())
    return jnp.einsum("m,mbc->bc", weights, jnp.stack(logits))


@dataclasses.dataclass(frozen=True)
class HeadSpec:
  """A named classification head reading `input`: "fused", one modality's stream after
  fusion ("fused:text"), or a tower ("image", "text", ...).

  `num_heads` is the number of attention heads of `map` pooling.
  """

  name: str
  input: str
  num_classes: int
  pooling: str = "cls"
  num_heads: int = 1


class Heads(nn.Module):
  """Tower tokens and the fusion's output -> {head name: logits [B, C] float32}.

  Parameters under `heads/<name>/`. A head reading "fused" reads `fused.tokens`, or is a
  VoteHead over `fused.streams` when the fusion produces no tokens (late fusion); one
  reading "fused:<modality>" reads `fused.streams[<modality>]`.
  """

  specs: tuple[HeadSpec, ...]
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, towers: Mapping[str, Tokens], fused: Fused) -> dict[str, jax.Array]:
    outputs = {}
    for spec in self.specs:
      args = (spec.num_classes, spec.pooling, spec.num_heads, self.dtype, self.param_dtype)
      if spec.input.startswith("fused:"):
        stream = fused.streams[spec.input.removeprefix("fused:")]
        outputs[spec.name] = ClassificationHead(*args, name=spec.name)(stream)
      elif spec.input != "fused":
        outputs[spec.name] = ClassificationHead(*args, name=spec.name)(towers[spec.input])
      elif fused.tokens is not None:
        outputs[spec.name] = ClassificationHead(*args, name=spec.name)(fused.tokens)
      else:
        outputs[spec.name] = VoteHead(*args, name=spec.name)(fused.streams)
    return outputs
