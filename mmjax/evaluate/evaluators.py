"""Evaluators: small objects whose `run(params)` yields (metric name, value) pairs.

Padded examples (`example_mask=False`) are dropped before metrics are computed, so a
split whose size is not a multiple of the batch size counts every example exactly once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from mmjax.evaluate.metrics import (
  classification_metrics,
  classification_report,
  quadratic_weighted_kappa,
  retrieval_metrics,
  roc_auc,
)


def to_host(x: jax.Array) -> np.ndarray:
  """A global array gathered to every process as numpy."""
  if jax.process_count() > 1:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def real_outputs(predict_fn: Callable[[Any, dict], Any], params: Any, batches: Iterable[dict],
                 to_device: Callable[[dict], dict], keys: Iterable[str] = ()
                 ) -> Iterator[tuple[dict, Any]]:
  """({key: batch[key]} for those of `keys` the batch has, predict_fn(params, batch)) for
  each batch, gathered to the host as numpy, keeping only the real examples (rows with
  example_mask True)."""
  for batch in batches:
    device_batch = to_device(batch)
    outputs = predict_fn(params, device_batch)
    keep = to_host(device_batch["example_mask"])
    real = lambda x, keep=keep: to_host(x)[keep]  # noqa: E731
    yield ({key: real(device_batch[key]) for key in keys if key in device_batch},
           jax.tree.map(real, outputs))


def concatenate(rows: list[Any]) -> Any:
  """A list of like-structured trees of arrays -> one tree, concatenated on axis 0."""
  return jax.tree.map(lambda *xs: np.concatenate(xs), *rows)


class ClassificationEvaluator:
  """Accuracy, precision, recall, F1 and confusion matrix of every head on one split.

  The main head's metrics are named plainly (`accuracy`); auxiliary heads' are
  prefixed by the head name (`written_digit/accuracy`). Every head also gets `report`, a
  text table of per-class precision/recall/F1/support (classes named by `class_names`,
  else "0", "1", ...); a two-class head gets `auc`, the ROC AUC of its class-1
  probability (left out when the split has only one class); with `ordinal`, the main
  head's classes are ordered grades and it gets `qwk`, the quadratic weighted kappa.
  """

  def __init__(self, predict_fn: Callable[[Any, dict], dict], batches: Callable[[], Iterable],
               to_device: Callable[[dict], dict], num_classes: dict[str, int], main: str,
               groups: dict[str, tuple[str, ...]] | None = None,
               class_names: dict[str, tuple[str, ...]] | None = None, ordinal: bool = False):
    self.predict_fn = predict_fn
    self.batches = batches
    self.to_device = to_device
    self.num_classes = num_classes
    self.main = main
    self.groups = dict(groups or {})  # batch key -> names of its values
    self.class_names = {head: tuple(class_names[head]) if head in (class_names or {})
                        else tuple(str(i) for i in range(n)) for head, n in num_classes.items()}
    self.ordinal = ordinal

  def predictions(self, params: Any) -> dict[str, dict[str, np.ndarray]]:
    """{head: {"label", "prediction", "probabilities"}} for every real example, and
    {"groups": {key: values}} for the `groups` keys, in split order (with any number of
    processes: each reads its rows of every global batch)."""
    collected: dict[str, dict[str, list]] = {}
    for batch, outputs in real_outputs(self.predict_fn, params, self.batches(),
                                       self.to_device, [*self.num_classes, *self.groups]):
      for key in self.groups:
        collected.setdefault("groups", {}).setdefault(key, []).append(batch[key])
      for head, out in outputs.items():
        if head not in self.num_classes:
          continue
        rows = collected.setdefault(head, {"label": [], "prediction": [], "probabilities": []})
        rows["label"].append(batch[head])
        rows["prediction"].append(out["prediction"])
        rows["probabilities"].append(out["probabilities"])
    return {head: {k: np.concatenate(v) for k, v in rows.items()}
            for head, rows in collected.items()}

  def run(self, params: Any) -> Iterator[tuple[str, Any]]:
    yield from self.metrics(self.predictions(params))

  def metrics(self, predictions: dict[str, dict[str, np.ndarray]]
              ) -> Iterator[tuple[str, Any]]:
    """(name, value) pairs of `predictions` (what `predictions(params)` returns)."""
    groups = predictions.pop("groups", {})
    for head, out in predictions.items():
      prefix = "" if head == self.main else f"{head}/"
      for name, value in classification_metrics(out["label"], out["prediction"],
                                                self.num_classes[head]).items():
        yield prefix + name, value
      yield prefix + "report", classification_report(out["label"], out["prediction"],
                                                     self.class_names[head])
      if self.num_classes[head] == 2 and len(np.unique(out["label"])) == 2:
        yield prefix + "auc", roc_auc(out["label"], out["probabilities"][:, 1])
      if self.ordinal and head == self.main:
        yield "qwk", quadratic_weighted_kappa(out["label"], out["prediction"],
                                              self.num_classes[head])
    main = predictions[self.main]
    for key, values in groups.items():
      for index, name in enumerate(self.groups[key]):
        chosen = values == index
        if chosen.any():
          yield f"accuracy/{name}", float(np.mean(
              main["label"][chosen] == main["prediction"][chosen]))


class PretrainEvaluator:
  """Pre-training metrics on one split: zero-shot image->text and text->image retrieval
  R@1/5/10 among all of the split's examples (each image's own caption is its only
  positive), and the accuracies of the objectives the model computes: ITM (positive,
  hardest negative text, hardest negative image, mined within each eval batch), MLM and
  captioning (next-token) accuracy on their target tokens.
  """

  def __init__(self, predict_fn: Callable[[Any, dict], dict], batches: Callable[[], Iterable],
               to_device: Callable[[dict], dict], ks: tuple[int, ...] = (1, 5, 10)):
    self.predict_fn = predict_fn
    self.batches = batches
    self.to_device = to_device
    self.ks = ks

  def run(self, params: Any) -> Iterator[tuple[str, Any]]:
    out = concatenate([outputs for _, outputs in real_outputs(
        self.predict_fn, params, self.batches(), self.to_device)])
    embeddings = out.pop("embeddings")
    similarity = embeddings["image"].astype(np.float64) @ embeddings["text"].astype(np.float64).T
    yield from retrieval_metrics(similarity, self.ks).items()
    for name, counts in out.items():
      yield f"{name}_accuracy", float(counts["correct"].sum() / max(counts["count"].sum(), 1))
    yield "num_examples", int(len(similarity))


class ZeroShotEvaluator:
  """Zero-shot classification: each class is the mean normalised text embedding of its
  prompts (`templates` filled with the class's name); an image gets the class whose
  embedding is most similar to its own.

  `embed_fn(params, batch)` -> {"image": [B, E]} and/or {"text": [B, E]}; `prompts` is the
  tokenized prompts, [num_classes * num_templates] rows, class-major.
  """

  def __init__(self, embed_fn: Callable[[Any, dict], dict], batches: Callable[[], Iterable],
               to_device: Callable[[dict], dict], prompts: dict[str, np.ndarray],
               num_classes: int, label: str = "label"):
    self.embed_fn = embed_fn
    self.batches = batches
    self.to_device = to_device
    self.prompts = prompts
    self.num_classes = num_classes
    self.label = label

  def class_embeddings(self, params: Any) -> np.ndarray:
    """[num_classes, E], unit norm."""
    text = concatenate([out["text"] for _, out in real_outputs(
        self.embed_fn, params, [self.prompts], self.to_device)])
    text = text.reshape(self.num_classes, -1, text.shape[-1]).mean(axis=1)
    return text / np.linalg.norm(text, axis=-1, keepdims=True)

  def run(self, params: Any) -> Iterator[tuple[str, Any]]:
    classes = self.class_embeddings(params)
    labels, predictions = [], []
    for batch, out in real_outputs(self.embed_fn, params, self.batches(), self.to_device,
                                   (self.label,)):
      labels.append(batch[self.label])
      predictions.append(np.argmax(out["image"] @ classes.T, axis=-1))
    yield from classification_metrics(np.concatenate(labels), np.concatenate(predictions),
                                      self.num_classes).items()
