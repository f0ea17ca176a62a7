"""Fusion of per-modality token sequences, chosen by `config.model.fusion.kind`.

Every fusion module maps {modality: Tokens} to one fused Tokens whose token 0
summarises the example (used by `cls` pooling). With a single modality present,
every kind runs `depth` self-attention blocks over it, so a modality ablation keeps
the same depth and width.
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax.numpy as jnp

from mmjax.config import ConfigError
from mmjax.models.layers import Dtype, Encoder, Tokens


def concat_tokens(sequences: list[Tokens]) -> Tokens:
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

  def project(self, streams: Mapping[str, Tokens]) -> dict[str, Tokens]:
    """Maps each stream to the fusion width with its own Dense (named `<modality>_projection`)."""
    projected = {}
    for name in sorted(streams):
      seq = streams[name]
      tokens = seq.tokens.astype(self.dtype)
      if tokens.shape[-1] != self.width:
        tokens = nn.Dense(self.width, dtype=self.dtype, param_dtype=self.param_dtype,
                          name=f"{name}_projection")(tokens)
      projected[name] = Tokens(tokens, seq.mask)
    return projected

  def encoder(self, cross_attention: bool, name: str) -> Encoder:
    return Encoder(self.depth, self.num_heads, self.mlp_dim, cross_attention,
                   self.dropout_rate, self.dtype, self.param_dtype, name=name)


class CrossAttentionFusion(_FusionBase):
  """One-way cross-attention (ALBEF): the query modality's tokens attend to all others.

  Each of the `depth` blocks is self-attention over the query tokens, cross-attention
  from them to the concatenated tokens of the other modalities, then an MLP.
  """

  query_modality: str = "text"

  @nn.compact
  def __call__(self, streams: Mapping[str, Tokens], *, train: bool) -> Tokens:
    streams = self.project(streams)
    if len(streams) == 1:
      (only,) = streams.values()
      return self.encoder(False, "self_encoder")(only, train=train)
    if self.query_modality not in streams:
      raise ConfigError(f"cross_attention fusion queries with '{self.query_modality}', "
                        f"which is not among the inputs {sorted(streams)}")
    context = concat_tokens([streams[n] for n in sorted(streams) if n != self.query_modality])
    return self.encoder(True, "cross_encoder")(streams[self.query_modality], context,
                                               train=train)


FUSIONS = {
    "cross_attention": CrossAttentionFusion,
}


def build_fusion(kind: str, **kwargs) -> nn.Module:
  if kind not in FUSIONS:
    raise ConfigError(f"config.model.fusion.kind: unknown fusion '{kind}'; expected one of "
                      f"{', '.join(FUSIONS)}")
  return FUSIONS[kind](**kwargs)
