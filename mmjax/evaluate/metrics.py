"""Classification metrics computed on the host from labels and predictions (numpy)."""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  """[num_classes, num_classes] counts; row = true class, column = predicted class."""
  matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
  np.add.at(matrix, (labels, predictions), 1)
  return matrix


def classification_metrics(labels: np.ndarray, predictions: np.ndarray,
                           num_classes: int) -> dict:
  """Accuracy, precision, recall, F1 and the confusion matrix.

  With two classes, precision/recall/F1 are those of class 1 (the positive class);
  with more, they are macro averages over the classes that occur among the labels or
  the predictions (as scikit-learn does). A class with no predicted (or no true)
  examples has precision (recall) 0.
  """
  labels = np.asarray(labels, dtype=np.int64)
  predictions = np.asarray(predictions, dtype=np.int64)
  matrix = confusion_matrix(labels, predictions, num_classes)
  true_positive = np.diag(matrix).astype(np.float64)
  predicted = matrix.sum(axis=0)
  actual = matrix.sum(axis=1)
  precision = np.divide(true_positive, predicted, out=np.zeros(num_classes), where=predicted > 0)
  recall = np.divide(true_positive, actual, out=np.zeros(num_classes), where=actual > 0)
  denominator = precision + recall
  f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(num_classes),
                 where=denominator > 0)
  present = (predicted + actual) > 0
  pick = (lambda v: float(v[1])) if num_classes == 2 else (
      lambda v: float(v[present].mean()) if present.any() else 0.0)
  return {
      "accuracy": float(true_positive.sum() / max(len(labels), 1)),
      "precision": pick(precision),
      "recall": pick(recall),
      "f1": pick(f1),
      "num_examples": int(len(labels)),
      "confusion_matrix": matrix.tolist(),
  }


def retrieval_ranks(similarity: np.ndarray) -> np.ndarray:
  """For each row query i of [N, N] similarities whose only positive is column i, its
  0-based rank: how many other columns score at least as high (ties count against it)."""
  similarity = np.asarray(similarity)
  positive = np.diag(similarity)[:, None]
  ahead = similarity >= positive
  np.fill_diagonal(ahead, False)
  return ahead.sum(axis=1)


def retrieval_metrics(similarity: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
  """Recall@k both ways from [N images, N texts] similarities, image i matching text i:
  `i2t_r<k>` (rows as queries) and `t2i_r<k>` (columns), each the fraction of queries
  whose positive ranks in the top k, plus their mean `mean_recall`."""
  metrics = {}
  for direction, matrix in (("i2t", similarity), ("t2i", np.asarray(similarity).T)):
    ranks = retrieval_ranks(matrix)
    for k in ks:
      metrics[f"{direction}_r{k}"] = float(np.mean(ranks < k))
  metrics["mean_recall"] = float(np.mean(list(metrics.values())))
  return metrics
