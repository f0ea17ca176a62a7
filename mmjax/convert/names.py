"""HF PyTorch parameter names -> mmjax parameter paths, one rule list per checkpoint kind.

A rule maps a checkpoint name (a regular expression, layer numbers captured) to an mmjax path
(a template filled with the captured numbers) and says how the array changes:
  copy       as stored
  transpose  Linear weight [out, in] -> Dense kernel [in, out]
  conv       Conv2d weight [out, in, kh, kw] -> Conv kernel [kh, kw, in, out]
  lead1      prepend a unit axis: [N, D] -> [1, N, D] (position embeddings)
  lead2      prepend two unit axes: [D] -> [1, 1, D] (CLIP's class embedding)
A rule without a path drops the array, with the reason that the report shows.
"""

from __future__ import annotations

import re

import numpy as np

KINDS = ("bert", "vit", "clip_text", "clip_vision")
KEY_BIAS = "attention key biases, ignored (no effect on outputs)"
BUFFER = "buffers, not parameters"

Rule = tuple[str, str | None, str]  # (checkpoint name regex, mmjax path template, transform)


def _dense(ckpt: str, path: str, *, key: bool = False) -> list[Rule]:
  bias = (ckpt + r"\.bias", None, KEY_BIAS) if key else (ckpt + r"\.bias", path + "/bias", "copy")
  return [(ckpt + r"\.weight", path + "/kernel", "transpose"), bias]


def _norm(ckpt: str, path: str) -> list[Rule]:
  return [(ckpt + r"\.(?:weight|gamma)", path + "/scale", "copy"),
          (ckpt + r"\.(?:bias|beta)", path + "/bias", "copy")]


def _block(layer: str, names: dict[str, str]) -> list[Rule]:
  """The rules of one Transformer block; `names` gives the checkpoint's sub-layer names."""
  block = "encoder/block_{0}"
  return (_dense(layer + names["query"], block + "/self_attention/query")
          + _dense(layer + names["key"], block + "/self_attention/key", key=True)
          + _dense(layer + names["value"], block + "/self_attention/value")
          + _dense(layer + names["out"], block + "/self_attention/out")
          + _norm(layer + names["norm_self"], block + "/norm_self")
          + _dense(layer + names["fc1"], block + "/mlp/fc1")
          + _dense(layer + names["fc2"], block + "/mlp/fc2")
          + _norm(layer + names["norm_mlp"], block + "/norm_mlp"))


_BERT_LAYER = dict(query=r"attention\.self\.query", key=r"attention\.self\.key",
                   value=r"attention\.self\.value", out=r"attention\.output\.dense",
                   norm_self=r"attention\.output\.LayerNorm", fc1=r"intermediate\.dense",
                   fc2=r"output\.dense", norm_mlp=r"output\.LayerNorm")
_VIT_LAYER = dict(query=r"attention\.attention\.query", key=r"attention\.attention\.key",
                  value=r"attention\.attention\.value", out=r"attention\.output\.dense",
                  norm_self=r"layernorm_before", fc1=r"intermediate\.dense",
                  fc2=r"output\.dense", norm_mlp=r"layernorm_after")
_CLIP_LAYER = dict(query=r"self_attn\.q_proj", key=r"self_attn\.k_proj",
                   value=r"self_attn\.v_proj", out=r"self_attn\.out_proj",
                   norm_self=r"layer_norm1", fc1=r"mlp\.fc1", fc2=r"mlp\.fc2",
                   norm_mlp=r"layer_norm2")

RULES: dict[str, list[Rule]] = {
    "bert": [
        (r"embeddings\.word_embeddings\.weight", "token_embedding/embedding", "copy"),
        (r"embeddings\.position_embeddings\.weight", "pos_embedding", "lead1"),
        (r"embeddings\.token_type_embeddings\.weight", "type_embedding/embedding", "copy"),
        (r"embeddings\.position_ids", None, BUFFER),
        *_norm(r"embeddings\.LayerNorm", "embed_norm"),
        *_block(r"encoder\.layer\.(\d+)\.", _BERT_LAYER),
        *_dense(r"pooler\.dense", "pooler"),
    ],
    "vit": [
        (r"embeddings\.cls_token", "cls", "copy"),
        (r"embeddings\.position_embeddings", "pos_embedding", "copy"),
        (r"embeddings\.patch_embeddings\.projection\.weight", "patch_embedding/kernel", "conv"),
        (r"embeddings\.patch_embeddings\.projection\.bias", "patch_embedding/bias", "copy"),
        *_block(r"encoder\.layer\.(\d+)\.", _VIT_LAYER),
        *_norm(r"layernorm", "encoder/norm_out"),
        *_dense(r"pooler\.dense", "pooler"),
    ],
    "clip_text": [
        (r"text_model\.embeddings\.token_embedding\.weight", "token_embedding/embedding", "copy"),
        (r"text_model\.embeddings\.position_embedding\.weight", "pos_embedding", "lead1"),
        (r"text_model\.embeddings\.position_ids", None, BUFFER),
        *_block(r"text_model\.encoder\.layers\.(\d+)\.", _CLIP_LAYER),
        *_norm(r"text_model\.final_layer_norm", "encoder/norm_out"),
        (r"text_projection\.weight", "projection/kernel", "transpose"),
    ],
    "clip_vision": [
        (r"vision_model\.embeddings\.class_embedding", "cls", "lead2"),
        (r"vision_model\.embeddings\.patch_embedding\.weight", "patch_embedding/kernel", "conv"),
        (r"vision_model\.embeddings\.position_embedding\.weight", "pos_embedding", "lead1"),
        (r"vision_model\.embeddings\.position_ids", None, BUFFER),
        *_norm(r"vision_model\.pre_layrnorm", "pre_norm"),
        *_block(r"vision_model\.encoder\.layers\.(\d+)\.", _CLIP_LAYER),
        *_norm(r"vision_model\.post_layernorm", "pooler_norm"),
        (r"visual_projection\.weight", "projection/kernel", "transpose"),
    ],
}
# Wrapper prefixes of task models (BertForMaskedLM stores "bert.embeddings...").
STRIP = {"bert": ("bert.",), "vit": ("vit.",), "clip_text": (), "clip_vision": ()}
TRANSFORMS = {
    "copy": lambda x: x,
    "transpose": lambda x: x.T,
    "conv": lambda x: x.transpose(2, 3, 1, 0),
    "lead1": lambda x: x[None],
    "lead2": lambda x: x[None, None],
}
_COMPILED = {kind: [(re.compile(pattern), path, how) for pattern, path, how in rules]
             for kind, rules in RULES.items()}


def match(kind: str, name: str) -> tuple[str | None, str]:
  """Checkpoint name -> (mmjax path, transform) or (None, reason it is dropped).

  Raises:
    KeyError: `kind` is not one of KINDS.
  """
  short = name
  for prefix in STRIP[kind]:
    if short.startswith(prefix):
      short = short[len(prefix):]
  for pattern, path, how in _COMPILED[kind]:
    found = pattern.fullmatch(short)
    if found:
      return (path.format(*found.groups()), how) if path else (None, how)
  return None, "not part of this tower (other heads or towers)"


def transform(how: str, array: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(TRANSFORMS[how](array))
