"""Greedy and beam-search decoding with fixed shapes, compiled once per shape.

`apply_fn(token_ids, context) -> logits` is any decoder: token_ids [N, max_len] int32 (BOS
first, then the tokens generated so far, then padding), context any pytree whose leaves have
the batch N as their first axis (e.g. `layers.Tokens`), logits [N, max_len, vocab] float. The
logits at position t must depend only on token_ids[:, :t + 1] (a causal decoder such as
`TextDecoder`); they score the token generated at step t.

Every step re-runs the decoder on the whole fixed-length [N, max_len] buffer and reads
position t (no KV cache): O(max_len) decoder passes of length max_len, simple and exact, one
compiled program per shape. A KV cache would make a step O(1) in sequence length but needs
attention that can append keys, which `layers.MultiHeadAttention` does not have yet.

Compilation: both functions are `jax.jit`-ted with bos_id, eos_id, max_len (and beam_size,
length_penalty, pad_id) static. `apply_fn` travels as a pytree: wrap it in
`jax.tree_util.Partial(fn, params)` to pass parameters as traced arguments, and reuse the same
`fn` object across calls; then repeated calls with the same shapes do not retrace. A plain
callable is wrapped the same way (its identity is part of the cache key).

Outputs are generated tokens only (BOS is not included): ids [B, max_len] int32 with EOS
where it was produced and pad_id after it; a sequence that never produces EOS fills all
max_len positions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from mmjax.config import ConfigError

ApplyFn = Callable[[jax.Array, Any], jax.Array]


def _as_pytree(apply_fn: ApplyFn) -> jax.tree_util.Partial:
  if isinstance(apply_fn, jax.tree_util.Partial):
    return apply_fn
  return jax.tree_util.Partial(apply_fn)


def _batch_size(context: Any) -> int:
  leaves = jax.tree.leaves(context)
  if not leaves:
    raise ValueError("the decoding context must hold at least one array with a batch axis")
  return leaves[0].shape[0]


def _check_positive(**values: int) -> None:
  for name, value in values.items():
    if not isinstance(value, int) or value < 1:
      raise ConfigError(f"decoding {name} must be a positive integer, got {value!r}")


def _step_log_probs(apply_fn, buffer: jax.Array, context: Any, bos_id: int,
                    t: jax.Array) -> jax.Array:
  """buffer [N, L] generated tokens -> log-probs [N, vocab] float32 of the token at step t."""
  inputs = jnp.concatenate([jnp.full((buffer.shape[0], 1), bos_id, jnp.int32),
                            buffer[:, :-1]], axis=1)
  logits = apply_fn(inputs, context)
  step = jax.lax.dynamic_index_in_dim(logits, t, axis=1, keepdims=False)
  return jax.nn.log_softmax(step.astype(jnp.float32), axis=-1)


def greedy_decode(apply_fn: ApplyFn, context: Any, bos_id: int, eos_id: int, max_len: int,
                  pad_id: int = 0) -> jax.Array:
  """Takes the most likely token at each step until EOS or max_len.

  Args:
    apply_fn: see the module docstring.
    context: pytree of arrays with leading batch axis B.
    bos_id, eos_id, pad_id: special token ids (static).
    max_len: tokens to generate at most (static).

  Returns:
    ids [B, max_len] int32: generated tokens, EOS included, pad_id after EOS.
  """
  _check_positive(max_len=max_len)
  return _greedy(_as_pytree(apply_fn), context, bos_id=bos_id, eos_id=eos_id,
                 max_len=max_len, pad_id=pad_id)


@functools.partial(jax.jit, static_argnames=("bos_id", "eos_id", "max_len", "pad_id"))
def _greedy(apply_fn, context, *, bos_id, eos_id, max_len, pad_id):
  batch = _batch_size(context)

  def not_done(state):
    t, _, finished = state
    return (t < max_len) & ~jnp.all(finished)

  def step(state):
    t, ids, finished = state
    token = jnp.argmax(_step_log_probs(apply_fn, ids, context, bos_id, t), axis=-1)
    token = jnp.where(finished, pad_id, token).astype(jnp.int32)
    ids = jax.lax.dynamic_update_slice_in_dim(ids, token[:, None], t, axis=1)
    return t + 1, ids, finished | (token == eos_id)

  state = (jnp.int32(0), jnp.full((batch, max_len), pad_id, jnp.int32),
           jnp.zeros((batch,), bool))
  return jax.lax.while_loop(not_done, step, state)[1]


def length_normalised(log_prob: jax.Array, length: int | jax.Array,
                      length_penalty: float) -> jax.Array:
  """GNMT length normalisation (Wu et al. 2016): log_prob / ((5 + length) / 6) ** alpha.

  alpha = 0 ranks by the summed log-probability; larger alpha favours longer sequences.
  """
  return log_prob / ((5.0 + length) / 6.0) ** length_penalty


def beam_search(apply_fn: ApplyFn, context: Any, bos_id: int, eos_id: int, max_len: int,
                beam_size: int, length_penalty: float = 0.0,
                pad_id: int = 0) -> tuple[jax.Array, jax.Array]:
  """Beam search with `beam_size` live hypotheses per example.

  Each step extends every live hypothesis by every token and keeps the 2 * beam_size best
  candidates by summed log-probability. Candidates ending in EOS that rank among the first
  beam_size are finished (scored by `length_normalised`, length counting EOS); the best
  beam_size candidates not ending in EOS stay live. An example stops once it has beam_size
  finished hypotheses and its best live one, normalised at its current length, scores no
  better than the worst of them (so beam_size=1 is exactly greedy decoding). Stopping at
  the first beam_size finished ones instead would return an unlikely early EOS, picked up
  at rank 2 of some step, over the likely sequence still being extended. At max_len, live
  hypotheses count as finished with length max_len (they have no EOS).

  Args:
    apply_fn: see the module docstring; called on B * beam_size rows.
    context: pytree of arrays with leading batch axis B (repeated beam_size times inside).
    bos_id, eos_id, pad_id: special token ids (static).
    max_len: tokens to generate at most (static).
    beam_size: live hypotheses per example (static).
    length_penalty: GNMT alpha (static); 0 ranks by total log-probability.

  Returns:
    ids [B, max_len] int32, the best finished hypothesis (EOS included, pad_id after it),
    and scores [B] float32, its length-normalised log-probability.
  """
  _check_positive(max_len=max_len, beam_size=beam_size)
  return _beam_search(_as_pytree(apply_fn), context, bos_id=bos_id, eos_id=eos_id,
                      max_len=max_len, beam_size=beam_size,
                      length_penalty=float(length_penalty), pad_id=pad_id)


@functools.partial(jax.jit, static_argnames=("bos_id", "eos_id", "max_len", "beam_size",
                                             "length_penalty", "pad_id"))
def _beam_search(apply_fn, context, *, bos_id, eos_id, max_len, beam_size, length_penalty,
                 pad_id):
  batch, beams = _batch_size(context), beam_size
  tiled_context = jax.tree.map(lambda x: jnp.repeat(x, beams, axis=0), context)
  take = lambda x, index: jnp.take_along_axis(x, index[..., None], axis=1)  # noqa: E731

  def not_done(state):
    return (state["t"] < max_len) & ~jnp.all(state["done"])

  def step(state):
    t, alive_ids, alive_lp = state["t"], state["alive_ids"], state["alive_lp"]
    log_probs = _step_log_probs(apply_fn, alive_ids.reshape(batch * beams, max_len),
                                tiled_context, bos_id, t).reshape(batch, beams, -1)
    vocab = log_probs.shape[-1]
    scores = (alive_lp[:, :, None] + log_probs).reshape(batch, beams * vocab)
    cand_lp, cand_index = jax.lax.top_k(scores, min(2 * beams, beams * vocab))
    token = (cand_index % vocab).astype(jnp.int32)
    cand_ids = jax.lax.dynamic_update_slice_in_dim(
        take(alive_ids, cand_index // vocab), token[..., None], t, axis=2)
    is_eos = token == eos_id
    # Finish EOS candidates that rank among the first beam_size; keep the best finished.
    rank = jnp.arange(cand_lp.shape[1])[None, :]
    finish = is_eos & (rank < beams) & jnp.isfinite(cand_lp) & ~state["done"][:, None]
    new_scores = jnp.where(finish, length_normalised(cand_lp, t + 1, length_penalty), -jnp.inf)
    fin_scores, fin_index = jax.lax.top_k(
        jnp.concatenate([state["fin_scores"], new_scores], axis=1), beams)
    fin_ids = take(jnp.concatenate([state["fin_ids"], cand_ids], axis=1), fin_index)
    # The best candidates not ending in EOS stay live.
    alive_lp, alive_index = jax.lax.top_k(jnp.where(is_eos, -jnp.inf, cand_lp), beams)
    full = jnp.sum(jnp.isfinite(fin_scores), axis=1) >= beams
    best_alive = length_normalised(alive_lp[:, 0], t + 1, length_penalty)
    done = state["done"] | (full & (fin_scores[:, -1] >= best_alive))
    return dict(t=t + 1, alive_ids=take(cand_ids, alive_index), alive_lp=alive_lp,
                fin_ids=fin_ids, fin_scores=fin_scores, done=done)

  pads = jnp.full((batch, beams, max_len), pad_id, jnp.int32)
  # Only beam 0 is live at the start, so the first step does not pick duplicates.
  first = jnp.where(jnp.arange(beams) == 0, 0.0, -jnp.inf)
  state = jax.lax.while_loop(not_done, step, dict(
      t=jnp.int32(0), alive_ids=pads, alive_lp=jnp.tile(first[None], (batch, 1)),
      fin_ids=pads, fin_scores=jnp.full((batch, beams), -jnp.inf), done=jnp.zeros(batch, bool)))
  # Examples still running reached max_len: their live hypotheses finish without EOS.
  live_scores = jnp.where(state["done"][:, None], -jnp.inf,
                          length_normalised(state["alive_lp"], max_len, length_penalty))
  scores = jnp.concatenate([state["fin_scores"], live_scores], axis=1)
  best = jnp.argmax(scores, axis=1)
  ids = jnp.concatenate([state["fin_ids"], state["alive_ids"]], axis=1)
  return take(ids, best[:, None])[:, 0], jnp.take_along_axis(scores, best[:, None], axis=1)[:, 0]
