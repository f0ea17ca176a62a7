"""Classification with one or more named heads and a weighted sum of their losses.

`config.losses = {head name: weight}` names the heads that are trained and how much
each counts; each head's target is the batch key of the same name (`label`,
`written_digit`, ...). The head named by `main` gives the task's predictions and
headline metrics; the others are auxiliary (multi-task) objectives. A training batch
mixed by mixup / cutmix (`config.augment`) carries `mix_lambda` and `mix_<head>` for the
mixed heads, whose loss is then lam CE(<head>) + (1 - lam) CE(mix_<head>).

Attention supervision, `config.task.attention_targets = {feature: dict(layer, weight,
query=0, head=0, offset=0)}`: the attention logits of one head of one attention layer
(`layer`, its module path, e.g. "fusion/cross_encoder/block_0/cross_attention"), in the
row of query token `query`, are trained with softmax cross-entropy (times `weight`) to
point at key token `feature + offset` (`feature` is a `config.data.fields` role whose
integer dataset feature holds a token index; `offset` skips tokens before it, e.g. 1 for
an image [CLS]).
It gives a grounding signal straight to the attention that must find an object, which
an answer loss reaches only through the attended values (see
configs/edu/shapes_relational.py). Metrics: `<feature>/attention_loss` and
`<feature>/attention_accuracy` (argmax of the row == target).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from mmjax.config import ConfigError, check_fields
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
  attention_targets: Any = None  # {feature: dict(layer, weight, query, head, offset)}

  def __post_init__(self):
    specs = {}
    for feature, spec in dict(self.attention_targets or {}).items():
      spec = dict(spec)
      check_fields(f"config.task.attention_targets.{feature}", spec,
                   {"layer", "weight", "query", "head", "offset"})
      for required in ("layer", "weight"):
        if required not in spec:
          raise ConfigError(f"config.task.attention_targets.{feature}: '{required}' is "
                            "required, e.g. dict(layer='fusion/cross_encoder/block_0/"
                            "cross_attention', weight=0.5)")
      specs[feature] = dict(dict(query=0, head=0, offset=0), **spec)
    object.__setattr__(self, "attention_targets", specs)

  @property
  def reads_intermediates(self) -> bool:
    """Whether `loss` needs the model's sown attention logits (the train step passes them)."""
    return bool(self.attention_targets)

  @property
  def targets(self) -> tuple[str, ...]:
    return tuple(self.weights)

  def head_loss(self, logits: jax.Array, labels: jax.Array, weights: jax.Array,
                label_smoothing: float | None = None) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy and accuracy over examples with weight 1."""
    smoothing = self.label_smoothing if label_smoothing is None else label_smoothing
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), smoothing)
    count = jnp.maximum(weights.sum(), 1.0)
    loss = (optax.softmax_cross_entropy(logits, targets) * weights).sum() / count
    accuracy = ((jnp.argmax(logits, -1) == labels) * weights).sum() / count
    return loss, accuracy

  def mixed_head_loss(self, logits: jax.Array, labels: jax.Array, partner_labels: jax.Array,
                      lam: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`head_loss` of mixed examples (mixup / cutmix, mmjax/data/augment.py): logits [B, C],
    labels and partner_labels [B], lam [B] -> mean of lam CE(labels) + (1 - lam)
    CE(partner_labels) (one cross-entropy against the mixed targets, with the same label
    smoothing), and accuracy against `labels` (the larger share)."""
    classes = logits.shape[-1]
    smooth = lambda y: optax.smooth_labels(jax.nn.one_hot(y, classes),
                                           self.label_smoothing)
    lam = lam.astype(jnp.float32)[:, None]
    targets = lam * smooth(labels) + (1.0 - lam) * smooth(partner_labels)
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
      if f"mix_{name}" in batch:  # mixup / cutmix (config.augment): two targets
        loss, accuracy = self.mixed_head_loss(outputs[name], batch[name], batch[f"mix_{name}"],
                                              batch["mix_lambda"], weights)
      else:
        loss, accuracy = self.head_loss(outputs[name], batch[name], weights)
      total = total + weight * loss
      if len(self.weights) > 1:
        metrics[f"{name}/loss"] = loss
      metrics["accuracy" if name == self.main else f"{name}/accuracy"] = accuracy
    for feature, spec in self.attention_targets.items():
      logits = attention_logits(outputs["intermediates"], spec["layer"])
      if not 0 <= spec["head"] < logits.shape[1] or not 0 <= spec["query"] < logits.shape[2]:
        raise ConfigError(f"config.task.attention_targets.{feature}: head {spec['head']} / "
                          f"query {spec['query']} outside the layer's {logits.shape[1]} heads "
                          f"and {logits.shape[2]} query tokens")
      row = logits[:, spec["head"], spec["query"], :].astype(jnp.float32)
      loss, accuracy = ClassificationTask.head_loss(self, row, batch[feature] + spec["offset"],
                                                    weights, 0.0)
      total = total + spec["weight"] * loss
      metrics[f"{feature}/attention_loss"] = loss
      metrics[f"{feature}/attention_accuracy"] = accuracy
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
    targets = [h.name for h in heads if h.name in self.targets] + list(self.attention_targets)
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


def attention_logits(intermediates: Any, layer: str) -> jax.Array:
  """The attention logits [B, heads, T, S] sown by the MultiHeadAttention at module path
  `layer` ("fusion/cross_encoder/block_0/cross_attention")."""
  node = intermediates
  for i, part in enumerate(layer.split("/")):
    if not hasattr(node, "keys") or part not in node:
      here = "/".join(layer.split("/")[:i]) or "the model"
      options = sorted(node.keys()) if hasattr(node, "keys") else []
      raise ConfigError(f"config.task.attention_targets: layer '{layer}': {here} has no "
                        f"'{part}'; expected one of {', '.join(options)}")
    node = node[part]
  if not hasattr(node, "keys") or "logits" not in node:
    raise ConfigError(f"config.task.attention_targets: layer '{layer}' is not an attention "
                      "layer (it sows no logits)")
  return node["logits"][0]


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
