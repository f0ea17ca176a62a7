"""Classification with one or more named heads and a weighted sum of their losses.

`config.losses = {head name: weight}` names the heads that are trained and how much
each counts; each head's target is the batch key of the same name (`label`,
`written_digit`, ...). The head named by `main` gives the task's predictions and
headline metrics; the others are auxiliary (multi-task) objectives.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from mmjax.config import ConfigError
from mmjax.data import pipeline
from mmjax.evaluate.evaluators import ClassificationEvaluator
from mmjax.models.model import build_model, head_specs, pretrained_sources


@dataclasses.dataclass(frozen=True)
class ClassificationTask:
  """Softmax cross-entropy per head (optional label smoothing), padding examples ignored."""

  num_classes: dict[str, int]   # head name -> classes
  weights: dict[str, float]     # head name -> loss weight
  main: str = "label"
  label_smoothing: float = 0.0
  ordinal: bool = False         # the main head's classes are ordered grades: report `qwk`

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

  def build(self, config: ml_collections.ConfigDict, dataset: pipeline.Dataset,
            modalities: tuple[str, ...], finetune: Any) -> tuple[pipeline.Preprocessor, Any]:
    """(preprocessor, model): the towers of `modalities`, `config.model.fusion` and the
    heads of `config.model.heads` whose input is in this run; the batches carry the
    heads' targets and the `config.evals.group_by` features."""
    heads = head_specs(config.model, modalities, self.num_classes.__getitem__)
    targets = [h.name for h in heads if h.name in self.targets]
    preprocessor = pipeline.make_preprocessor(dataset, config, modalities, targets,
                                              features=group_features(config, dataset))
    vocab_size = preprocessor.text_encoder.vocab_size if preprocessor.text_encoder else None
    model = build_model(config.model, modalities=modalities, vocab_size=vocab_size,
                        heads=heads, adapter_dim=finetune.model_adapter_dim,
                        init_from=pretrained_sources(config))
    return preprocessor, model

  def evaluator(self, exp: Any, predict_fn: Any, batches: Any) -> ClassificationEvaluator:
    """Every head's metrics and `report` (its classes named as the dataset's class-label
    feature names them), and the main head's quadratic weighted kappa if `ordinal`."""
    return ClassificationEvaluator(predict_fn, batches, exp.to_device, self.num_classes,
                                   self.main, groups=group_features(exp.config, exp.dataset),
                                   class_names=class_names(exp.config, exp.dataset,
                                                           self.num_classes),
                                   ordinal=self.ordinal)


def class_names(config: ml_collections.ConfigDict, dataset: pipeline.Dataset,
                heads: Any) -> dict[str, tuple[str, ...]]:
  """{head: names of its classes} for the `heads` whose `config.data.fields` feature is
  a class-label feature with names (the others are reported as "0", "1", ...)."""
  features = dataset.builder.info.features
  names = {}
  for head in heads:
    feature = config.data.fields.get(head, None)
    if feature in features and getattr(features[feature], "names", None):
      names[head] = tuple(features[feature].names)
  return names


def group_features(config: ml_collections.ConfigDict, dataset: pipeline.Dataset
                   ) -> dict[str, tuple[str, ...]]:
  """`config.evals.group_by` (class-label features, e.g. ("question_type",)) as
  {feature: class names}: the main head's accuracy is also reported per class of each
  (`accuracy/<class name>`)."""
  groups = {}
  for feature in config.evals.get("group_by", None) or ():
    features = dataset.builder.info.features
    if feature not in features or not hasattr(features[feature], "names"):
      raise ConfigError(f"config.evals.group_by: '{feature}' is not a class-label feature of "
                        f"dataset '{dataset.name}'")
    groups[feature] = tuple(features[feature].names)
  return groups
