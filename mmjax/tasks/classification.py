"""Classification with one or more named heads and a weighted sum of their losses.

`config.losses = {head name: weight}` names the heads that are trained and how much
each counts; each head's target is the batch key of the same name (`label`,
`written_digit`, ...). The head named by `main` gives the task's predictions and
headline metrics; the others are auxiliary (multi-task) objectives.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class ClassificationTask:
  """Softmax cross-entropy per head (optional label smoothing), padding examples ignored."""

  num_classes: dict[str, int]   # head name -> classes
  weights: dict[str, float]     # head name -> loss weight
  main: str = "label"
  label_smoothing: float = 0.0

  @property
  def targets(self) -> tuple[str, ...]:
    return tuple(self.weights)

  def head_loss(self, logits: jax.Array, labels: jax.Array, weights: jax.Array
                ) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy and accuracy over examples with weight 1."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]),
                                  self.label_smoothing)
    count = jnp.maximum(weights.sum(), 1.0)
    loss = (optax.softmax_cross_entropy(logits, targets) * weights).sum() / count
    accuracy = ((jnp.argmax(logits, -1) == labels) * weights).sum() / count
    return loss, accuracy

  def loss(self, outputs: dict[str, jax.Array], batch: dict[str, jax.Array]
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """-> (weighted total, {"loss": total, "accuracy": main head's, and with several heads
    "<head>/loss" for each and "<head>/accuracy" for the auxiliary ones}).

    Heads absent from `outputs` (their modality is not in this run) are skipped.
    """
    weights = batch["example_mask"].astype(jnp.float32)
    total = jnp.zeros((), jnp.float32)
    metrics = {}
    for name, weight in self.weights.items():
      if name not in outputs:
        continue
      loss, accuracy = self.head_loss(outputs[name], batch[name], weights)
      total = total + weight * loss
      if len(self.weights) > 1:
        metrics[f"{name}/loss"] = loss
      metrics["accuracy" if name == self.main else f"{name}/accuracy"] = accuracy
    metrics["loss"] = total
    return total, metrics

  def predict(self, outputs: dict[str, jax.Array]) -> dict[str, dict[str, jax.Array]]:
    """{head: {"probabilities" [B, C], "prediction" [B]}} for every head present."""
    return {name: {"probabilities": jax.nn.softmax(logits, axis=-1),
                   "prediction": jnp.argmax(logits, axis=-1)}
            for name, logits in outputs.items()}
