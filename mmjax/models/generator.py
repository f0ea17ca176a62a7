"""Conditional text generation: towers and fusion read the inputs, a causal decoder writes.

`Generator` is the model of the `generation` task (mmjax/tasks/generation.py), e.g. a
question about a picture on a given topic. The towers of the run's modalities (the image,
and the topic text when "text" is among them) and `config.model.fusion` read the
inputs as in `MultimodalModel`; the decoder (`TextDecoder`, causal) cross-attends to every
fused stream, concatenated: under cross_attention fusion, the projected image tokens and
the topic tokens that have read the image. In training it is fed the target one token
behind (teacher forcing, `losses.next_token_targets`); in evaluation it also writes its own
text by beam search or greedy decoding (mmjax/models/decoding.py), starting from BOS
([CLS]) and stopping at EOS ([SEP]).

Parameter paths: `<modality>_encoder/...`, `fusion/...` (as in MultimodalModel, so
`config.init_from` loads pre-trained towers and fusion, and the fine-tuning modes freeze
the same towers) and `decoder/...` (always trained: it is no tower).
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import ml_collections

from mmjax.config import ConfigError
from mmjax.models import decoding
from mmjax.models.fusion import concat_tokens
from mmjax.models.layers import Tokens
from mmjax.models.model import (
  MODALITY_INPUTS,
  build_towers,
  decoder_from_config,
  fusion_from_config,
  module_kwargs,
)
from mmjax.objectives import losses

DECODINGS = ("beam", "greedy")


class Generator(nn.Module):
  """batch (inputs of `towers`, target_ids, target_mask, example_mask) -> outputs.

  `__call__` returns
    logits   [B, L, V] float32: the next-token scores, fed target_ids[:, :-1] (L = T - 1);
    targets  [B, L] int32 = target_ids[:, 1:];
    weights  [B, L] float32: 1 on real target tokens (EOS included) of real examples;
  and, in evaluation (`train=False`, not while initialising),
    generated [B, L] int32: the decoded tokens (BOS excluded, EOS included, pad_id after).
  `generate(batch)` decodes only (no target needed): generated ids [B, L].

  Attributes:
    towers: {modality: tower}, called with the batch keys of `inputs[modality]`.
    fusion: {modality: Tokens} -> Fused; its streams, concatenated, are the decoder's context.
    decoder: a causal TextDecoder with max_len >= L.
    bos_id, eos_id, pad_id: special token ids of the target vocabulary.
    max_decode_len: tokens generated at most, EOS included (T - 1 for targets of T tokens).
    decoding: "beam" or "greedy".
    beam_size, length_penalty: beam search's (decoding.beam_search).
  """

  towers: Mapping[str, nn.Module]
  fusion: nn.Module
  decoder: nn.Module
  bos_id: int
  eos_id: int
  max_decode_len: int
  pad_id: int = 0
  decoding: str = "beam"
  beam_size: int = 4
  length_penalty: float = 0.0
  inputs: Mapping[str, tuple[str, ...]] = MODALITY_INPUTS

  def setup(self):
    if self.decoding not in DECODINGS:
      raise ValueError(f"unknown decoding '{self.decoding}'; expected one of "
                       f"{', '.join(DECODINGS)}")
    for modality, tower in self.towers.items():
      setattr(self, f"{modality}_encoder", tower.clone())

  def context(self, batch: Mapping[str, jax.Array], *, train: bool = False) -> Tokens:
    """The decoder's context: every fused stream, in sorted modality order, [B, S, width]."""
    towers = {modality: getattr(self, f"{modality}_encoder")(
                  *[batch[key] for key in self.inputs[modality]], train=train)
              for modality in sorted(self.towers)}
    fused = self.fusion(towers, train=train)
    return concat_tokens([fused.streams[modality] for modality in sorted(fused.streams)])

  def __call__(self, batch: Mapping[str, jax.Array], *, train: bool = False
               ) -> dict[str, jax.Array]:
    context = self.context(batch, train=train)
    inputs, targets, weights = losses.next_token_targets(batch["target_ids"],
                                                         batch["target_mask"])
    example_mask = batch.get("example_mask")
    if example_mask is not None:
      weights = weights * example_mask[:, None].astype(weights.dtype)
    out = dict(logits=self.decoder(inputs, context, train=train), targets=targets,
               weights=weights)
    if not train and not self.is_initializing():
      out["generated"] = self._decode(context)
    return out

  def generate(self, batch: Mapping[str, jax.Array]) -> jax.Array:
    """Generated ids [B, max_decode_len] int32 for the batch's inputs."""
    return self._decode(self.context(batch, train=False))

  def _decode(self, context: Tokens) -> jax.Array:
    # The decoding loops are plain JAX: they call the decoder as a pure function of its
    # parameters (an unbound copy applied to this module's decoder variables).
    decoder = self.decoder.clone(parent=None)

    def apply(params, token_ids, context):
      return decoder.apply({"params": params}, token_ids, context, train=False)

    step = jax.tree_util.Partial(apply, self.decoder.variables["params"])
    special = dict(bos_id=self.bos_id, eos_id=self.eos_id, max_len=self.max_decode_len,
                   pad_id=self.pad_id)
    if self.decoding == "greedy":
      return decoding.greedy_decode(step, context, **special)
    return decoding.beam_search(step, context, beam_size=self.beam_size,
                                length_penalty=self.length_penalty, **special)[0]


def build_generator(model_config: ml_collections.ConfigDict, *, modalities: tuple[str, ...],
                    text_vocab_size: int | None, target_vocab_size: int, max_target_len: int,
                    bos_id: int, eos_id: int, pad_id: int, decoding: str = "beam",
                    beam_size: int = 4, length_penalty: float = 0.0, adapter_dim: int = 0,
                    init_from: Mapping[str, dict[str, str]] | None = None) -> Generator:
  """The Generator of `config.model`: towers of `modalities` (adapters of `adapter_dim`,
  pretrained towers of `init_from` as in `build_model`), `config.model.fusion`, and the
  decoder `config.model.decoder` = dict(width, depth, mlp_dim, num_heads) over the target
  vocabulary, for targets of `max_target_len` tokens (BOS and EOS included)."""
  if isinstance(max_target_len, bool) or not isinstance(max_target_len, int) or \
      max_target_len < 2:
    raise ConfigError(f"config.input.max_target_len: expected an integer >= 2 (BOS, EOS), got "
                      f"{max_target_len!r}")
  common = module_kwargs(model_config, adapter_dim)
  decode_len = max_target_len - 1
  return Generator(
      towers=build_towers(model_config, modalities, text_vocab_size, common, init_from),
      fusion=fusion_from_config(model_config, common),
      decoder=decoder_from_config(model_config, target_vocab_size, decode_len,
                                  module_kwargs(model_config), "the generation task"),
      bos_id=bos_id, eos_id=eos_id, pad_id=pad_id, max_decode_len=decode_len,
      decoding=decoding, beam_size=beam_size, length_penalty=float(length_penalty))
