"""Assembles towers, fusion and heads from `config.model`.

Parameter paths (what regex rules in configs match) start with: `image_encoder/...`,
`text_encoder/...`, `fusion/...`, `heads/<head name>/...`.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import ml_collections

from mmjax.config import ConfigError
from mmjax.models import text as text_lib
from mmjax.models import vit as vit_lib
from mmjax.models.fusion import build_fusion
from mmjax.models.heads import POOLINGS, Heads, HeadSpec
from mmjax.models.layers import Tokens, dtype_from_name

HEAD_INPUTS = ("fused", "image", "text")


class MultimodalModel(nn.Module):
  """batch dict -> {head name: logits [B, num_classes]}.

  Reads `image` [B, H, W, C] float and/or `text_ids` [B, T] int32 with `text_mask`
  [B, T]; a tower that is None is skipped, so the same class serves modality ablations.
  Heads read the fused tokens or one tower's tokens (auxiliary per-modality heads).
  """

  image_encoder: nn.Module | None
  text_encoder: nn.Module | None
  fusion: nn.Module
  heads: Heads

  def encode(self, batch: dict[str, jax.Array], *, train: bool) -> dict[str, Tokens]:
    streams = {}
    if self.image_encoder is not None:
      streams["image"] = self.image_encoder(batch["image"], train=train)
    if self.text_encoder is not None:
      streams["text"] = self.text_encoder(batch["text_ids"], batch["text_mask"], train=train)
    return streams

  def __call__(self, batch: dict[str, jax.Array], *, train: bool = False
               ) -> dict[str, jax.Array]:
    streams = self.encode(batch, train=train)
    streams["fused"] = self.fusion(streams, train=train)
    return self.heads(streams)


def head_specs(model_config: ml_collections.ConfigDict, modalities: tuple[str, ...],
               num_classes: Callable[[str], int]) -> tuple[HeadSpec, ...]:
  """The heads of `config.model.heads` whose input is present in this run."""
  specs = []
  for name, head in model_config.heads.items():
    if head.input not in HEAD_INPUTS:
      raise ConfigError(f"config.model.heads.{name}.input: unknown input '{head.input}'; "
                        f"expected one of {', '.join(HEAD_INPUTS)}")
    if head.pooling not in POOLINGS:
      raise ConfigError(f"config.model.heads.{name}.pooling: unknown pooling '{head.pooling}';"
                        f" expected one of {', '.join(POOLINGS)}")
    if head.input == "fused" or head.input in modalities:
      specs.append(HeadSpec(name, head.input, num_classes(name), head.pooling))
  return tuple(specs)


def build_model(model_config: ml_collections.ConfigDict, *, modalities: tuple[str, ...],
                vocab_size: int | None, heads: tuple[HeadSpec, ...]) -> MultimodalModel:
  """Builds the model of `config.model` for the given modalities and heads."""
  dtypes = dict(dtype=dtype_from_name(model_config.dtype),
                param_dtype=dtype_from_name(model_config.param_dtype))
  dropout = model_config.dropout_rate
  image_encoder = text_encoder = None
  if "image" in modalities:
    image_cfg = model_config.image.to_dict()
    image_encoder = vit_lib.ViT(
        **vit_lib.parse_variant(image_cfg.pop("variant"), **image_cfg), dropout_rate=dropout,
        **dtypes)
  if "text" in modalities:
    if vocab_size is None:
      raise ValueError("the text tower needs a vocabulary size")
    text_cfg = model_config.text.to_dict()
    text_encoder = text_lib.TextEncoder(
        vocab_size=vocab_size, max_len=text_cfg.pop("max_len"),
        **text_lib.parse_variant(text_cfg.pop("variant"), **text_cfg), dropout_rate=dropout,
        **dtypes)
  fusion_cfg = model_config.fusion.to_dict()
  fusion = build_fusion(fusion_cfg.pop("kind"), **fusion_cfg, dropout_rate=dropout, **dtypes)
  return MultimodalModel(image_encoder, text_encoder, fusion, Heads(heads, **dtypes))
