"""The causal text decoder and greedy / beam-search decoding."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.config import ConfigError
from mmjax.models.decoder import TextDecoder
from mmjax.models.decoding import beam_search, greedy_decode, length_normalised
from mmjax.models.layers import BlockOptions, Tokens

RNG = jax.random.key(0)
VOCAB, MAX_LEN, BATCH = 20, 6, 3
PAD, BOS, EOS = 0, 1, 2


def make_decoder(**kw):
  return TextDecoder(**{**dict(vocab_size=VOCAB, max_len=MAX_LEN, width=32, depth=1, mlp_dim=64,
                               num_heads=2), **kw})


def make_context(seed=0):
  """Tokens [3, 5, 24]: the second example has two padded tokens, the third one."""
  tokens = jax.random.normal(jax.random.key(seed), (BATCH, 5, 24))
  mask = jnp.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], bool)
  return Tokens(tokens, mask)


@pytest.fixture(scope="module")
def trained():
  """A decoder, its parameters, a jitted apply and a context."""
  decoder = make_decoder()
  context = make_context()
  ids = jnp.zeros((BATCH, MAX_LEN), jnp.int32)
  params = jax.jit(lambda c: decoder.init(RNG, ids, c, train=False))(context)
  apply = jax.jit(functools.partial(decoder.apply, train=False))
  return decoder, params, apply, context


def random_ids(seed, shape=(BATCH, MAX_LEN)):
  return jnp.asarray(np.random.default_rng(seed).integers(3, VOCAB, shape), jnp.int32)


# ----------------------------------------------------------------------------- the decoder


def test_decoder_shapes_dtypes_and_length_check():
  decoder = make_decoder(dtype=jnp.bfloat16)
  context = make_context()
  logits, params = jax.eval_shape(
      lambda i, c: decoder.init_with_output(RNG, i, c, train=False),
      jax.ShapeDtypeStruct((BATCH, 4), jnp.int32), context)
  assert logits.shape == (BATCH, 4, VOCAB) and logits.dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  assert params["params"]["pos_embedding"].shape == (1, MAX_LEN, 32)
  assert params["params"]["logits"]["kernel"].shape == (32, VOCAB)
  assert "cross_attention" in params["params"]["decoder"]["block_0"]
  with pytest.raises(ValueError, match="exceeds max_len 6"):
    decoder.init(RNG, jnp.zeros((1, 7), jnp.int32), context, train=False)
  # Post-norm blocks end normalised: no final norm.
  post = make_decoder(options=BlockOptions(norm_position="post"))
  post_params = jax.eval_shape(lambda c: post.init(RNG, jnp.zeros((3, 4), jnp.int32), c,
                                                   train=False), context)
  assert "norm_out" not in post_params["params"]["decoder"]
  assert "norm_out" in params["params"]["decoder"]


def test_decoder_is_causal(trained):
  _, params, apply, context = trained
  ids = random_ids(0)
  logits = apply(params, ids, context)
  for t in range(MAX_LEN - 1):
    changed = ids.at[:, t + 1:].set(random_ids(t + 1)[:, t + 1:])
    assert bool((changed != ids).any())
    new = apply(params, changed, context)
    np.testing.assert_allclose(new[:, :t + 1], logits[:, :t + 1], atol=1e-5)
    assert not np.allclose(new[:, t + 1], logits[:, t + 1], atol=1e-4)


def test_decoder_ignores_padded_context(trained):
  _, params, apply, context = trained
  ids = random_ids(1)
  logits = apply(params, ids, context)
  noise = jax.random.normal(jax.random.key(5), context.tokens.shape) * 10
  padded = Tokens(jnp.where(context.mask[..., None], context.tokens, noise), context.mask)
  np.testing.assert_allclose(apply(params, ids, padded), logits, atol=1e-5)
  real = Tokens(jnp.where(context.mask[..., None], noise, context.tokens), context.mask)
  assert not np.allclose(apply(params, ids, real), logits, atol=1e-3)


@pytest.mark.parametrize("tie", [False, True])
def test_logits_read_the_final_activations(trained, tie):
  decoder, params, _, context = trained
  ids = random_ids(2)
  if tie:
    decoder = make_decoder(tie_embeddings=True)
    params = jax.jit(lambda i, c: decoder.init(RNG, i, c, train=False))(ids, context)
  logits, state = jax.jit(lambda p, i, c: decoder.apply(
      p, i, c, train=False, capture_intermediates=True))(params, ids, context)
  hidden = state["intermediates"]["decoder"]["__call__"][0].tokens
  p = params["params"]
  if tie:
    assert "logits" not in p
    expected = hidden @ p["token_embedding"]["embedding"].T
  else:
    expected = hidden @ p["logits"]["kernel"] + p["logits"]["bias"]
  np.testing.assert_allclose(logits, expected, atol=1e-4)


# ------------------------------------------------------------------ scorers with known answers


def markov_apply(ids, tables):
  """A fake decoder: logits [N, L, V] = tables[n, t, ids[n, t]] (next token given position
  and previous token); the context `tables` [N, L, V, V] holds each example's table."""
  rows, length = ids.shape
  return tables[jnp.arange(rows)[:, None], jnp.arange(length)[None, :], ids]


def random_tables(seed, batch=BATCH, length=MAX_LEN, vocab=5, scale=2.0, eos_bias=0.0):
  """Random log-prob tables in which PAD and BOS are never generated."""
  logits = np.random.default_rng(seed).normal(size=(batch, length, vocab, vocab)) * scale
  logits[..., EOS] += eos_bias
  logits[..., [PAD, BOS]] = -np.inf
  return jnp.asarray(logits, jnp.float32)


def sequence_log_prob(table, sequence):
  """Summed log-probability of a generated sequence under one example's table (numpy)."""
  log_probs = np.asarray(jax.nn.log_softmax(table, axis=-1), np.float64)
  previous, total = BOS, 0.0
  for t, token in enumerate(sequence):
    if token == PAD:
      break
    total += log_probs[t, previous, token]
    previous = token
  return total


def brute_force_best(table, max_len, length_penalty, real_tokens=(3, 4)):
  """Best finished sequence by exhaustive enumeration: EOS-terminated ones of every length,
  and the max_len-long ones without EOS."""
  candidates = []
  for n in range(1, max_len + 1):
    for body in itertools.product(real_tokens, repeat=n - 1):
      candidates.append(list(body) + [EOS])
  candidates += [list(body) for body in itertools.product(real_tokens, repeat=max_len)]
  scored = [(sequence_log_prob(table, c) / ((5 + len(c)) / 6) ** length_penalty, c)
            for c in candidates]
  score, best = max(scored, key=lambda x: x[0])
  return score, best + [PAD] * (max_len - len(best))


def designed_tables(max_len=4):
  """Greedy takes 3 (p=.55) then keeps taking 3 (p=.36) and never ends; the best sequence is
  4, EOS with p = .45 * .95."""
  probs = np.full((5, 5), 1e-12)
  probs[BOS, [3, 4]] = .55, .45
  probs[3, [3, 4, EOS]] = .36, .34, .30
  probs[4, [EOS, 3]] = .95, .05
  probs[[PAD, EOS], 2:] = 1 / 3
  return jnp.asarray(np.tile(np.log(probs), (1, max_len, 1, 1)), jnp.float32)


# ------------------------------------------------------------------------------- decoding


def test_greedy_matches_stepwise_reference(trained):
  decoder, params, apply, context = trained
  steps = 4  # fewer than MAX_LEN: shorter buffers work too

  def reference(eos_id):
    """Python loop: re-run the decoder on the prefixes, take the argmax, stop at EOS."""
    out = np.full((BATCH, steps), PAD)
    prefixes, running = np.full((BATCH, 1), BOS), np.ones(BATCH, bool)
    for t in range(steps):
      logits = apply(params, jnp.asarray(prefixes, jnp.int32), context)  # [B, t + 1, V]
      token = np.asarray(jnp.argmax(logits[:, -1], axis=-1))
      out[running, t] = token[running]
      running &= token != eos_id
      prefixes = np.concatenate([prefixes, token[:, None]], axis=1)
    return out

  free = reference(eos_id=-1)  # never stops
  # The last new token example 0 produces (not PAD or BOS) becomes EOS, so it stops there.
  new = [t for t in range(steps) if free[0, t] > BOS and free[0, t] not in free[0, :t]]
  eos_id, stop = int(free[0, new[-1]]), new[-1]
  expected = reference(eos_id)
  assert expected[0, stop] == eos_id and (expected[0, stop + 1:] == PAD).all()
  apply_fn = jax.tree_util.Partial(
      lambda p, ids, ctx: decoder.apply(p, ids, ctx, train=False), params)
  np.testing.assert_array_equal(greedy_decode(apply_fn, context, BOS, eos_id, steps),
                                expected)
  ids, _ = beam_search(apply_fn, context, BOS, eos_id, steps, beam_size=1)
  np.testing.assert_array_equal(ids, expected)


def test_beam_size_one_equals_greedy_on_random_scorers():
  tables = random_tables(3, batch=16, eos_bias=-2.0)
  greedy = greedy_decode(markov_apply, tables, BOS, EOS, MAX_LEN)
  assert 0 < int((greedy == EOS).any(axis=1).sum()) < 16  # some examples stop, some do not
  for penalty in (0.0, 1.0):
    ids, scores = beam_search(markov_apply, tables, BOS, EOS, MAX_LEN, 1, penalty)
    np.testing.assert_array_equal(ids, greedy)


def test_beam_search_beats_greedy_on_designed_scorer():
  tables = jnp.tile(designed_tables(), (2, 1, 1, 1))
  greedy = np.asarray(greedy_decode(markov_apply, tables, BOS, EOS, 4))
  np.testing.assert_array_equal(greedy, [[3, 3, 3, 3]] * 2)
  ids, scores = beam_search(markov_apply, tables, BOS, EOS, 4, beam_size=2)
  np.testing.assert_array_equal(ids, [[4, EOS, PAD, PAD]] * 2)
  np.testing.assert_allclose(scores, np.log(.45 * .95), rtol=1e-5)
  assert sequence_log_prob(tables[0], greedy[0]) < float(scores[0])


def test_beam_search_keeps_extending_a_likely_sequence_past_unlikely_early_eos():
  """The likely sequence is 3, 3, EOS (p = .9 * .9 * .95); at steps 0 and 1 an unlikely
  EOS ranks second, so two finished hypotheses (p .06, .072) exist before it ends."""
  probs = np.full((4, 5, 5), 1e-12)
  probs[:, :, [3, 4, EOS]] = 1 / 3
  probs[0, BOS, [3, EOS, 4]] = .9, .06, .04
  probs[1, 3, [3, EOS, 4]] = .9, .08, .02
  probs[2, 3, [EOS, 3, 4]] = .95, .03, .02
  tables = jnp.asarray(np.log(probs)[None], jnp.float32)
  for length_penalty in (0.0, 0.6):
    ids, scores = beam_search(markov_apply, tables, BOS, EOS, 4, 2, length_penalty)
    np.testing.assert_array_equal(ids, [[3, 3, EOS, PAD]])
    np.testing.assert_allclose(scores, length_normalised(np.log(.9 * .9 * .95), 3,
                                                         length_penalty), rtol=1e-5)


@pytest.mark.parametrize("length_penalty", [0.0, 0.8])
def test_wide_beam_search_is_exhaustive(length_penalty):
  max_len = 4
  tables = random_tables(4, batch=4, length=max_len)
  # 2 real tokens: at most 3 * 2^3 = 24 finite candidates a step, so 32 beams keep them all.
  ids, scores = beam_search(markov_apply, tables, BOS, EOS, max_len, 32, length_penalty)
  for b in range(4):
    best_score, best = brute_force_best(tables[b], max_len, length_penalty)
    np.testing.assert_array_equal(ids[b], best)
    np.testing.assert_allclose(scores[b], best_score, rtol=1e-5)


def test_sequences_stop_at_eos_and_are_padded():
  stops = [0, 2, 4, MAX_LEN]  # the step at which each example is forced to end (never: 6)
  logits = np.array(random_tables(5, batch=4))
  for b, stop in enumerate(stops):
    if stop < MAX_LEN:
      logits[b, stop, :, EOS] = 50.0
    logits[b, :stop, :, EOS] = -np.inf
  tables = jnp.asarray(logits)
  for ids in (greedy_decode(markov_apply, tables, BOS, EOS, MAX_LEN),
              beam_search(markov_apply, tables, BOS, EOS, MAX_LEN, 3, 0.5)[0]):
    ids = np.asarray(ids)
    assert ids.shape == (4, MAX_LEN) and ids.dtype == np.int32
    for b, stop in enumerate(stops):
      assert (ids[b, :stop] >= 3).all()
      if stop < MAX_LEN:
        assert ids[b, stop] == EOS and (ids[b, stop + 1:] == PAD).all()


def test_beam_scores_are_length_normalised_log_probs():
  tables = random_tables(6, batch=5, eos_bias=0.5)
  ids, scores = beam_search(markov_apply, tables, BOS, EOS, MAX_LEN, 3, 0.6)
  for b in range(5):
    length = int((np.asarray(ids[b]) != PAD).sum())
    expected = length_normalised(sequence_log_prob(tables[b], ids[b]), length, 0.6)
    np.testing.assert_allclose(scores[b], expected, rtol=1e-5)


def test_decoding_compiles_once_per_shape():
  traces = []

  def counting_apply(temperature, ids, tables):
    traces.append(ids.shape)
    return markov_apply(ids, tables) / temperature

  # Arrays inside the Partial (here a temperature; in practice the parameters) are traced
  # arguments: new values do not retrace.
  for temperature, seed in [(1.0, 0), (2.0, 0), (1.0, 1)]:
    apply_fn = jax.tree_util.Partial(counting_apply, jnp.float32(temperature))
    greedy_decode(apply_fn, random_tables(seed), BOS, EOS, MAX_LEN)
  assert traces == [(BATCH, MAX_LEN)]
  for temperature in (1.0, 3.0):
    apply_fn = jax.tree_util.Partial(counting_apply, jnp.float32(temperature))
    beam_search(apply_fn, random_tables(0), BOS, EOS, MAX_LEN, 2, 0.5)
  assert traces[1:] == [(BATCH * 2, MAX_LEN)]
  greedy_decode(apply_fn, random_tables(0), BOS, EOS, MAX_LEN - 1)
  assert len(traces) == 3  # a new max_len is a new shape: one more trace


def test_bad_decoding_arguments_are_config_errors():
  tables = random_tables(7)
  with pytest.raises(ConfigError, match="decoding beam_size must be a positive integer"):
    beam_search(markov_apply, tables, BOS, EOS, MAX_LEN, beam_size=0)
  with pytest.raises(ConfigError, match="decoding max_len must be a positive integer"):
    greedy_decode(markov_apply, tables, BOS, EOS, max_len=0)
