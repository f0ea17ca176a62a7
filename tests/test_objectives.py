import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mmjax.objectives.losses import (
    itc_sigmoid,
    itc_softmax,
    mask_tokens,
    next_token_targets,
    sample_negatives,
    token_cross_entropy,
)

IMAGES = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], np.float32)
TEXTS = np.array([[0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]], np.float32)


def softmax_reference(images, texts, scale):
  """CLIP loss with explicit loops and log-sum-exp, for the rows given (no mask)."""
  n = len(images)
  logits = [[scale * sum(a * b for a, b in zip(images[i], texts[j], strict=True))
             for j in range(n)] for i in range(n)]
  total = 0.0
  for i in range(n):
    row_lse = math.log(sum(math.exp(logits[i][j]) for j in range(n)))
    col_lse = math.log(sum(math.exp(logits[j][i]) for j in range(n)))
    total += ((row_lse - logits[i][i]) + (col_lse - logits[i][i])) / 2
  return total / n


def sigmoid_reference(images, texts, scale, bias):
  n = len(images)
  total = 0.0
  for i in range(n):
    for j in range(n):
      logit = scale * sum(a * b for a, b in zip(images[i], texts[j], strict=True)) + bias
      label = 1.0 if i == j else -1.0
      total += math.log1p(math.exp(-label * logit))  # -log_sigmoid(label * logit)
  return total / n


def unit_rows(rng, shape):
  x = rng.normal(size=shape).astype(np.float32)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_itc_softmax_matches_hand_computation():
  # Identity embeddings, scale 1: logits = I, each CE = log(e + 1) - 1 both ways.
  loss, _ = itc_softmax(jnp.eye(2), jnp.eye(2), 0.0)
  assert float(loss) == pytest.approx(math.log(math.e + 1) - 1, rel=1e-6)

  loss, metrics = itc_softmax(IMAGES, TEXTS, math.log(2.0))
  assert float(loss) == pytest.approx(softmax_reference(IMAGES, TEXTS, 2.0), rel=1e-6)
  # Similarities (rows images, columns texts): [[.8, 0, -.6], [.6, 1, .8], [.96, .8, .28]].
  # Row maxima are at columns 0, 1, 0: i2t 2/3. Column maxima at rows 2, 1, 1: t2i 1/3.
  assert float(metrics["i2t_accuracy"]) == pytest.approx(2 / 3)
  assert float(metrics["t2i_accuracy"]) == pytest.approx(1 / 3)
  assert set(metrics) == {"i2t_accuracy", "t2i_accuracy"}


def test_itc_softmax_mask_is_deleting_the_row():
  rng = np.random.default_rng(0)
  images, texts = unit_rows(rng, (5, 4)), unit_rows(rng, (5, 4))
  mask = np.array([True, True, False, True, False])
  loss, metrics = itc_softmax(images, texts, 1.5, mask)
  kept_loss, kept_metrics = itc_softmax(images[mask], texts[mask], 1.5)
  assert float(loss) == pytest.approx(float(kept_loss), rel=1e-6)
  assert float(loss) == pytest.approx(
      softmax_reference(images[mask], texts[mask], math.exp(1.5)), rel=1e-5)
  for name in metrics:
    assert float(metrics[name]) == pytest.approx(float(kept_metrics[name]))
  # Padding rows may hold anything, e.g. vectors far from unit norm.
  garbage_images = images.copy()
  garbage_images[2] = 50.0
  assert float(itc_softmax(garbage_images, texts, 1.5, mask)[0]) == pytest.approx(
      float(kept_loss), rel=1e-6)


def test_itc_gradients_finite():
  grad = jax.grad(lambda s: itc_softmax(IMAGES, TEXTS, s)[0])(jnp.float32(2.0))
  assert np.isfinite(float(grad)) and float(grad) != 0.0
  grads = jax.grad(lambda s, b: itc_sigmoid(IMAGES, TEXTS, s, b)[0], argnums=(0, 1))(
      jnp.float32(2.0), jnp.float32(-1.0))
  assert all(np.isfinite(float(g)) and float(g) != 0.0 for g in grads)
  # An all-padding batch gives loss 0 and finite gradients (no NaN from empty softmaxes).
  none = np.zeros(3, bool)
  for fn in (lambda s: itc_softmax(IMAGES, TEXTS, s, none)[0],
             lambda s: itc_sigmoid(IMAGES, TEXTS, s, -1.0, none)[0]):
    value, grad = jax.value_and_grad(fn)(jnp.float32(2.0))
    assert float(value) == 0.0 and float(grad) == 0.0


def test_itc_sigmoid_matches_hand_computation():
  loss, metrics = itc_sigmoid(IMAGES, TEXTS, math.log(3.0), -2.0)
  assert float(loss) == pytest.approx(sigmoid_reference(IMAGES, TEXTS, 3.0, -2.0), rel=1e-6)
  # The bias moves every logit equally, so retrieval is as in the softmax test.
  assert float(metrics["i2t_accuracy"]) == pytest.approx(2 / 3)
  assert float(metrics["t2i_accuracy"]) == pytest.approx(1 / 3)
  # Bias matters for the sigmoid loss (not for the softmax one).
  assert float(itc_sigmoid(IMAGES, TEXTS, math.log(3.0), 0.0)[0]) == pytest.approx(
      sigmoid_reference(IMAGES, TEXTS, 3.0, 0.0), rel=1e-6)

  rng = np.random.default_rng(1)
  images, texts = unit_rows(rng, (5, 4)), unit_rows(rng, (5, 4))
  mask = np.array([False, True, True, False, True])
  loss, _ = itc_sigmoid(images, texts, 2.0, -5.0, mask)
  assert float(loss) == pytest.approx(
      sigmoid_reference(images[mask], texts[mask], math.exp(2.0), -5.0), rel=1e-6)
  assert float(loss) == pytest.approx(
      float(itc_sigmoid(images[mask], texts[mask], 2.0, -5.0)[0]), rel=1e-6)


def test_itc_negatives_come_from_the_global_batch():
  devices = jax.devices()
  assert len(devices) == 8
  mesh = Mesh(np.array(devices), ("data",))
  rows = NamedSharding(mesh, PartitionSpec("data"))
  rng = np.random.default_rng(2)
  images, texts = unit_rows(rng, (16, 8)), unit_rows(rng, (16, 8))
  mask = np.ones(16, bool)
  mask[[3, 12]] = False
  sharded = [jax.device_put(x, rows) for x in (images, texts, mask)]
  assert len(sharded[0].sharding.device_set) == 8
  on_one = [jax.device_put(x, devices[0]) for x in (images, texts, mask)]

  softmax = jax.jit(itc_softmax)
  sigmoid = jax.jit(itc_sigmoid)
  for fn, args in ((softmax, (2.3,)), (sigmoid, (2.3, -4.0))):
    image_arg, text_arg, mask_arg = sharded
    global_loss, global_metrics = fn(image_arg, text_arg, *args, mask_arg)
    image_arg, text_arg, mask_arg = on_one
    single_loss, single_metrics = fn(image_arg, text_arg, *args, mask_arg)
    assert abs(float(global_loss) - float(single_loss)) <= 1e-5
    for name in single_metrics:
      assert float(global_metrics[name]) == pytest.approx(float(single_metrics[name]))
    # Sanity: per-device (2-example) batches would give a clearly different loss.
    per_device = np.mean([float(fn(images[k:k + 2], texts[k:k + 2], *args)[0])
                          for k in range(0, 16, 2) if mask[k:k + 2].all()])
    assert abs(per_device - float(single_loss)) > 1e-2


def allowed_reference(batch, mask, exclude):
  return np.array([[i != j and mask[i] and mask[j] and not exclude[i][j]
                    for j in range(batch)] for i in range(batch)])


def test_sample_negatives_never_returns_positive_or_excluded():
  rng = np.random.default_rng(3)
  batch = 7
  sim = rng.normal(size=(batch, batch)).astype(np.float32) * 3
  sim[np.arange(batch), np.arange(batch)] = 100.0  # the positive is by far the most similar
  mask = np.array([True, True, True, True, False, True, True])
  exclude = rng.random((batch, batch)) < 0.3
  exclude[5, :] = True  # row 5: nothing allowed
  allowed = allowed_reference(batch, mask, exclude)

  keys = jax.random.split(jax.random.key(0), 500)
  indices, valid = jax.vmap(lambda k: sample_negatives(k, sim, mask, exclude))(keys)
  indices, valid = np.asarray(indices), np.asarray(valid)
  assert indices.dtype == np.int32 and valid.dtype == bool
  np.testing.assert_array_equal(valid, np.broadcast_to(allowed.any(1), valid.shape))
  for i in range(batch):
    if allowed[i].any():
      assert allowed[i, indices[:, i]].all()
    else:
      assert (indices[:, i] == i).all()
  assert not valid[:, 4].any() and not valid[:, 5].any()


def test_sample_negatives_hardest_and_fully_excluded_row():
  sim = np.array([[9.0, 1.0, 5.0, 3.0],
                  [2.0, 9.0, 4.0, 7.0],
                  [8.0, 6.0, 9.0, 0.0],
                  [1.0, 2.0, 3.0, 9.0]], np.float32)
  exclude = np.zeros((4, 4), bool)
  exclude[0, 2] = True                 # row 0: 5.0 excluded -> next best is column 3
  exclude[3, :3] = True                # row 3: every candidate excluded
  indices, valid = sample_negatives(None, sim, None, exclude, hardest=True)
  np.testing.assert_array_equal(indices, [3, 3, 0, 3])
  np.testing.assert_array_equal(valid, [True, True, True, False])
  # Masking column 0 out: row 2 falls back to column 1; row 0 is padding.
  mask = np.array([False, True, True, True])
  indices, valid = sample_negatives(None, sim, mask, hardest=True)
  np.testing.assert_array_equal(indices, [0, 3, 1, 2])
  np.testing.assert_array_equal(valid, [False, True, True, True])
  # jit-safe.
  jitted = jax.jit(functools.partial(sample_negatives, hardest=False))
  assert jitted(jax.random.key(0), sim, mask)[1].tolist() == [False, True, True, True]


def test_sample_negatives_follow_softmax_over_allowed_columns():
  sim = np.array([[5.0, 1.0, 0.0, -1.0, 0.5],
                  [0.3, 5.0, 1.2, 0.0, -0.5],
                  [2.0, 2.0, 5.0, 1.0, 0.0],
                  [0.0, 0.7, -0.2, 5.0, 0.4],
                  [1.0, 0.0, 0.0, 0.0, 5.0]], np.float32)
  mask = np.array([True, True, True, True, False])
  exclude = np.zeros((5, 5), bool)
  exclude[1, 2] = True
  allowed = allowed_reference(5, mask, exclude)
  draws = 20000
  keys = jax.random.split(jax.random.key(42), draws)
  indices, valid = jax.vmap(lambda k: sample_negatives(k, sim, mask, exclude))(keys)
  indices, valid = np.asarray(indices), np.asarray(valid)
  for i in range(4):
    weights = [math.exp(sim[i, j]) if allowed[i, j] else 0.0 for j in range(5)]
    expected = np.array(weights) / sum(weights)
    observed = np.bincount(indices[:, i], minlength=5) / draws
    np.testing.assert_allclose(observed, expected, atol=0.02)
    assert valid[:, i].all()
  assert not valid[:, 4].any()


def mlm_batch(batch=1024, length=128, vocab=1000, seed=4):
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, vocab, size=(batch, length))
  lengths = rng.integers(8, length + 1, size=batch)
  mask = np.arange(length)[None, :] < lengths[:, None]
  ids[:, 0] = 2                                     # [CLS]
  ids[np.arange(batch), lengths - 1] = 3            # [SEP]
  ids[rng.random((batch, length)) < 0.02] = 1       # some [UNK], real but special
  # Padding keeps non-special ids in half the rows: the mask alone must exclude it.
  ids[(~mask) & (np.arange(batch)[:, None] % 2 == 0)] = 0
  return ids.astype(np.int32), mask


def test_mask_tokens_statistics():
  vocab, num_special, mask_id = 1000, 5, 4
  ids, mask = mlm_batch(vocab=vocab)
  masked, targets, weights = mask_tokens(jax.random.key(7), ids, mask, vocab_size=vocab,
                                         mask_id=mask_id, num_special=num_special)
  masked, targets, weights = np.asarray(masked), np.asarray(targets), np.asarray(weights)
  assert masked.dtype == np.int32 and targets.dtype == np.int32
  assert weights.dtype == np.float32
  np.testing.assert_array_equal(targets, ids)
  selected = weights == 1.0
  assert set(np.unique(weights)) <= {0.0, 1.0}
  eligible = mask & (ids >= num_special)
  assert not (selected & ~eligible).any()           # never specials nor padding
  np.testing.assert_array_equal(masked[~selected], ids[~selected])
  assert abs(selected.sum() / eligible.sum() - 0.15) <= 0.01

  chosen, original = masked[selected], ids[selected]
  to_mask = chosen == mask_id
  replaced = (chosen != mask_id) & (chosen != original)
  unchanged = chosen == original
  assert abs(to_mask.mean() - 0.8) <= 0.02
  assert abs(replaced.mean() - 0.1) <= 0.02
  assert abs(unchanged.mean() - 0.1) <= 0.02
  assert (chosen[~to_mask] >= num_special).all() and (chosen < vocab).all()


def test_mask_tokens_deterministic_and_jittable():
  ids, mask = mlm_batch(batch=16, length=32)
  fn = functools.partial(mask_tokens, vocab_size=1000, mask_id=4, num_special=5, prob=0.3)
  first = fn(jax.random.key(1), ids, mask)
  again = jax.jit(fn)(jax.random.key(1), ids, mask)
  other = fn(jax.random.key(2), ids, mask)
  for a, b in zip(first, again, strict=True):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(first[2], other[2])


def test_token_cross_entropy_matches_hand_computation():
  logits = np.array([[[2.0, 0.0, 0.0], [0.0, 1.0, 3.0], [5.0, 0.0, -5.0]]], np.float32)
  targets = np.array([[0, 1, 2]], np.int32)
  weights = np.array([[1.0, 1.0, 0.0]], np.float32)
  ce0 = math.log(math.exp(2) + 2) - 2
  ce1 = math.log(1 + math.e + math.exp(3)) - 1
  loss, accuracy = token_cross_entropy(logits, targets, weights)
  assert float(loss) == pytest.approx((ce0 + ce1) / 2, rel=1e-6)
  assert float(accuracy) == pytest.approx(0.5)          # position 1 predicts 2, not 1

  # Weighted-out positions do not count, whatever their logits.
  changed = logits.copy()
  changed[0, 2] = [-9.0, 9.0, 0.0]
  assert float(token_cross_entropy(changed, targets, weights)[0]) == pytest.approx(
      float(loss), rel=1e-6)
  # Weights scale each token; the sum of weights is the denominator.
  loss, _ = token_cross_entropy(logits, targets, np.array([[2.0, 1.0, 0.0]], np.float32))
  assert float(loss) == pytest.approx((2 * ce0 + ce1) / 3, rel=1e-6)
  # No weight at all: 0, not NaN.
  loss, accuracy = token_cross_entropy(logits, targets, np.zeros((1, 3), np.float32))
  assert float(loss) == 0.0 and float(accuracy) == 0.0


def test_token_cross_entropy_label_smoothing():
  logits = np.array([[[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]]], np.float32)
  targets = np.array([[0, 1]], np.int32)
  weights = np.ones((1, 2), np.float32)
  alpha, vocab = 0.3, 3
  total = 0.0
  for t in range(2):
    row = logits[0, t].tolist()
    lse = math.log(sum(math.exp(v) for v in row))
    for k in range(vocab):
      label = (1 - alpha) * (k == targets[0, t]) + alpha / vocab
      total += -label * (row[k] - lse)
  loss, _ = token_cross_entropy(logits, targets, weights, label_smoothing=alpha)
  assert float(loss) == pytest.approx(total / 2, rel=1e-6)
  assert float(loss) != pytest.approx(float(token_cross_entropy(logits, targets, weights)[0]))


def test_next_token_targets():
  ids = np.array([[2, 10, 11, 3, 0], [2, 12, 3, 0, 0]], np.int32)
  mask = ids != 0
  inputs, targets, weights = next_token_targets(ids, mask)
  np.testing.assert_array_equal(inputs, [[2, 10, 11, 3], [2, 12, 3, 0]])
  np.testing.assert_array_equal(targets, [[10, 11, 3, 0], [12, 3, 0, 0]])
  np.testing.assert_array_equal(weights, [[1, 1, 1, 0], [1, 1, 0, 0]])
  assert weights.dtype == jnp.float32
