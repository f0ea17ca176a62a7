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

from mmjax.evaluate.metrics import classification_metrics


def to_host(x: jax.Array) -> np.ndarray:
  """A global array gathered to every process as numpy."""
  if jax.process_count() > 1:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


class ClassificationEvaluator:
  """Accuracy, precision, recall, F1 and confusion matrix of every head on one split.

  The main head's metrics are named plainly (`accuracy`); auxiliary heads' are
  prefixed by the head name (`written_digit/accuracy`).
  """

  def __init__(self, predict_fn: Callable[[Any, dict], dict], batches: Callable[[], Iterable],
               to_device: Callable[[dict], dict], num_classes: dict[str, int], main: str):
    self.predict_fn = predict_fn
    self.batches = batches
    self.to_device = to_device
    self.num_classes = num_classes
    self.main = main

  def predictions(self, params: Any) -> dict[str, dict[str, np.ndarray]]:
    """{head: {"label", "prediction", "probabilities"}} for every real example: in split
    order with one process; with several, batch by batch, process by process."""
    collected: dict[str, dict[str, list]] = {}
    for batch in self.batches():
      device_batch = self.to_device(batch)
      outputs = self.predict_fn(params, device_batch)
      keep = to_host(device_batch["example_mask"])
      for head, out in outputs.items():
        if head not in self.num_classes:
          continue
        rows = collected.setdefault(head, {"label": [], "prediction": [], "probabilities": []})
        rows["label"].append(to_host(device_batch[head])[keep])
        rows["prediction"].append(to_host(out["prediction"])[keep])
        rows["probabilities"].append(to_host(out["probabilities"])[keep])
    return {head: {k: np.concatenate(v) for k, v in rows.items()}
            for head, rows in collected.items()}

  def run(self, params: Any) -> Iterator[tuple[str, Any]]:
    for head, out in self.predictions(params).items():
      prefix = "" if head == self.main else f"{head}/"
      for name, value in classification_metrics(out["label"], out["prediction"],
                                                self.num_classes[head]).items():
        yield prefix + name, value
