"""mmjax towers shaped like an HF checkpoint, from its `transformers` config object."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.config import ConfigError
from mmjax.convert.names import KINDS
from mmjax.models.layers import BlockOptions
from mmjax.models.text import TextEncoder
from mmjax.models.vit import ViT

# HF `hidden_act` -> mmjax activation.
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
               "gelu_fast": "gelu_tanh", "quick_gelu": "quick_gelu", "relu": "relu"}


def _activation(config: Any) -> str:
  act = config.hidden_act
  if act not in ACTIVATIONS:
    raise ConfigError(f"hidden_act: unsupported activation '{act}'; expected one of "
                      f"{', '.join(ACTIVATIONS)}")
  return ACTIVATIONS[act]


def _size(config: Any) -> dict[str, int]:
  return dict(width=config.hidden_size, depth=config.num_hidden_layers,
              mlp_dim=config.intermediate_size, num_heads=config.num_attention_heads)


def _projection_dim(config: Any, sub: Any) -> int:
  return getattr(config, "projection_dim", None) or getattr(sub, "projection_dim", 0) or 0


def tower_from_hf_config(config: Any, kind: str, *, block_overrides: dict[str, Any] | None = None,
                         **module_kw: Any) -> nn.Module:
  """The mmjax tower that reproduces an HF model exactly.

  Args:
    config: a `transformers` config (BertConfig, ViTConfig, CLIPConfig, CLIPTextConfig or
      CLIPVisionConfig), e.g. from `transformers.AutoConfig.from_pretrained(dir)`.
    kind: one of KINDS.
    block_overrides: BlockOptions fields to change that keep the checkpoint's function at
      load time, e.g. dict(adapter_dim=8) (adapters start as the identity) or
      dict(attention_implementation="cudnn").
    **module_kw: extra module fields (dtype, param_dtype, dropout_rate, ...).

  Returns:
    A TextEncoder or ViT with the checkpoint's sizes and architecture options.
  """
  _options = lambda *args, **kw: dataclasses.replace(  # noqa: E731
      BlockOptions(*args, **kw), **(block_overrides or {}))
  if kind == "bert":
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
      raise ConfigError("position_embedding_type: only 'absolute' BERT checkpoints load")
    options = _options("post", _activation(config), config.layer_norm_eps)
    return TextEncoder(vocab_size=config.vocab_size, max_len=config.max_position_embeddings,
                       **_size(config), options=options, type_vocab_size=config.type_vocab_size,
                       embed_norm=True, final_norm=False, pooler="cls_tanh", **module_kw)
  if kind == "vit":
    options = _options("pre", _activation(config), config.layer_norm_eps)
    return ViT(**_size(config), patch_size=config.patch_size, options=options,
               pooler="cls_tanh", **module_kw)
  if kind == "clip_text":
    sub = getattr(config, "text_config", config)
    options = _options("pre", _activation(sub), sub.layer_norm_eps, causal=True)
    eos = sub.eos_token_id
    return TextEncoder(vocab_size=sub.vocab_size, max_len=sub.max_position_embeddings,
                       **_size(sub), options=options, pooler="eos",
                       eos_token_id=None if eos == 2 else eos,
                       projection_dim=_projection_dim(config, sub), **module_kw)
  if kind == "clip_vision":
    sub = getattr(config, "vision_config", config)
    options = _options("pre", _activation(sub), sub.layer_norm_eps)
    return ViT(**_size(sub), patch_size=sub.patch_size, options=options, patch_bias=False,
               pre_norm=True, final_norm=False, pooler="cls_norm",
               projection_dim=_projection_dim(config, sub), **module_kw)
  raise ConfigError(f"convert kind: unknown kind '{kind}'; expected one of {', '.join(KINDS)}")


def example_inputs(config: Any, kind: str, batch: int = 1) -> tuple[jax.Array, ...]:
  """Zero inputs with the checkpoint's shapes: (ids [B, max_len], mask) or (images,)."""
  if kind in ("bert", "clip_text"):
    sub = getattr(config, "text_config", config)
    ids = jnp.zeros((batch, sub.max_position_embeddings), jnp.int32)
    return ids, jnp.ones_like(ids, bool)
  sub = getattr(config, "vision_config", config)
  return (jnp.zeros((batch, sub.image_size, sub.image_size, sub.num_channels), jnp.float32),)


def param_shapes(module: nn.Module, *inputs: jax.Array) -> Any:
  """The module's parameter tree as jax.ShapeDtypeStruct leaves (`jax.eval_shape`, no
  memory), pooler and projection included."""
  init = lambda: module.init(jax.random.key(0), *inputs, train=False)  # noqa: E731
  return jax.eval_shape(init)["params"]
