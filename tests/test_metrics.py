import numpy as np
import pytest
from sklearn import metrics as sk

from mmjax.evaluate.evaluators import ClassificationEvaluator
from mmjax.evaluate.metrics import (
  bleu,
  classification_metrics,
  classification_report,
  exact_match,
  quadratic_weighted_kappa,
  roc_auc,
)


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
  assert got["macro_precision"] == pytest.approx(sk.precision_score(labels, predictions,
                                                                    average="macro"))
  assert got["macro_recall"] == pytest.approx(sk.recall_score(labels, predictions,
                                                              average="macro"))
  assert got["macro_f1"] == pytest.approx(sk.f1_score(labels, predictions, average="macro"))
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


def test_macro_keys_of_two_classes_differ_from_positive_class_metrics():
  labels, predictions = np.array([0, 0, 0, 1]), np.array([0, 0, 1, 1])
  got = classification_metrics(labels, predictions, 2)
  assert got["precision"] == pytest.approx(0.5)  # class 1: 1 of 2 predicted
  assert got["macro_precision"] == pytest.approx((1.0 + 0.5) / 2)
  assert got["macro_recall"] == pytest.approx((2 / 3 + 1.0) / 2)
  assert got["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)


def test_roc_auc_hand_case():
  # Positives score 0.35 and 0.8, negatives 0.1 and 0.4: of the 4 (positive, negative)
  # pairs, 3 are ordered correctly (0.35 > 0.1, 0.8 > 0.1, 0.8 > 0.4), so AUC = 3/4.
  assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
  # A tie counts one half: one pair, tied -> 0.5; perfect and reversed orders -> 1, 0.
  assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
  assert roc_auc(np.array([0, 1, 1]), np.array([0.1, 0.2, 0.3])) == 1.0
  assert roc_auc(np.array([1, 0, 0]), np.array([0.1, 0.2, 0.3])) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_matches_sklearn_with_ties(seed):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, 400)
  scores = np.round(0.3 * labels + rng.random(400), 1)  # ~13 distinct values: many ties
  assert len(np.unique(scores)) < 20
  assert roc_auc(labels, scores) == pytest.approx(sk.roc_auc_score(labels, scores), abs=1e-12)


def test_roc_auc_errors():
  with pytest.raises(ValueError, match="needs both classes.*3 positive and 0 negative"):
    roc_auc(np.array([1, 1, 1]), np.array([0.1, 0.2, 0.3]))
  with pytest.raises(ValueError, match="labels must be 0 or 1"):
    roc_auc(np.array([0, 2]), np.array([0.1, 0.2]))


@pytest.mark.parametrize("num_classes", [3, 6])
def test_quadratic_weighted_kappa_matches_sklearn(num_classes):
  rng = np.random.default_rng(num_classes)
  labels = rng.integers(0, num_classes, 300)
  predictions = np.clip(labels + rng.integers(-1, 2, 300), 0, num_classes - 1)
  got = quadratic_weighted_kappa(labels, predictions, num_classes)
  assert got == pytest.approx(sk.cohen_kappa_score(labels, predictions, weights="quadratic"))
  assert 0.3 < got < 1.0


def test_quadratic_weighted_kappa_extremes():
  labels = np.array([0, 1, 2, 2, 1, 0])
  assert quadratic_weighted_kappa(labels, labels, 3) == 1.0
  assert quadratic_weighted_kappa(np.array([1, 1]), np.array([1, 1]), 3) == 1.0
  # Reversed grades: weighted disagreement 1 + 0 + 1 = 2 (W = (i-j)^2/4, corners 1);
  # chance: every cell 1/3, sum of W = 3, so 1; kappa = 1 - 2/1 = -1.
  assert quadratic_weighted_kappa(np.array([0, 1, 2]), np.array([2, 1, 0]), 3) == (
      pytest.approx(-1.0))
  with pytest.raises(ValueError, match=r"predictions must lie in \[0, 3\)"):
    quadratic_weighted_kappa(np.array([0, 1]), np.array([0, 3]), 3)


def test_bleu_identical_corpus_is_one():
  corpus = [["the", "cat", "sat", "on", "the", "mat"], ["a", "dog", "ran", "off"]]
  assert bleu(corpus, corpus) == pytest.approx(1.0)
  assert bleu(corpus, corpus, smooth=True) == pytest.approx(1.0)
  assert exact_match(corpus, corpus) == 1.0


def test_bleu_hand_computed_with_clipping_and_brevity_penalty():
  references = [["the", "cat", "sat", "on", "the", "mat"], ["a", "dog", "ran"]]
  hypotheses = [["the", "cat", "sat", "on", "the"], ["a", "a", "dog"]]
  # Sentence 1: unigrams 5/5 ("the" twice, the reference has it twice), bigrams 4/4.
  # Sentence 2: unigrams "a" x2 clipped to the reference's one + "dog" = 2/3;
  #             bigrams "a a" (no), "a dog" (yes) = 1/2.
  # Corpus: p1 = 7/8, p2 = 5/6; c = 5 + 3 = 8 < r = 6 + 3 = 9, so BP = exp(1 - 9/8).
  expected = np.exp(1 - 9 / 8) * np.sqrt(7 / 8 * 5 / 6)
  assert bleu(references, hypotheses, max_n=2) == pytest.approx(expected)  # 0.7536
  # With max_n=4 sentence 2 has no 3-gram match and no 4-grams: p3 = 3/4, p4 = 2/2.
  expected4 = np.exp(1 - 9 / 8) * (7 / 8 * 5 / 6 * 3 / 4 * 2 / 2) ** 0.25
  assert bleu(references, hypotheses) == pytest.approx(expected4)
  # A hypothesis longer than its reference gets no penalty.
  assert bleu([["a", "b"]], [["a", "b", "c"]], max_n=1) == pytest.approx(2 / 3)


def test_bleu_zero_four_gram_match_and_smoothing():
  reference = [["the", "cat", "is", "on", "the", "mat"]]
  hypothesis = [["the", "cat", "sat", "on", "a", "mat"]]
  assert bleu(reference, hypothesis) == 0.0
  # Matches: unigrams the, cat, on, mat = 4/6; bigrams "the cat" = 1/5; no 3- or 4-gram
  # (0/4, 0/3). Add-one for n > 1: 2/6, 1/5, 1/4. c = r = 6, BP = 1.
  smoothed = bleu(reference, hypothesis, smooth=True)
  assert smoothed == pytest.approx((4 / 6 * 2 / 6 * 1 / 5 * 1 / 4) ** 0.25)
  assert 0.0 < smoothed < 1.0
  assert bleu(reference, [[]]) == 0.0 and bleu(reference, [[]], smooth=True) == 0.0
  with pytest.raises(ValueError, match="2 references for 1 hypotheses"):
    bleu(reference * 2, hypothesis)


def test_exact_match():
  assert exact_match([["a", "b"], ["c"], ["d"]], [["a", "b"], ["c", "c"], ["e"]]) == (
      pytest.approx(1 / 3))


def parse_report(text):
  """{row name: [numbers]} from a classification_report table."""
  rows = {}
  for line in text.splitlines()[1:]:
    if line.strip():
      name, *numbers = line.rsplit(None, 4)
      if name.endswith("accuracy"):  # accuracy has only the F1 and support columns
        name, numbers = line.rsplit(None, 2)[0], line.split()[-2:]
      rows[name.strip()] = [float(v) for v in numbers]
  return rows


def test_classification_report_against_sklearn():
  rng = np.random.default_rng(3)
  labels = rng.integers(0, 4, 200)  # class "ant eater" (4) never occurs at all
  predictions = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 4, 200))
  names = ("cat", "dog", "bird", "fish", "ant eater")
  text = classification_report(labels, predictions, names)
  rows = parse_report(text)
  assert list(rows) == [*names, "macro avg", "weighted avg", "accuracy"]
  precision, recall, f1, support = sk.precision_recall_fscore_support(
      labels, predictions, labels=range(5), average=None, zero_division=0)
  for i, name in enumerate(names):
    np.testing.assert_allclose(rows[name], [precision[i], recall[i], f1[i], support[i]],
                               atol=5e-5)
  for average in ("macro", "weighted"):
    expected = sk.precision_recall_fscore_support(labels, predictions, average=average,
                                                  zero_division=0)[:3]
    np.testing.assert_allclose(rows[f"{average} avg"], [*expected, 200], atol=5e-5)
  np.testing.assert_allclose(rows["accuracy"], [sk.accuracy_score(labels, predictions), 200],
                             atol=5e-5)
  widths = {len(line) for line in text.splitlines() if line}
  assert len(widths) == 1  # fixed width: every row as wide as the header


def test_classification_report_rejects_labels_beyond_names():
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
    classification_report(np.array([0, 2]), np.array([0, 1]), ("a", "b"))


def test_classification_evaluator_reports_auc_qwk_and_named_report():
  labels = np.array([0, 1, 1, 0, 2, 2])
  probabilities = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6],
                            [0.5, 0.4, 0.1], [0.1, 0.1, 0.8], [0.2, 0.5, 0.3]])
  binary = np.array([1, 1, 0, 0, 1, 0])
  binary_probabilities = np.array([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5], [0.7, 0.3],
                                   [0.1, 0.9], [0.3, 0.7]])
  # Two batches of 4; the second's last 2 rows are padding (example_mask False).
  batches = [dict(rows=np.arange(4), label=labels[:4], passed=binary[:4],
                  example_mask=np.ones(4, bool)),
             dict(rows=np.array([4, 5, 5, 5]), label=np.r_[labels[4:], 0, 0],
                  passed=np.r_[binary[4:], 1, 1],
                  example_mask=np.array([True, True, False, False]))]

  def predict_fn(params, batch):
    del params
    rows = batch["rows"]
    return {"label": {"probabilities": probabilities[rows],
                      "prediction": np.argmax(probabilities[rows], -1)},
            "passed": {"probabilities": binary_probabilities[rows],
                       "prediction": np.argmax(binary_probabilities[rows], -1)}}

  evaluator = ClassificationEvaluator(
      predict_fn, lambda: batches, lambda batch: batch, {"label": 3, "passed": 2}, "label",
      class_names={"label": ("low", "mid", "high")}, ordinal=True)
  results = dict(evaluator.run(None))
  predictions = np.argmax(probabilities, -1)  # [0, 1, 2, 0, 2, 1]
  assert results["qwk"] == pytest.approx(
      sk.cohen_kappa_score(labels, predictions, weights="quadratic"))
  assert results["passed/auc"] == pytest.approx(
      sk.roc_auc_score(binary, binary_probabilities[:, 1]))
  assert "auc" not in results and "passed/qwk" not in results
  assert list(parse_report(results["report"]))[:3] == ["low", "mid", "high"]
  assert list(parse_report(results["passed/report"]))[:2] == ["0", "1"]
  assert parse_report(results["report"])["accuracy"] == [pytest.approx(4 / 6, abs=5e-5), 6]
