"""Losses for vision-language pre-training: pure JAX functions, safe under `jax.jit`.

* `itc_softmax` (CLIP / InfoNCE) and `itc_sigmoid` (SigLIP): image-text contrast.
* `sample_negatives`: in-batch hard negatives for image-text matching (ALBEF).
* `mask_tokens` and `token_cross_entropy`: BERT masked language modelling.
* `next_token_targets` and `token_cross_entropy`: captioning with a causal decoder.

Masks are boolean, True for real examples / tokens. Every loss is computed in float32
whatever the dtype of its inputs.

The contrastive losses take the whole batch as one array: under `jax.jit` with the batch
sharded across devices, the similarity matrix spans the global batch, so every device's
examples are negatives for every other's. Under `shard_map` / `pmap` (per-device arrays)
a caller must all-gather the embeddings first.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

# Stands in for -inf on masked logits: exp() of it is 0, and unlike -inf it gives no NaN
# when a whole row is masked (the row's loss is then finite and weighted out).
_MASKED_LOGIT = -1e30


def _similarity(image_emb: jax.Array, text_emb: jax.Array) -> jax.Array:
  """[B, D] x [B, D] -> [B, B] float32 dot products (images rows, texts columns)."""
  return jnp.einsum("id,jd->ij", image_emb.astype(jnp.float32), text_emb.astype(jnp.float32),
                    precision=jax.lax.Precision.HIGHEST)


def _batch_mask(mask: jax.Array | None, batch: int) -> jax.Array:
  return jnp.ones((batch,), bool) if mask is None else mask.astype(bool)


def _retrieval_accuracy(logits: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
  """In-batch top-1 accuracy both ways over valid rows; logits [B, B] with padding masked."""
  target = jnp.arange(logits.shape[0])
  weights = mask.astype(jnp.float32)
  count = jnp.maximum(weights.sum(), 1.0)
  i2t = (jnp.argmax(logits, axis=1) == target) * weights
  t2i = (jnp.argmax(logits, axis=0) == target) * weights
  return {"i2t_accuracy": i2t.sum() / count, "t2i_accuracy": t2i.sum() / count}


def itc_softmax(image_emb: jax.Array, text_emb: jax.Array, log_scale: jax.Array,
                mask: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Symmetric InfoNCE (CLIP): each image's text is the target among the batch's texts.

  Args:
    image_emb: [B, D] L2-normalised image embeddings.
    text_emb: [B, D] L2-normalised text embeddings; row i pairs with image i.
    log_scale: scalar, log of the logit scale (the learnable inverse temperature). It is
      not clipped here; CLIP clips the scale at 100.
    mask: [B] bool or None; False rows are padding, neither queries nor candidates.

  Returns:
    (loss scalar: mean over valid rows of (CE image->text + CE text->image) / 2,
     {"i2t_accuracy", "t2i_accuracy"}: in-batch top-1 accuracy over valid rows).
  """
  batch = image_emb.shape[0]
  mask = _batch_mask(mask, batch)
  logits = jnp.exp(jnp.asarray(log_scale, jnp.float32)) * _similarity(image_emb, text_emb)
  logits = jnp.where(mask[:, None] & mask[None, :], logits, _MASKED_LOGIT)
  i2t = -jnp.diagonal(jax.nn.log_softmax(logits, axis=1))
  t2i = -jnp.diagonal(jax.nn.log_softmax(logits, axis=0))
  weights = mask.astype(jnp.float32)
  loss = ((i2t + t2i) / 2 * weights).sum() / jnp.maximum(weights.sum(), 1.0)
  return loss, _retrieval_accuracy(logits, mask)


def itc_sigmoid(image_emb: jax.Array, text_emb: jax.Array, log_scale: jax.Array,
                bias: jax.Array, mask: jax.Array | None = None
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Pairwise sigmoid contrast (SigLIP): every (image, text) pair is a binary decision.

  Args:
    image_emb: [B, D] L2-normalised image embeddings.
    text_emb: [B, D] L2-normalised text embeddings; row i pairs with image i.
    log_scale: scalar, log of the logit scale (learnable).
    bias: scalar logit bias (learnable; SigLIP starts it at -10).
    mask: [B] bool or None; False rows are padding and take part in no pair.

  Returns:
    (loss scalar: -sum over valid pairs of log_sigmoid(label * logit) / valid rows, with
     label +1 on the diagonal and -1 elsewhere,
     {"i2t_accuracy", "t2i_accuracy"}: in-batch top-1 accuracy over valid rows).
  """
  batch = image_emb.shape[0]
  mask = _batch_mask(mask, batch)
  logits = (jnp.exp(jnp.asarray(log_scale, jnp.float32)) * _similarity(image_emb, text_emb)
            + jnp.asarray(bias, jnp.float32))
  labels = 2.0 * jnp.eye(batch, dtype=jnp.float32) - 1.0
  pairs = (mask[:, None] & mask[None, :]).astype(jnp.float32)
  count = jnp.maximum(mask.astype(jnp.float32).sum(), 1.0)
  loss = -(jax.nn.log_sigmoid(labels * logits) * pairs).sum() / count
  masked = jnp.where(pairs > 0, logits, _MASKED_LOGIT)
  return loss, _retrieval_accuracy(masked, mask)


def sample_negatives(rng: jax.Array, sim: jax.Array, mask: jax.Array | None = None,
                     exclude: jax.Array | None = None, *, hardest: bool = False
                     ) -> tuple[jax.Array, jax.Array]:
  """One in-batch negative per query row, drawn with probability softmax(sim[i]) (ALBEF).

  A column is allowed for row i unless it is i itself (the positive), a padding column
  (mask False) or excluded (exclude[i, j] True, e.g. a candidate with the same text).
  `sim` is taken as the logits of the draw, so scale it (e.g. by the ITC logit scale) to
  set how peaked the draw is. No gradient flows through `sim`.

  Args:
    rng: PRNG key (unused with hardest=True).
    sim: [B, B] similarities, query rows and candidate columns.
    mask: [B] bool or None; False rows are padding (never queries nor candidates).
    exclude: [B, B] bool or None; True where column j must not be a negative for row i.
    hardest: take the most similar allowed column instead of sampling.

  Returns:
    (indices [B] int32, valid [B] bool). valid is False for padding rows and for rows with
    no allowed column; such rows get their own index i, which callers must weight out.
  """
  sim = jax.lax.stop_gradient(sim).astype(jnp.float32)
  batch = sim.shape[0]
  mask = _batch_mask(mask, batch)
  rows = jnp.arange(batch)
  allowed = ~jnp.eye(batch, dtype=bool) & mask[None, :] & mask[:, None]
  if exclude is not None:
    allowed = allowed & ~exclude.astype(bool)
  logits = jnp.where(allowed, sim, -jnp.inf)
  if hardest:
    indices = jnp.argmax(logits, axis=1)
  else:
    indices = jax.random.categorical(rng, logits, axis=1)
  # Checking the drawn column itself also guards against NaN/inf in `sim`.
  valid = allowed.any(axis=1) & allowed[rows, indices]
  indices = jnp.where(valid, indices, rows).astype(jnp.int32)
  return indices, valid


def mask_tokens(rng: jax.Array, ids: jax.Array, mask: jax.Array, *, vocab_size: int,
                mask_id: int, num_special: int, prob: float = 0.15
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """BERT masking: select real, non-special tokens with probability `prob`; of those 80%
  become `mask_id`, 10% a random non-special id, and 10% stay as they are.

  Args:
    rng: PRNG key; the same key gives the same masking.
    ids: [B, T] int token ids; ids below `num_special` are special tokens, never selected.
    mask: [B, T] bool, True for real tokens; padding is never selected.
    vocab_size: random replacements are drawn uniformly from [num_special, vocab_size).
    mask_id: the [MASK] id (4 in mmjax vocabularies).
    num_special: number of special ids at the start of the vocabulary (5 in mmjax).
    prob: selection probability of each eligible token.

  Returns:
    (masked_ids [B, T] int32, targets [B, T] int32 = the original ids,
     weights [B, T] float32 = 1.0 on selected positions, else 0.0).
  """
  ids = ids.astype(jnp.int32)
  select_rng, action_rng, random_rng = jax.random.split(rng, 3)
  eligible = mask.astype(bool) & (ids >= num_special)
  selected = eligible & (jax.random.uniform(select_rng, ids.shape) < prob)
  action = jax.random.uniform(action_rng, ids.shape)
  random_ids = jax.random.randint(random_rng, ids.shape, num_special, vocab_size, jnp.int32)
  masked_ids = jnp.where(selected & (action < 0.8), jnp.int32(mask_id),
                         jnp.where(selected & (action >= 0.8) & (action < 0.9), random_ids, ids))
  return masked_ids, ids, selected.astype(jnp.float32)


def token_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array, *,
                        label_smoothing: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """Weighted per-token softmax cross-entropy (MLM on selected positions, captioning).

  Args:
    logits: [B, T, V] scores over the vocabulary.
    targets: [B, T] int target ids.
    weights: [B, T] float (or bool) per-token weights; 0 ignores a token.
    label_smoothing: mass spread uniformly over the V classes (optax.smooth_labels).

  Returns:
    (loss = sum(weights * CE) / max(sum(weights), 1),
     accuracy = sum(weights * [argmax == target]) / max(sum(weights), 1)), both scalars.
  """
  logits = logits.astype(jnp.float32)
  weights = weights.astype(jnp.float32)
  if label_smoothing:
    labels = optax.smooth_labels(jax.nn.one_hot(targets, logits.shape[-1]), label_smoothing)
    per_token = optax.softmax_cross_entropy(logits, labels)
  else:  # same value without materialising [B, T, V] one-hot labels
    per_token = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  count = jnp.maximum(weights.sum(), 1.0)
  loss = (per_token * weights).sum() / count
  accuracy = ((jnp.argmax(logits, axis=-1) == targets) * weights).sum() / count
  return loss, accuracy


def next_token_targets(token_ids: jax.Array, token_mask: jax.Array
                       ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Teacher forcing for a causal decoder: position t is fed token t and predicts t + 1.

  Args:
    token_ids: [B, T] int ids, e.g. [CLS] caption [SEP] [PAD]...
    token_mask: [B, T] bool, True for real tokens.

  Returns:
    (inputs [B, T-1] = token_ids[:, :-1], targets [B, T-1] = token_ids[:, 1:],
     weights [B, T-1] float32 = token_mask[:, 1:]).
  """
  return (token_ids[:, :-1], token_ids[:, 1:], token_mask[:, 1:].astype(jnp.float32))
