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
