import numpy as np
import pytest
from sklearn import metrics as sk

from mmjax.evaluate.metrics import classification_metrics


@pytest.mark.parametrize("num_classes", [2, 4])
def test_against_sklearn(num_classes):
  rng = np.random.default_rng(0)
  labels = rng.integers(0, num_classes, 500)
  predictions = np.where(rng.random(500) < 0.7, labels, rng.integers(0, num_classes, 500))
  got = classification_metrics(labels, predictions, num_classes)
  average = "binary" if num_classes == 2 else "macro"
  assert got["accuracy"] == pytest.approx(sk.accuracy_score(labels, predictions))
  assert got["precision"] == pytest.approx(sk.precision_score(labels, predictions, average=average))
  assert got["recall"] == pytest.approx(sk.recall_score(labels, predictions, average=average))
  assert got["f1"] == pytest.approx(sk.f1_score(labels, predictions, average=average))
  np.testing.assert_array_equal(got["confusion_matrix"],
                                sk.confusion_matrix(labels, predictions,
                                                    labels=range(num_classes)))
  assert got["num_examples"] == 500


def test_macro_average_skips_classes_absent_from_labels_and_predictions():
  labels, predictions = np.array([0, 0, 1, 3, 3]), np.array([0, 1, 1, 3, 0])
  got = classification_metrics(labels, predictions, num_classes=5)  # classes 2, 4 absent
  assert got["precision"] == pytest.approx(sk.precision_score(labels, predictions,
                                                              average="macro"))
  assert got["recall"] == pytest.approx(sk.recall_score(labels, predictions, average="macro"))
  assert got["f1"] == pytest.approx(sk.f1_score(labels, predictions, average="macro"))


def test_no_positive_predictions_gives_zero_precision():
  got = classification_metrics(np.array([1, 0, 1]), np.array([0, 0, 0]), 2)
  assert got["precision"] == 0.0 and got["recall"] == 0.0 and got["f1"] == 0.0
  assert got["accuracy"] == pytest.approx(1 / 3)
