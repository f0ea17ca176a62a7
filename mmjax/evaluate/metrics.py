"""Evaluation metrics computed on the host from labels and predictions (numpy).

Classification (accuracy, per-class and macro precision/recall/F1, a text report), ranking
(binary ROC AUC), ordinal agreement (quadratic weighted kappa), retrieval (recall@k) and
text generation (corpus BLEU, exact match). Everything here takes plain arrays or token
lists gathered from every eval batch, so it sees each example of a split exactly once.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import numpy as np


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  """[num_classes, num_classes] counts; row = true class, column = predicted class."""
  matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
  np.add.at(matrix, (labels, predictions), 1)
  return matrix


def per_class_metrics(labels: np.ndarray, predictions: np.ndarray, num_classes: int
                      ) -> dict[str, np.ndarray]:
  """Per-class "precision", "recall", "f1" ([num_classes] float), "support" ([num_classes]
  int: true examples of each class), "present" ([num_classes] bool: the class occurs among
  the labels or the predictions) and "confusion_matrix" from [N] int labels and predictions.

  A class with no predicted (or no true) examples has precision (recall) 0, and F1 0
  when both are 0.
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
  return {"precision": precision, "recall": recall, "f1": f1, "support": actual,
          "present": (predicted + actual) > 0, "confusion_matrix": matrix}


def classification_metrics(labels: np.ndarray, predictions: np.ndarray,
                           num_classes: int) -> dict:
  """Accuracy, precision, recall, F1, their macro averages and the confusion matrix.

  With two classes, precision/recall/F1 are those of class 1 (the positive class);
  with more, they are macro averages over the classes that occur among the labels or
  the predictions (as scikit-learn does). `macro_precision`, `macro_recall` and
  `macro_f1` are always those macro averages, whatever the number of classes. A class
  with no predicted (or no true) examples has precision (recall) 0.
  """
  per_class = per_class_metrics(labels, predictions, num_classes)
  present = per_class["present"]
  macro = lambda v: float(v[present].mean()) if present.any() else 0.0  # noqa: E731
  pick = (lambda v: float(v[1])) if num_classes == 2 else macro
  matrix = per_class["confusion_matrix"]
  return {
      "accuracy": float(np.trace(matrix) / max(len(labels), 1)),
      "precision": pick(per_class["precision"]),
      "recall": pick(per_class["recall"]),
      "f1": pick(per_class["f1"]),
      "macro_precision": macro(per_class["precision"]),
      "macro_recall": macro(per_class["recall"]),
      "macro_f1": macro(per_class["f1"]),
      "num_examples": int(len(labels)),
      "confusion_matrix": matrix.tolist(),
  }


def classification_report(labels: np.ndarray, predictions: np.ndarray,
                          class_names: Sequence[str]) -> str:
  """A fixed-width text table: one row per class of `class_names` (class i is named
  class_names[i]) with its precision, recall, F1 and support (number of true examples),
  then `macro avg` (unweighted mean over the classes that occur among the labels or the
  predictions, as scikit-learn does), `weighted avg` (mean weighted by support) and
  `accuracy` (in the F1 column, with the total number of examples as support).

  labels, predictions: [N] ints in [0, len(class_names)).
  """
  labels = np.asarray(labels, dtype=np.int64)
  predictions = np.asarray(predictions, dtype=np.int64)
  num_classes = len(class_names)
  check_classes(labels, predictions, num_classes, "classification_report")
  per_class = per_class_metrics(labels, predictions, num_classes)
  columns = ("precision", "recall", "f1")
  present, support = per_class["present"], per_class["support"]
  total = int(support.sum())
  rows = [(str(name), *(per_class[c][i] for c in columns), int(support[i]))
          for i, name in enumerate(class_names)]
  macro = [float(per_class[c][present].mean()) if present.any() else 0.0 for c in columns]
  weighted = [float(per_class[c] @ support / total) if total else 0.0 for c in columns]
  accuracy = float(np.trace(per_class["confusion_matrix"]) / total) if total else 0.0
  width = max(len("weighted avg"), *(len(row[0]) for row in rows))
  number = lambda v: f"{v:>10.4f}"  # noqa: E731
  line = lambda name, values, count: (  # noqa: E731
      f"{name:<{width}}" + "".join(number(v) if v is not None else " " * 10 for v in values)
      + f"{count:>10d}")
  header = f"{'':<{width}}" + "".join(f"{h:>10}" for h in (
      "precision", "recall", "f1-score", "support"))
  lines = [header, *(line(name, values, count) for name, *values, count in rows), "",
           line("macro avg", macro, total), line("weighted avg", weighted, total),
           line("accuracy", (None, None, accuracy), total)]
  return "\n".join(lines) + "\n"


def check_classes(labels: np.ndarray, predictions: np.ndarray, num_classes: int,
                  metric: str) -> None:
  """One-line ValueError unless labels and predictions are like-shaped [N] ints in
  [0, num_classes)."""
  if labels.ndim != 1 or labels.shape != predictions.shape:
    raise ValueError(f"{metric}: labels and predictions must be [N] arrays of the same length, "
                     f"got shapes {labels.shape} and {predictions.shape}")
  for name, values in (("labels", labels), ("predictions", predictions)):
    if values.size and (values.min() < 0 or values.max() >= num_classes):
      raise ValueError(f"{metric}: {name} must lie in [0, {num_classes}), got values "
                       f"{values.min()}..{values.max()}")


def average_ranks(values: np.ndarray) -> np.ndarray:
  """1-based ranks of [N] values in ascending order; tied values share the mean of the
  ranks they span (e.g. [10, 20, 20, 30] -> [1, 2.5, 2.5, 4])."""
  _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
  ends = np.cumsum(counts)  # rank of the last member of each group of equal values
  return ((ends - counts + 1 + ends) / 2.0)[inverse.reshape(-1)]


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """Area under the binary ROC curve: the probability that a random positive (label 1)
  scores higher than a random negative (label 0), ties counting one half.

  Computed from ranks as the Mann-Whitney U statistic, U / (n_pos * n_neg), with
  U = (sum of the positives' ranks) - n_pos (n_pos + 1) / 2 and tied scores given their
  average rank, in O(N log N).

  labels: [N] in {0, 1}; scores: [N] floats, higher meaning more likely positive.
  Raises ValueError unless both classes occur.
  """
  labels = np.asarray(labels)
  scores = np.asarray(scores, dtype=np.float64)
  if labels.ndim != 1 or labels.shape != scores.shape:
    raise ValueError(f"roc_auc: labels and scores must be [N] arrays of the same length, got "
                     f"shapes {labels.shape} and {scores.shape}")
  if not np.isin(labels, (0, 1)).all():
    raise ValueError(f"roc_auc: labels must be 0 or 1, got {np.unique(labels)[:5].tolist()}")
  positive = labels == 1
  num_positive = int(positive.sum())
  num_negative = len(labels) - num_positive
  if num_positive == 0 or num_negative == 0:
    raise ValueError(f"roc_auc: needs both classes among the labels, got {num_positive} "
                     f"positive and {num_negative} negative examples")
  rank_sum = average_ranks(scores)[positive].sum()
  u = rank_sum - num_positive * (num_positive + 1) / 2.0
  return float(u / (num_positive * num_negative))


def quadratic_weighted_kappa(labels: np.ndarray, predictions: np.ndarray,
                             num_classes: int) -> float:
  """Cohen's kappa with quadratic weights, for ordinal classes 0 < 1 < ... (grades).

  kappa = 1 - sum(W * O) / sum(W * E), with O the [K, K] confusion matrix of counts, E
  the counts expected by chance (outer product of its row and column sums, over N) and
  W[i, j] = (i - j)^2 / (K - 1)^2: a prediction two grades off costs four times one a
  grade off. 1 is perfect agreement, 0 chance level, below 0 worse than chance. When
  there is no disagreement at all (O is diagonal) the result is 1, also in the case
  where the formula is 0/0 (labels and predictions all one and the same class).

  labels, predictions: [N] ints in [0, num_classes); num_classes >= 2.
  """
  labels = np.asarray(labels, dtype=np.int64)
  predictions = np.asarray(predictions, dtype=np.int64)
  if num_classes < 2:
    raise ValueError(f"quadratic_weighted_kappa: num_classes must be at least 2, got "
                     f"{num_classes}")
  check_classes(labels, predictions, num_classes, "quadratic_weighted_kappa")
  if not len(labels):
    raise ValueError("quadratic_weighted_kappa: no examples")
  observed = confusion_matrix(labels, predictions, num_classes).astype(np.float64)
  expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / len(labels)
  grades = np.arange(num_classes)
  weights = (grades[:, None] - grades[None, :]) ** 2 / (num_classes - 1) ** 2
  disagreement = float((weights * observed).sum())
  if disagreement == 0.0:
    return 1.0
  return 1.0 - disagreement / float((weights * expected).sum())


def ngram_counts(tokens: Sequence[str], n: int) -> collections.Counter:
  """How often each n-gram (tuple of n tokens) occurs in `tokens`."""
  return collections.Counter(zip(*(tokens[i:] for i in range(n)), strict=False))


def bleu(references: Sequence[Sequence[str]], hypotheses: Sequence[Sequence[str]],
         max_n: int = 4, smooth: bool = False) -> float:
  """Corpus BLEU (Papineni et al., 2002) of tokenized hypotheses, one reference each.

  For n = 1..max_n the modified precision p_n is the number of hypothesis n-grams that
  also occur in the reference, each n-gram counted at most as often as the reference has
  it ("clipped"), summed over the corpus, divided by the corpus's hypothesis n-grams. BLEU
  = BP * exp(mean_n log p_n), with brevity penalty BP = 1 if c > r else exp(1 - r / c), c
  and r the total hypothesis and reference lengths. Without smoothing any p_n = 0 gives 0.

  smooth=True adds one to both the matched and the total counts of every n > 1 (Lin & Och,
  2004, "BLEU+1"), so that a short sentence without a 4-gram match still scores above 0:
  use it for sentence-level scores.

  references, hypotheses: equally long lists of token lists. Returns a value in [0, 1].
  """
  if len(references) != len(hypotheses):
    raise ValueError(f"bleu: {len(references)} references for {len(hypotheses)} hypotheses; "
                     "expected one reference per hypothesis")
  if max_n < 1:
    raise ValueError(f"bleu: max_n must be at least 1, got {max_n}")
  matches, totals = np.zeros(max_n), np.zeros(max_n)
  for reference, hypothesis in zip(references, hypotheses, strict=True):
    for n in range(1, max_n + 1):
      hypothesis_ngrams = ngram_counts(hypothesis, n)
      reference_ngrams = ngram_counts(reference, n)
      matches[n - 1] += sum(min(count, reference_ngrams[ngram])
                            for ngram, count in hypothesis_ngrams.items())
      totals[n - 1] += max(len(hypothesis) - n + 1, 0)
  if smooth:
    matches[1:] += 1
    totals[1:] += 1
  if (matches == 0).any():
    return 0.0
  hypothesis_length = sum(len(h) for h in hypotheses)
  reference_length = sum(len(r) for r in references)
  brevity = (1.0 if hypothesis_length > reference_length
             else float(np.exp(1.0 - reference_length / hypothesis_length)))
  return brevity * float(np.exp(np.mean(np.log(matches / totals))))


def exact_match(references: Sequence[Sequence[str]], hypotheses: Sequence[Sequence[str]]
                ) -> float:
  """Fraction of hypotheses identical to their reference (token for token)."""
  if len(references) != len(hypotheses):
    raise ValueError(f"exact_match: {len(references)} references for {len(hypotheses)} "
                     "hypotheses; expected one reference per hypothesis")
  if not len(references):
    return 0.0
  same = [list(r) == list(h) for r, h in zip(references, hypotheses, strict=True)]
  return float(np.mean(same))


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
