"""Fusion of per-modality token sequences, chosen by `config.model.fusion.kind`.

Every kind maps {modality: Tokens} (any non-empty subset of the towers: image, text,
audio, ...) to a `Fused`: `tokens`, one sequence mixing all modalities whose token 0
summarises the example (what heads with input "fused" read), and `streams`, each
modality's own tokens as fusion leaves them. Modalities are always taken in sorted name
order. Every stream is first mapped to the fusion `width` by its own Dense
`<modality>_projection` (only where the tower's width differs). `depth` is the number
of fusion layers; their parameters are the `block_<i>` subtrees named below.

Kinds (parameter paths under `fusion/`):

  concat           Feature-level early fusion. Each stream is mean-pooled over its real
                   tokens, the pooled vectors are concatenated and mapped to `width`
                   (`joint_projection`), then `depth` residual MLP blocks (`block_<i>`,
                   depth >= 0) and a LayerNorm (`norm_out`). `tokens` is that one
                   vector as a single token [B, 1, width]; the streams are the projected
                   tower tokens (no layer mixes them).
  merged           Single-stream (ViLT): a learned fused [CLS] token (`cls`) followed by
                   every stream plus its learned modality-type embedding
                   (`<modality>_type`), through `depth` self-attention blocks
                   (`encoder/block_<i>`). `tokens` is the whole sequence
                   [B, 1 + sum(T_m), width]; each stream is its slice of it.
  co_attention     Two-stream (METER, ViLBERT): each fusion layer `block_<i>` holds one
                   block per modality with its own weights (`block_<i>/<modality>`):
                   self-attention, cross-attention to the other modalities' layer inputs
                   (concatenated), MLP; then a LayerNorm per stream (`norm_<modality>`).
                   `tokens` is [B, 1 + sum(T_m), width]: a joint token, Dense
                   `joint_projection` of the streams' tokens 0 concatenated, followed by
                   the streams.
  cross_attention  One-way (ALBEF): the query modality's tokens (`query_modality`,
                   default text) self-attend, cross-attend to the other streams
                   (concatenated) and go through an MLP, `depth` times
                   (`cross_encoder/block_<i>`). `tokens` is the query stream
                   [B, T_query, width]; the other streams are unchanged. Without the
                   query modality, the first present of text, audio, image queries.
  late             Decision-level: no layer sees two modalities. Each stream goes through
                   its own `depth` self-attention blocks (`<modality>_encoder/block_<i>`,
                   depth >= 0). `tokens` is None.

Heads with input "fused" under `late` (see `heads.VoteHead`): since there are no fused
tokens, such a head is a learned weighted vote of per-modality classifiers. Each
modality's stream gets its own classifier (pooling as the head says), under
`heads/<name>/<modality>/...`, and the head's logits are sum_m softmax(v)_m logits_m
with one learned scalar per modality `heads/<name>/vote/<modality>` (zero-initialised:
an equal vote). The per-modality logits are also sown as intermediates
`heads/<name>/<modality>_logits`.

With a single modality present, the attention kinds run `depth` self-attention blocks
over it (cross_attention under `self_encoder/block_<i>`), so a modality ablation keeps
the same depth and width.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from mmjax.config import ConfigError
from mmjax.models.heads import pool
from mmjax.models.layers import (
  BlockOptions,
  Dtype,
  Encoder,
  MlpBlock,
  Tokens,
  block_class,
  dense,
)

# When the configured query modality is absent, cross_attention queries with the first of these.
QUERY_PREFERENCE = ("text", "audio", "image")


@flax.struct.dataclass
class Fused:
  """What fusion hands to the heads.

  Attributes:
    tokens: Tokens [B, T, width] mixing every modality, token 0 summarising the example;
      None under late fusion.
    streams: {modality: Tokens [B, T_m, width]}, each modality's tokens after fusion.
  """

  tokens: Tokens | None
  streams: dict[str, Tokens]


def concat_tokens(sequences: list[Tokens]) -> Tokens:
  """Concatenates sequences along the token axis: [B, sum(T_i), D] and their masks."""
  return Tokens(jnp.concatenate([s.tokens for s in sequences], axis=1),
                jnp.concatenate([s.mask for s in sequences], axis=1))


class _FusionBase(nn.Module):
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  options: BlockOptions = BlockOptions()

  def project(self, streams: Mapping[str, Tokens]) -> dict[str, Tokens]:
    """Each stream at the fusion width, in the compute dtype, in sorted modality order."""
    if not streams:
      raise ValueError("fusion needs at least one modality")
    projected = {}
    for name in sorted(streams):
      seq = streams[name]
      tokens = seq.tokens.astype(self.dtype)
      if tokens.shape[-1] != self.width:
        tokens = dense(self.width, f"{name}_projection", dtype=self.dtype,
                       param_dtype=self.param_dtype)(tokens)
      projected[name] = Tokens(tokens, seq.mask.astype(bool))
    return projected

  def encoder(self, cross_attention: bool, name: str) -> Encoder:
    return Encoder(self.depth, self.num_heads, self.mlp_dim, cross_attention,
                   self.dropout_rate, self.dtype, self.param_dtype, self.options, name=name)

  def norm(self, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=self.options.layer_norm_eps, dtype=self.dtype,
                        param_dtype=self.param_dtype, name=name)


class _ResidualMlp(nn.Module):
  """x + MLP(LayerNorm(x)) on vectors [B, D]; parameters `norm`, `mlp/{fc1,fc2}`."""

  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  options: BlockOptions = BlockOptions()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    normed = nn.LayerNorm(epsilon=self.options.layer_norm_eps, name="norm", **kw)(x)
    return x + MlpBlock(self.mlp_dim, self.dropout_rate, self.options.activation, name="mlp",
                        **kw)(normed, train=train)


class ConcatFusion(_FusionBase):
  """Early fusion of mean-pooled features: concat -> Dense -> `depth` residual MLP blocks."""

  min_depth = 0

  @nn.compact
  def __call__(self, streams: Mapping[str, Tokens], *, train: bool) -> Fused:
    streams = self.project(streams)
    pooled = jnp.concatenate([pool(streams[name], "mean") for name in streams], axis=-1)
    joint = dense(self.width, "joint_projection", dtype=self.dtype,
                  param_dtype=self.param_dtype)(pooled)
    for i in range(self.depth):
      joint = _ResidualMlp(self.mlp_dim, self.dropout_rate, self.dtype, self.param_dtype,
                           self.options, name=f"block_{i}")(joint, train=train)
    joint = self.norm("norm_out")(joint)
    mask = jnp.ones((joint.shape[0], 1), bool)
    return Fused(Tokens(joint[:, None], mask), streams)


class MergedFusion(_FusionBase):
  """Single-stream (ViLT): [fused CLS] + every stream with its type embedding, self-attention."""

  min_depth = 1

  @nn.compact
  def __call__(self, streams: Mapping[str, Tokens], *, train: bool) -> Fused:
    streams = self.project(streams)
    batch = next(iter(streams.values())).tokens.shape[0]
    init = nn.initializers.normal(stddev=0.02)
    cls = self.param("cls", init, (1, 1, self.width), self.param_dtype)
    parts = [Tokens(jnp.tile(cls.astype(self.dtype), (batch, 1, 1)), jnp.ones((batch, 1), bool))]
    for name, seq in streams.items():
      kind = self.param(f"{name}_type", init, (self.width,), self.param_dtype)
      parts.append(Tokens(seq.tokens + kind.astype(self.dtype), seq.mask))
    fused = self.encoder(False, "encoder")(concat_tokens(parts), train=train)
    out, start = {}, 1
    for name, seq in streams.items():
      end = start + seq.tokens.shape[1]
      out[name] = Tokens(fused.tokens[:, start:end], fused.mask[:, start:end])
      start = end
    return Fused(fused, out)


class CoAttentionLayer(nn.Module):
  """One co-attention layer: per modality (own weights, submodule named by the modality)
  self-attention, cross-attention to the other modalities' inputs to this layer, MLP."""

  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  options: BlockOptions = BlockOptions()

  @nn.compact
  def __call__(self, streams: Mapping[str, Tokens], *, train: bool) -> dict[str, Tokens]:
    out = {}
    for name, seq in streams.items():
      others = [streams[other] for other in streams if other != name]
      context = concat_tokens(others) if others else None
      out[name] = block_class(self.options)(
          self.num_heads, self.mlp_dim, bool(others), self.dropout_rate, self.dtype,
          self.param_dtype, self.options, name=name)(seq, context, train)
    return out


class CoAttentionFusion(_FusionBase):
  """Two-stream (METER/ViLBERT): every layer attends both ways, separate weights per stream."""

  min_depth = 1

  @nn.compact
  def __call__(self, streams: Mapping[str, Tokens], *, train: bool) -> Fused:
    streams = self.project(streams)
    for i in range(self.depth):
      streams = CoAttentionLayer(self.num_heads, self.mlp_dim, self.dropout_rate, self.dtype,
                                 self.param_dtype, self.options, name=f"block_{i}"
                                 )(streams, train=train)
    streams = {name: Tokens(self.norm(f"norm_{name}")(seq.tokens), seq.mask)
               for name, seq in streams.items()}
    firsts = jnp.concatenate([seq.tokens[:, 0] for seq in streams.values()], axis=-1)
    joint = dense(self.width, "joint_projection", dtype=self.dtype,
                  param_dtype=self.param_dtype)(firsts)
    joint = Tokens(joint[:, None], jnp.ones((joint.shape[0], 1), bool))
    return Fused(concat_tokens([joint, *streams.values()]), streams)


class CrossAttentionFusion(_FusionBase):
  """One-way cross-attention (ALBEF): the query modality's tokens attend to all others.

  Each of the `depth` blocks is self-attention over the query tokens, cross-attention
  from them to the concatenated tokens of the other modalities, then an MLP.
  """

  query_modality: str = "text"
  min_depth = 1

  @nn.compact
  def __call__(self, streams: Mapping[str, Tokens], *, train: bool) -> Fused:
    streams = self.project(streams)
    if len(streams) == 1:
      ((name, only),) = streams.items()
      fused = self.encoder(False, "self_encoder")(only, train=train)
      return Fused(fused, {name: fused})
    query = self.query_modality
    if query not in streams:
      query = next((m for m in QUERY_PREFERENCE if m in streams), next(iter(streams)))
    context = concat_tokens([seq for name, seq in streams.items() if name != query])
    fused = self.encoder(True, "cross_encoder")(streams[query], context, train=train)
    return Fused(fused, {**streams, query: fused})


class LateFusion(_FusionBase):
  """Decision-level: `depth` self-attention blocks per stream, own weights, no mixing."""

  min_depth = 0

  @nn.compact
  def __call__(self, streams: Mapping[str, Tokens], *, train: bool) -> Fused:
    streams = self.project(streams)
    if self.depth:
      streams = {name: self.encoder(False, f"{name}_encoder")(seq, train=train)
                 for name, seq in streams.items()}
    return Fused(None, streams)


FUSIONS = {
    "concat": ConcatFusion,
    "merged": MergedFusion,
    "co_attention": CoAttentionFusion,
    "cross_attention": CrossAttentionFusion,
    "late": LateFusion,
}


def build_fusion(kind: str, **kwargs) -> nn.Module:
  """The fusion module of `config.model.fusion` (`kind` plus that class's fields).

  Raises:
    ConfigError: unknown kind, a field the kind does not take, or a depth below the kind's
      minimum (1 for the attention kinds, 0 for concat and late).
  """
  if kind not in FUSIONS:
    raise ConfigError(f"config.model.fusion.kind: unknown fusion '{kind}'; expected one of "
                      f"{', '.join(FUSIONS)}")
  cls = FUSIONS[kind]
  fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise ConfigError(f"config.model.fusion: kind '{kind}' takes no field "
                      f"{', '.join(repr(u) for u in unknown)}; expected some of "
                      f"{', '.join(sorted(fields))}")
  depth = kwargs.get("depth")
  if not isinstance(depth, int) or isinstance(depth, bool) or depth < cls.min_depth:
    raise ConfigError(f"config.model.fusion.depth: expected an integer >= {cls.min_depth} for "
                      f"kind '{kind}', got {depth!r}")
  return cls(**kwargs)
