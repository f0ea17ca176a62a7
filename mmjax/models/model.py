"""Assembles towers, fusion and heads from `config.model`.

Parameter paths (what regex rules in configs match) start with: `<modality>_encoder/...`
(`image_encoder/...`, `text_encoder/...`, `audio_encoder/...`, `video_encoder/...`),
`fusion/...`, `heads/<head name>/...`.

The model is generic over modality names: a tower is an entry of `towers`, and
`MODALITY_INPUTS` says which batch keys it is called with, so a new modality plugs in by
adding an entry to each (and a builder to `TOWER_BUILDERS` for `build_model`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

import flax.core
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mmjax.config import ConfigError, check_fields
from mmjax.convert.hf_config import tower_from_hf_config
from mmjax.models import audio as audio_lib
from mmjax.models import text as text_lib
from mmjax.models import video as video_lib
from mmjax.models import vit as vit_lib
from mmjax.models.fusion import Fused, build_fusion
from mmjax.models.heads import POOLINGS, Heads, HeadSpec
from mmjax.models.layers import BlockOptions, Tokens, check_rate, dtype_from_name

# Modality -> the batch keys its tower is called with, positionally (see README batch keys).
MODALITY_INPUTS = flax.core.FrozenDict({
    "image": ("image",),                    # float32 [B, H, W, C] in [-1, 1]
    "text": ("text_ids", "text_mask"),      # int32 [B, T], bool [B, T]
    "audio": ("audio",),                    # float32 [B, samples] waveforms
    "video": ("video",),                    # float32 [B, frames, H, W, C] in [-1, 1]
})
# A head reads the fusion's output ("fused": token 0 of the joint sequence, or a vote under
# late fusion), one modality's stream after fusion ("fused:text": the question's own
# [CLS] once it has attended to the image), or one tower's tokens before fusion ("image").
HEAD_INPUTS = ("fused", *(f"fused:{m}" for m in MODALITY_INPUTS), *MODALITY_INPUTS)
# The logit of a padding choice (multiple choice): its softmax probability is exactly 0.
ABSENT_CHOICE = -1e9


class MultimodalModel(nn.Module):
  """batch dict -> {head name: logits [B, num_classes] float32}; with `choice_mask` in the
  batch (multiple choice, see `score_choices`), {head name: logits [B, K]}.

  Attributes:
    towers: {modality: tower}; tower(*[batch[k] for k in inputs[modality]], train=...)
      returns Tokens. Its parameters live under `<modality>_encoder/`. Modalities without
      a tower are skipped, so the same class serves modality ablations.
    fusion: {modality: Tokens} -> `Fused` (mmjax/models/fusion.py).
    heads: reads the fused output or one tower's tokens (auxiliary per-modality heads).
    inputs: {modality: batch keys}, MODALITY_INPUTS by default.
    choice_modalities: in multiple choice, the modalities whose inputs hold the choices.
  """

  towers: Mapping[str, nn.Module]
  fusion: nn.Module
  heads: Heads
  inputs: Mapping[str, tuple[str, ...]] = MODALITY_INPUTS
  choice_modalities: tuple[str, ...] = ("text",)

  def setup(self):
    for modality, tower in self.towers.items():
      if modality not in self.inputs:
        raise ValueError(f"no batch keys for the '{modality}' tower; known modalities: "
                         f"{', '.join(self.inputs)}")
      setattr(self, f"{modality}_encoder", tower.clone())

  def encode(self, batch: Mapping[str, jax.Array], *, train: bool) -> dict[str, Tokens]:
    """{modality: Tokens [B, T_m, width_m]} from each tower, in sorted modality order."""
    return {modality: getattr(self, f"{modality}_encoder")(
                *[batch[key] for key in self.inputs[modality]], train=train)
            for modality in sorted(self.towers)}

  def features(self, batch: Mapping[str, jax.Array], *, train: bool = False
               ) -> tuple[dict[str, Tokens], Fused]:
    """(tower tokens, fusion output): what the heads read; for analysis and tests."""
    towers = self.encode(batch, train=train)
    return towers, self.fusion(towers, train=train)

  def __call__(self, batch: Mapping[str, jax.Array], *, train: bool = False
               ) -> dict[str, jax.Array]:
    if "choice_mask" in batch:
      return self.score_choices(batch, train=train)
    towers, fused = self.features(batch, train=train)
    return self.heads(towers, fused)

  def score_choices(self, batch: Mapping[str, jax.Array], *, train: bool = False
                    ) -> dict[str, jax.Array]:
    """Multiple choice: {head name: logits [B, K] float32}, ABSENT_CHOICE where
    `choice_mask` [B, K] is False.

    The `choice_modalities`' inputs have a choice axis (text_ids, text_mask [B, K, T]):
    their towers read the B*K (example, choice) pairs. The other towers read each example
    once and their tokens are repeated K times, which equals repeating their inputs (a
    tower treats examples independently) at 1/K of the cost. Fusion and the heads, whose
    one logit scores a pair, then run on B*K rows as usual.
    """
    choice_mask = batch["choice_mask"]
    size, num_choices = choice_mask.shape
    towers = {}
    for modality in sorted(self.towers):
      inputs = [batch[key] for key in self.inputs[modality]]
      if modality in self.choice_modalities:
        inputs = [x.reshape(size * num_choices, *x.shape[2:]) for x in inputs]
      tokens = getattr(self, f"{modality}_encoder")(*inputs, train=train)
      if modality not in self.choice_modalities:
        tokens = Tokens(jnp.repeat(tokens.tokens, num_choices, axis=0),
                        jnp.repeat(tokens.mask, num_choices, axis=0))
      towers[modality] = tokens
    outputs = self.heads(towers, self.fusion(towers, train=train))
    for name, logits in outputs.items():
      if logits.shape[-1] != 1:
        raise ValueError(f"head '{name}' scores a choice with one logit, not {logits.shape[-1]}")
      outputs[name] = jnp.where(choice_mask, logits.reshape(size, num_choices), ABSENT_CHOICE)
    return outputs


def head_specs(model_config: ml_collections.ConfigDict, modalities: tuple[str, ...],
               num_classes: Callable[[str], int]) -> tuple[HeadSpec, ...]:
  """The heads of `config.model.heads` whose input is present in this run.

  Each head has `input` (one of HEAD_INPUTS), `pooling` (one of POOLINGS) and, for
  `map` pooling, optionally `num_heads` (default 1).
  """
  specs = []
  for name, head in model_config.heads.items():
    if head.input not in HEAD_INPUTS:
      raise ConfigError(f"config.model.heads.{name}.input: unknown input '{head.input}'; "
                        f"expected one of {', '.join(HEAD_INPUTS)}")
    if head.pooling not in POOLINGS:
      raise ConfigError(f"config.model.heads.{name}.pooling: unknown pooling '{head.pooling}';"
                        f" expected one of {', '.join(POOLINGS)}")
    num_heads = head.get("num_heads", 1)
    if not isinstance(num_heads, int) or isinstance(num_heads, bool) or num_heads < 1:
      raise ConfigError(f"config.model.heads.{name}.num_heads: expected a positive integer, "
                        f"got {num_heads!r}")
    if head.input == "fused" or head.input.removeprefix("fused:") in modalities:
      specs.append(HeadSpec(name, head.input, num_classes(name), head.pooling, num_heads))
  return tuple(specs)


def block_options(model_config: ml_collections.ConfigDict, adapter_dim: int = 0) -> BlockOptions:
  """`config.model.block` (optional: norm_position, activation, layer_norm_eps,
  attention_implementation, remat, scan) as BlockOptions, with adapters of `adapter_dim`."""
  block = dict(model_config.get("block", None) or {})
  check_fields("config.model.block", block,
               {f.name for f in dataclasses.fields(BlockOptions)} - {"adapter_dim", "causal"})
  return BlockOptions(**block, adapter_dim=adapter_dim)


# Per-module regularisers: `config.model.<tower>.dropout_rate` (image, text, audio, fusion;
# None or absent: the global one) overrides the global `config.model.dropout_rate` for that
# module; a tower's `drop_path_rate` is its stochastic depth (the rate of its last block,
# `layers.Encoder`), 0 by default.
REGULARISERS = ("dropout_rate", "drop_path_rate")


def regularised(field: str, module_cfg: dict[str, Any], common: dict[str, Any],
                names: tuple[str, ...] = REGULARISERS) -> dict[str, Any]:
  """`common` with the rates among `names` that `module_cfg` (`config.model.<module>`,
  as a dict) sets, popped from it and checked to lie in [0, 1); a None rate is unset."""
  common = dict(common)
  for name in names:
    rate = module_cfg.pop(name, None)
    if rate is not None:
      check_rate(f"{field}.{name}", rate)
      common[name] = rate
  return common


def _module(cls: type[nn.Module], field: str, **kwargs: Any) -> nn.Module:
  """`cls(**kwargs)`, with an unknown field reported as a ConfigError naming `field`."""
  check_fields(field, kwargs, {f.name for f in dataclasses.fields(cls)} - {"parent", "name"})
  return cls(**kwargs)


def _vit_tower(modality: str, cls: type[nn.Module], model_config: ml_collections.ConfigDict,
               common: dict[str, Any]) -> nn.Module:
  """`config.model.<modality>`: a ViT-shaped tower's `variant` ("S/16"), size overrides and
  `cls`'s other fields (ViT: pooler, final_norm, ...; VideoEncoder: temporal, ...)."""
  field = f"config.model.{modality}"
  tower_cfg = model_config[modality].to_dict()
  common = regularised(field, tower_cfg, common)
  size = vit_lib.parse_variant(tower_cfg.pop("variant"), **tower_cfg)
  rest = {key: value for key, value in tower_cfg.items() if key not in size}
  return _module(cls, field, **size, **rest, **common)


def _image_tower(model_config: ml_collections.ConfigDict, common: dict[str, Any],
                 vocab_size: int | None) -> nn.Module:
  """`config.model.image`: the ViT (`_vit_tower`)."""
  del vocab_size
  return _vit_tower("image", vit_lib.ViT, model_config, common)


def _text_tower(model_config: ml_collections.ConfigDict, common: dict[str, Any],
                vocab_size: int | None) -> nn.Module:
  """`config.model.text`: `variant`, `max_len`, size overrides, and other TextEncoder
  fields (pooler, type_vocab_size, ...)."""
  if vocab_size is None:
    raise ValueError("the text tower needs a vocabulary size")
  text_cfg = model_config.text.to_dict()
  common = regularised("config.model.text", text_cfg, common)
  size = text_lib.parse_variant(text_cfg.pop("variant"), **text_cfg)
  rest = {key: value for key, value in text_cfg.items() if key not in size}
  return _module(text_lib.TextEncoder, "config.model.text", vocab_size=vocab_size, **size,
                 **rest, **common)


# Which checkpoint kinds (mmjax.convert) can become which tower.
PRETRAINED_KINDS = {"image": ("vit", "clip_vision"), "text": ("bert", "clip_text")}


def pretrained_tower(modality: str, source: dict[str, str], common: dict[str, Any]
                     ) -> nn.Module:
  """The tower of `config.init_from.<modality>` = dict(checkpoint=DIR, kind=KIND): sized and
  wired like the HF checkpoint (from DIR/config.json), with this run's dtypes, dropout,
  adapters and attention implementation. Its weights are loaded by the training loop."""
  from transformers import AutoConfig  # only runs that import weights need transformers

  field = f"config.init_from.{modality}"
  if set(source) != {"checkpoint", "kind"}:
    raise ConfigError(f"{field}: expected exactly the fields checkpoint, kind; got "
                      f"{', '.join(sorted(source))}")
  kinds = PRETRAINED_KINDS.get(modality, ())
  if source["kind"] not in kinds:
    raise ConfigError(f"{field}.kind: '{source['kind']}' cannot initialise the {modality} "
                      f"tower; expected one of {', '.join(kinds) or '(none)'}")
  config_file = os.path.join(source["checkpoint"], "config.json")
  if not os.path.isfile(config_file):
    raise ConfigError(f"{field}.checkpoint: no config.json in '{source['checkpoint']}'")
  options = common["options"]
  return tower_from_hf_config(
      AutoConfig.from_pretrained(source["checkpoint"]), source["kind"],
      block_overrides=dict(adapter_dim=options.adapter_dim, remat=options.remat,
                           attention_implementation=options.attention_implementation),
      **{key: value for key, value in common.items() if key != "options"})


def _audio_tower(model_config: ml_collections.ConfigDict, common: dict[str, Any],
                 vocab_size: int | None) -> nn.Module:
  """`config.model.audio`: `variant` ("nano/4"), size overrides, and the AudioEncoder's
  feature fields (sample_rate, n_fft, hop_length, n_mels, features, n_mfcc)."""
  del vocab_size
  audio_cfg = model_config.audio.to_dict()
  common = regularised("config.model.audio", audio_cfg, common)
  size = audio_lib.parse_variant(audio_cfg.pop("variant"), **audio_cfg)
  features = {key: value for key, value in audio_cfg.items() if key not in size}
  return audio_lib.AudioEncoder(**size, **features, **common)


def _video_tower(model_config: ml_collections.ConfigDict, common: dict[str, Any],
                 vocab_size: int | None) -> nn.Module:
  """`config.model.video`: the frame ViT's `variant` ("mu/8"), size overrides and `posemb`,
  and `temporal` ("transformer" | "mean"), `temporal_depth` (VideoEncoder, `_vit_tower`)."""
  del vocab_size
  return _vit_tower("video", video_lib.VideoEncoder, model_config, common)


# Modality -> fn(config.model, common kwargs (dtypes, options, dropout_rate), vocab_size).
TOWER_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "image": _image_tower,
    "text": _text_tower,
    "audio": _audio_tower,
    "video": _video_tower,
}


def module_kwargs(model_config: ml_collections.ConfigDict, adapter_dim: int = 0
                  ) -> dict[str, Any]:
  """What every tower, fusion and decoder of `config.model` is built with: dtype,
  param_dtype, BlockOptions (`block_options`) and dropout_rate."""
  return dict(dtype=dtype_from_name(model_config.dtype),
              param_dtype=dtype_from_name(model_config.param_dtype),
              options=block_options(model_config, adapter_dim),
              dropout_rate=model_config.dropout_rate)


def fusion_from_config(model_config: ml_collections.ConfigDict, common: dict[str, Any]
                       ) -> nn.Module:
  """The fusion of `config.model.fusion` (`kind` plus that kind's fields; `dropout_rate`
  overrides the global one)."""
  fusion_cfg = model_config.fusion.to_dict()
  common = regularised("config.model.fusion", fusion_cfg, common, ("dropout_rate",))
  return build_fusion(fusion_cfg.pop("kind", None), **fusion_cfg, **common)


def pretrained_sources(config: ml_collections.ConfigDict) -> dict[str, dict[str, str]]:
  """`config.init_from` as {modality: dict(checkpoint=DIR, kind=KIND)} when it names
  imported (Hugging Face) towers; empty when unset or when it names an mmjax run."""
  init_from = config.get("init_from", None) or {}
  if isinstance(init_from, str):
    return {}
  if hasattr(init_from, "to_dict"):
    init_from = init_from.to_dict()
  return {modality: dict(source) for modality, source in init_from.items()}


def build_model(model_config: ml_collections.ConfigDict, *, modalities: tuple[str, ...],
                vocab_size: int | None, heads: tuple[HeadSpec, ...],
                adapter_dim: int = 0,
                init_from: Mapping[str, dict[str, str]] | None = None) -> MultimodalModel:
  """Builds the model of `config.model` for the given modalities and heads.

  `adapter_dim` > 0 inserts bottleneck adapters into every Transformer block (the
  `adapters` fine-tuning mode). A modality named in `init_from` (`config.init_from`) gets
  the architecture of that pretrained checkpoint instead of `config.model.<modality>`."""
  common = module_kwargs(model_config, adapter_dim)
  towers = build_towers(model_config, modalities, vocab_size, common, init_from)
  return MultimodalModel(towers, fusion_from_config(model_config, common),
                         Heads(heads, dtype=common["dtype"], param_dtype=common["param_dtype"]))


def build_towers(model_config: ml_collections.ConfigDict, modalities: tuple[str, ...],
                 vocab_size: int | None, common: dict[str, Any],
                 init_from: Mapping[str, dict[str, str]] | None = None
                 ) -> flax.core.FrozenDict:
  """{modality: tower} of `config.model` for `modalities`, built with `common`
  (`module_kwargs`); a modality named in `init_from` gets that pretrained checkpoint's
  architecture (`pretrained_tower`)."""
  init_from = dict(init_from or {})
  unknown = sorted(set(init_from) - set(modalities))
  if unknown:
    raise ConfigError(f"config.init_from: {', '.join(unknown)} is not among the run's "
                      f"modalities {', '.join(modalities)}")
  towers = {}
  for modality in modalities:
    if modality not in TOWER_BUILDERS:
      raise ConfigError(f"config.model.modalities: no tower for '{modality}'; expected some "
                        f"of {', '.join(TOWER_BUILDERS)}")
    if modality in init_from:
      # The architecture is the checkpoint's; the tower's own rates still apply.
      tower_cfg = model_config.get(modality, None) or {}
      tower_cfg = {name: tower_cfg[name] for name in REGULARISERS if name in tower_cfg}
      towers[modality] = pretrained_tower(
          modality, dict(init_from[modality]),
          regularised(f"config.model.{modality}", tower_cfg, common))
    else:
      towers[modality] = TOWER_BUILDERS[modality](model_config, common, vocab_size)
  return flax.core.FrozenDict(towers)


def decoder_from_config(model_config: ml_collections.ConfigDict, vocab_size: int, max_len: int,
                        common: dict[str, Any], purpose: str) -> nn.Module:
  """The causal TextDecoder (mmjax/models/decoder.py) of `config.model.decoder` =
  dict(width, depth, mlp_dim, num_heads, tie_embeddings (optional)), reading at most
  `max_len` tokens; `purpose` completes the error when the decoder is not configured."""
  from mmjax.models.decoder import TextDecoder

  if not model_config.get("decoder", None):
    raise ConfigError(f"config.model.decoder: {purpose} needs a decoder, "
                      "dict(width=..., depth=..., mlp_dim=..., num_heads=...)")
  decoder_cfg = model_config.decoder.to_dict()
  check_fields("config.model.decoder", decoder_cfg,
               {"width", "depth", "mlp_dim", "num_heads", "tie_embeddings"})
  return TextDecoder(vocab_size=vocab_size, max_len=max_len, **decoder_cfg, **common)


def build_pretrain_model(model_config: ml_collections.ConfigDict, *,
                         objectives: tuple[str, ...], vocab_size: int, contrastive: str,
                         mask_prob: float, mask_id: int, num_special: int,
                         negative_scale: float = 0.0) -> nn.Module:
  """The pre-training model (mmjax/models/pretrain.py) of `config.model`: image and text
  towers and fusion as for fine-tuning, `embed_dim` for the contrastive space, and
  `decoder` = dict(width, depth, mlp_dim, num_heads) when `caption` is an objective."""
  from mmjax.models.pretrain import CONTRASTIVE, OBJECTIVES, PretrainModel

  unknown = [name for name in objectives if name not in OBJECTIVES]
  if unknown:
    raise ConfigError(f"config.losses: unknown objective(s) {', '.join(unknown)}; expected "
                      f"some of {', '.join(OBJECTIVES)}")
  if contrastive not in CONTRASTIVE:
    raise ConfigError(f"config.task.contrastive: unknown '{contrastive}'; expected one of "
                      f"{', '.join(CONTRASTIVE)}")
  common = module_kwargs(model_config)
  fusion = None
  if {"itm", "mlm"} & set(objectives):
    if model_config.fusion.get("kind", None) == "late":
      raise ConfigError("config.model.fusion.kind: 'late' fusion has no joint tokens for "
                        "the itm and mlm objectives; use concat, merged, co_attention or "
                        "cross_attention")
    fusion = fusion_from_config(model_config, common)
  decoder = None
  if "caption" in objectives:
    decoder = decoder_from_config(model_config, vocab_size, model_config.text.max_len, common,
                                  "the caption objective")
  embed_dim = model_config.get("embed_dim", None)
  if not isinstance(embed_dim, int) or embed_dim <= 0:
    raise ConfigError(f"config.model.embed_dim: expected a positive integer (the contrastive "
                      f"embedding size), got {embed_dim!r}")
  return PretrainModel(
      image_encoder=_image_tower(model_config, common, vocab_size),
      text_encoder=_text_tower(model_config, common, vocab_size),
      fusion=fusion, caption_decoder=decoder, objectives=tuple(objectives),
      embed_dim=embed_dim, vocab_size=vocab_size, contrastive=contrastive,
      negative_scale=float(negative_scale), mask_prob=mask_prob,
      mask_id=mask_id, num_special=num_special, dtype=common["dtype"],
      param_dtype=common["param_dtype"])
