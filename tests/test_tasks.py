import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmjax.config import ConfigError
from mmjax.tasks import build_task
from mmjax.tasks.classification import ClassificationTask


def test_loss_matches_hand_computation():
  task = ClassificationTask(num_classes={"label": 2}, weights={"label": 1.0})
  logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]])
  batch = {"label": jnp.array([0, 0, 1]), "example_mask": jnp.array([True, True, False])}
  loss, metrics = task.loss({"label": logits}, batch)
  # Third example is padding. CE(row0, 0) = log(1 + e^-2); CE(row1, 0) = log(1 + e^1).
  expected = (np.log1p(np.exp(-2.0)) + np.log1p(np.exp(1.0))) / 2
  assert float(loss) == pytest.approx(expected, rel=1e-6)
  assert float(metrics["accuracy"]) == pytest.approx(0.5)
  assert set(metrics) == {"loss", "accuracy"}


def test_weighted_multi_task_and_missing_heads():
  task = ClassificationTask(num_classes={"label": 2, "digit": 3},
                            weights={"label": 1.0, "digit": 0.5})
  batch = {"label": jnp.array([1, 0]), "digit": jnp.array([2, 2]),
           "example_mask": jnp.ones(2, bool)}
  outputs = {"label": jnp.zeros((2, 2)), "digit": jnp.array([[0.0, 0.0, 3.0], [3.0, 0, 0]])}
  total, metrics = task.loss(outputs, batch)
  assert float(metrics["label/loss"]) == pytest.approx(np.log(2))
  assert float(total) == pytest.approx(float(metrics["label/loss"]) +
                                       0.5 * float(metrics["digit/loss"]))
  assert float(metrics["digit/accuracy"]) == 0.5
  # A head whose modality is absent (not in outputs) is skipped.
  total_without, metrics_without = task.loss({"label": outputs["label"]}, batch)
  assert float(total_without) == pytest.approx(np.log(2))
  assert "digit/accuracy" not in metrics_without


def test_label_smoothing_raises_loss_of_confident_correct_predictions():
  logits = {"label": jnp.array([[10.0, -10.0]])}
  batch = {"label": jnp.array([0]), "example_mask": jnp.array([True])}
  plain = ClassificationTask({"label": 2}, {"label": 1.0}).loss(logits, batch)[0]
  smooth = ClassificationTask({"label": 2}, {"label": 1.0}, label_smoothing=0.2).loss(
      logits, batch)[0]
  assert float(smooth) > float(plain) + 1.0


def test_predict_gives_probabilities_per_head():
  task = ClassificationTask({"label": 2}, {"label": 1.0})
  out = task.predict({"label": jnp.array([[0.0, jnp.log(3.0)]])})
  np.testing.assert_allclose(out["label"]["probabilities"], [[0.25, 0.75]], rtol=1e-6)
  assert int(out["label"]["prediction"][0]) == 1
  assert jax.tree.structure(out) == jax.tree.structure(
      {"label": {"prediction": 0, "probabilities": 0}})


def config(**losses):
  return ml_collections.ConfigDict(dict(
      task=dict(name="classification", main="label"),
      model=dict(heads=dict(label=dict(input="fused"), digit=dict(input="image"))),
      losses=losses or dict(label=1.0)))


def test_build_task_errors():
  assert build_task(config(label=1.0, digit=0.3), lambda h: 2).weights == {"label": 1.0,
                                                                          "digit": 0.3}
  with pytest.raises(ConfigError, match="config.losses.digt: no such head.*did you mean 'digit'"):
    build_task(config(label=1.0, digt=0.3), lambda h: 2)
  with pytest.raises(ConfigError, match="head 'label' has no weight"):
    build_task(config(digit=1.0), lambda h: 2)
  bad = config()
  bad.task.name = "regression"
  with pytest.raises(ConfigError, match="unknown task 'regression'"):
    build_task(bad, lambda h: 2)


def test_ordinal_task_and_class_names_from_class_label_features():
  import types

  import tensorflow_datasets as tfds

  from mmjax.tasks.classification import class_names

  ordinal = config()
  ordinal.task.ordinal = True
  assert build_task(ordinal, lambda h: 3).ordinal
  assert not build_task(config(), lambda h: 3).ordinal
  features = {"grade": tfds.features.ClassLabel(names=["low", "mid", "high"]),
              "digit_value": tfds.features.Scalar(np.int64)}
  dataset = types.SimpleNamespace(builder=types.SimpleNamespace(
      info=types.SimpleNamespace(features=features)))
  fields = ml_collections.ConfigDict(dict(data=dict(fields=dict(label="grade",
                                                                digit="digit_value"))))
  assert class_names(fields, dataset, ("label", "digit")) == {"label": ("low", "mid", "high")}


def attention_model():
  """A tiny image+text model with 2-layer cross-attention fusion (4x4 patches of 8x8)."""
  from mmjax.models.heads import HeadSpec
  from mmjax.models.model import build_model

  model_config = ml_collections.ConfigDict(dict(
      modalities="image,text", dtype="float32", param_dtype="float32", dropout_rate=0.0,
      image=dict(variant="nano/2", posemb="sincos2d"), text=dict(variant="nano", max_len=6),
      fusion=dict(kind="cross_attention", depth=2, width=32, num_heads=2, mlp_dim=64),
      heads=dict(label=dict(input="fused", pooling="cls"))))
  return build_model(model_config, modalities=("image", "text"), vocab_size=20,
                     heads=(HeadSpec("label", "fused", 3, "cls"),))


def attention_batch(size=4, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.normal(size=(size, 8, 8, 3)).astype(np.float32),
          "text_ids": rng.integers(1, 20, (size, 6)).astype(np.int32),
          "text_mask": np.ones((size, 6), bool),
          "label": rng.integers(0, 3, size), "cell": rng.integers(0, 16, size),
          "example_mask": np.array([True] * (size - 1) + [False])}


LAYER = "fusion/cross_encoder/block_1/cross_attention"


def test_attention_targets_loss_is_cross_entropy_of_the_sown_logits():
  model, batch = attention_model(), attention_batch()
  params = model.init(jax.random.key(0), batch)["params"]
  outputs, state = model.apply({"params": params}, batch, mutable=["intermediates"])
  logits = state["intermediates"]["fusion"]["cross_encoder"]["block_1"]["cross_attention"][
      "logits"][0]
  assert logits.shape == (4, 2, 6, 17)  # [B, heads, text tokens, image CLS + 16 patches]
  task = ClassificationTask({"label": 3}, {"label": 1.0}, attention_targets={
      "cell": dict(layer=LAYER, weight=0.5, query=0, head=1, offset=1)})
  assert task.reads_intermediates and not ClassificationTask({"label": 3}, {"label": 1.0}
                                                             ).reads_intermediates
  total, metrics = task.loss(dict(outputs, intermediates=state["intermediates"]), batch)
  row = np.asarray(logits[:, 1, 0, :], np.float64)  # head 1, query token 0
  log_probs = row - row.max(-1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
  expected = -log_probs[np.arange(4), batch["cell"] + 1][:3].mean()  # example 4 is padding
  assert float(metrics["cell/attention_loss"]) == pytest.approx(expected, rel=1e-5)
  plain = ClassificationTask({"label": 3}, {"label": 1.0}).loss(outputs, batch)[0]
  assert float(total) == pytest.approx(float(plain) + 0.5 * expected, rel=1e-5)


def test_attention_targets_train_one_head_to_point_at_the_target():
  import optax

  model, batch = attention_model(), attention_batch(size=16, seed=1)
  batch["example_mask"] = np.ones(16, bool)
  params = model.init(jax.random.key(0), batch)["params"]
  task = ClassificationTask({"label": 3}, {"label": 0.0}, attention_targets={
      "cell": dict(layer=LAYER, weight=1.0, offset=1)})
  tx = optax.adam(1e-2)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state):
    def loss_fn(p):
      outputs, state = model.apply({"params": p}, batch, mutable=["intermediates"])
      return task.loss(dict(outputs, intermediates=state["intermediates"]), batch)
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, metrics

  first = None
  for _ in range(60):
    params, opt_state, metrics = step(params, opt_state)
    first = first if first is not None else metrics
  assert float(first["cell/attention_accuracy"]) < 0.3
  assert float(metrics["cell/attention_accuracy"]) == 1.0
  assert float(metrics["cell/attention_loss"]) < 0.1 * float(first["cell/attention_loss"])


def test_attention_targets_errors():
  with pytest.raises(ConfigError, match=r"attention_targets.cell: 'weight' is required"):
    ClassificationTask({"label": 3}, {"label": 1.0},
                       attention_targets={"cell": dict(layer=LAYER)})
  with pytest.raises(ConfigError, match=r"attention_targets.cell: unknown field\(s\) colum"):
    ClassificationTask({"label": 3}, {"label": 1.0},
                       attention_targets={"cell": dict(layer=LAYER, weight=1.0, colum=2)})
  model, batch = attention_model(), attention_batch()
  params = model.init(jax.random.key(0), batch)["params"]
  outputs, state = model.apply({"params": params}, batch, mutable=["intermediates"])
  outputs = dict(outputs, intermediates=state["intermediates"])
  wrong = ClassificationTask({"label": 3}, {"label": 1.0}, attention_targets={
      "cell": dict(layer="fusion/cross_encoder/block_7/cross_attention", weight=1.0)})
  with pytest.raises(ConfigError, match=r"fusion/cross_encoder has no 'block_7'; expected "
                                        r"one of block_0, block_1"):
    wrong.loss(outputs, batch)
  from mmjax.tasks.multiple_choice import MultipleChoiceTask
  with pytest.raises(ConfigError, match="attention supervision is for classification"):
    MultipleChoiceTask({"answer": 5}, {"answer": 1.0}, main="answer", attention_targets={
        "cell": dict(layer=LAYER, weight=1.0)})
  out_of_range = ClassificationTask({"label": 3}, {"label": 1.0}, attention_targets={
      "cell": dict(layer=LAYER, weight=1.0, head=2)})
  with pytest.raises(ConfigError, match="head 2 / query 0 outside the layer's 2 heads"):
    out_of_range.loss(outputs, batch)
  not_attention = ClassificationTask({"label": 3}, {"label": 1.0}, attention_targets={
      "cell": dict(layer="fusion/cross_encoder/block_1", weight=1.0)})
  with pytest.raises(ConfigError, match="is not an attention layer"):
    not_attention.loss(outputs, batch)
