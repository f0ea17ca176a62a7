"""Knowledge tracing with a causal Transformer: will the student get the next exercise right?

A student's history is a sequence of interactions (exercise, skill, response). Token t
joins what is known when exercise t is posed: the exercise and its skill (the query)
and the interaction of step t - 1 (exercise and skill crossed with its response; a
learned start token at t = 0), plus a learned position. Causal self-attention then lets
token t read tokens 0..t, i.e. exercises 0..t and responses 0..t-1, so the logit at t
predicts response t from the history before it and never sees it (SAKT, Pandey &
Karypis 2019, asks the same question with a query attending to past interactions; here
one causal stack of `layers.TransformerBlock`s does both).

Right padding needs no mask: outputs at a real step depend only on earlier steps.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mmjax.config import check_fields
from mmjax.models.layers import BlockOptions, Dtype, Encoder, Tokens, dense
from mmjax.models.model import module_kwargs


def previous_interactions(ids: jax.Array, response: jax.Array) -> jax.Array:
  """[B, L] ids (exercise or skill) and responses (0/1) -> the id of step t - 1's
  interaction at t, `1 + 2 * id + response`, and 0 (start) at t = 0."""
  interaction = 1 + 2 * ids + response
  return jnp.pad(interaction[:, :-1], ((0, 0), (1, 0)))


class TracerFields(nn.Module):
  """The fields InteractionEncoder and KnowledgeTracer share (no parameters of its own)."""

  num_exercises: int
  num_skills: int
  max_len: int
  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  options: BlockOptions = BlockOptions()


class InteractionEncoder(TracerFields):
  """exercise, skill, response [B, L] int32 -> hidden states [B, L, width], where the state
  at t depends on exercise and skill 0..t and response 0..t-1 only.

  Parameters: `exercise_embedding` [num_exercises, width], `skill_embedding`
  [num_skills, width], `interaction_embedding` [1 + 2 num_exercises, width],
  `interaction_skill_embedding` [1 + 2 num_skills, width], `response_embedding` [3, width]
  (start, wrong, right: what every exercise's interactions share), `pos_embedding`
  [1, max_len, width], `encoder` (causal blocks and `norm_out`, as `layers.Encoder`).
  """

  @nn.compact
  def __call__(self, exercise: jax.Array, skill: jax.Array, response: jax.Array, *,
               train: bool) -> jax.Array:
    length = exercise.shape[1]
    if length > self.max_len:
      raise ValueError(f"sequence length {length} exceeds max_len {self.max_len}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    embed = lambda count, name: nn.Embed(  # noqa: E731
        count, self.width, embedding_init=nn.initializers.normal(0.02), name=name, **kw)
    response = response.astype(jnp.int32)
    tokens = (embed(self.num_exercises, "exercise_embedding")(exercise)
              + embed(self.num_skills, "skill_embedding")(skill)
              + embed(1 + 2 * self.num_exercises, "interaction_embedding")(
                  previous_interactions(exercise, response))
              + embed(1 + 2 * self.num_skills, "interaction_skill_embedding")(
                  previous_interactions(skill, response))
              + embed(3, "response_embedding")(
                  previous_interactions(jnp.zeros_like(response), response)))
    pos = self.param("pos_embedding", nn.initializers.normal(stddev=0.02),
                     (1, self.max_len, self.width), self.param_dtype)
    tokens = tokens + pos[:, :length].astype(self.dtype)
    tokens = nn.Dropout(self.dropout_rate)(tokens, deterministic=not train)
    options = dataclasses.replace(self.options, causal=True)
    mask = jnp.ones(exercise.shape, bool)  # causal: padding after a step cannot reach it
    return Encoder(self.depth, self.num_heads, self.mlp_dim, dropout_rate=self.dropout_rate,
                   options=options, final_norm=options.norm_position == "pre",
                   name="encoder", **kw)(Tokens(tokens, mask), train=train).tokens


class KnowledgeTracer(TracerFields):
  """A batch with `exercise`, `skill`, `response` [B, L] int32 -> {"logits": [B, L] float32},
  the log-odds that response t is right given steps < t and exercise t.

  Fields: TracerFields' (as InteractionEncoder). Parameters: `interaction_encoder` (the
  InteractionEncoder: finetune rules treat it as a tower, like the other `*_encoder`s) and
  `head` (a Dense [width, 1]).
  """

  @nn.compact
  def __call__(self, batch: dict[str, jax.Array], *, train: bool) -> dict[str, jax.Array]:
    fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(TracerFields)
              if f.name not in ("parent", "name")}
    hidden = InteractionEncoder(**fields, name="interaction_encoder")(
        batch["exercise"], batch["skill"], batch["response"], train=train)
    logits = dense(1, "head", dtype=self.dtype, param_dtype=self.param_dtype)(hidden)[..., 0]
    return {"logits": logits.astype(jnp.float32)}


MODEL_FIELDS = ("width", "depth", "mlp_dim", "num_heads", "max_len", "dropout_rate", "dtype",
                "param_dtype", "block")


def build_tracer(model_config: ml_collections.ConfigDict, *, num_exercises: int,
                 num_skills: int, adapter_dim: int = 0) -> KnowledgeTracer:
  """The KnowledgeTracer of `config.model` (width, depth, mlp_dim, num_heads, max_len,
  dropout_rate, dtype, param_dtype, optional block options)."""
  check_fields("config.model", model_config.keys(), MODEL_FIELDS)
  common: dict[str, Any] = module_kwargs(model_config, adapter_dim)
  return KnowledgeTracer(
      num_exercises=num_exercises, num_skills=num_skills, max_len=model_config.max_len,
      width=model_config.width, depth=model_config.depth, mlp_dim=model_config.mlp_dim,
      num_heads=model_config.num_heads, **common)
