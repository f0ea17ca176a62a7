"""Multiple choice: score every (question, choice) pair, softmax over the choices.

Each choice k of an example becomes one text, "[CLS] question context [SEP] choice k
[SEP]"; the model (MultimodalModel.score_choices) runs its towers, fusion and a 1-logit
head on every pair, with the example's image shared by its choices, and returns logits
[B, K] where K = `config.task.max_choices`. Examples with fewer choices are padded with
absent choices, whose logit is mmjax.models.model.ABSENT_CHOICE (probability exactly 0).
Softmax cross-entropy over the K logits trains the head, as in classification.

Dataset contract (the `scienceqa` builder, and any dataset read this way): features
  question   Text
  context    Text, "" when there is none
  choices    Text, the choices joined by "\\n" (2 to max_choices of them)
  answer     Scalar int32, the index of the correct choice
  image      uint8 [H, W, 3], black when there is none
  has_image  Scalar int32, 0/1
named for the task by `config.data.fields` roles question, context (optional), choices,
label (the answer) and image. Batches: text_ids int32 [B, K, T], text_mask bool [B, K, T],
choice_mask bool [B, K], label int32 [B], image float32 [B, H, W, 3], example_mask [B].

`config.task.breakdown = "scienceqa"` also reports ScienceQA's accuracy per question
group (mmjax/evaluate/scienceqa.py: accuracy/NAT, ..., accuracy/Avg), from the dataset's
`subject`, `grade`, `has_context` and `has_image` features.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mmjax.config import ConfigError
from mmjax.data import pipeline
from mmjax.data.tokenizer import TextEncoder
from mmjax.evaluate import scienceqa
from mmjax.evaluate.evaluators import ClassificationEvaluator
from mmjax.models.model import ABSENT_CHOICE, build_model, head_specs, pretrained_sources
from mmjax.tasks.classification import ClassificationTask, group_features

CHOICE_ROLES = ("question", "context", "choices")  # config.data.fields roles read as text
BREAKDOWNS = ("", "scienceqa")


@dataclasses.dataclass(frozen=True)
class MultipleChoiceTask(ClassificationTask):
  """Softmax cross-entropy over each example's choices; `num_classes` of the main head is
  `max_choices` (its "classes" are the choice positions).

  Label smoothing spreads its mass over the example's real choices only.
  """

  max_choices: int = 5
  breakdown: str = ""  # "" or "scienceqa"

  def __post_init__(self):
    if self.attention_targets:
      raise ConfigError("config.task.attention_targets: the multiple_choice task scores each "
                        "choice in its own pass; attention supervision is for classification")
    super().__post_init__()
    if isinstance(self.max_choices, bool) or not isinstance(self.max_choices, int) or \
        self.max_choices < 2:
      raise ConfigError(f"config.task.max_choices: expected an integer >= 2, got "
                        f"{self.max_choices!r}")
    if self.breakdown not in BREAKDOWNS:
      raise ConfigError(f"config.task.breakdown: unknown '{self.breakdown}'; expected one of "
                        f"{', '.join(repr(b) for b in BREAKDOWNS)}")
    if set(self.weights) != {self.main}:
      raise ConfigError(f"config.losses: the multiple_choice task trains one head, its main "
                        f"'{self.main}'; got {', '.join(self.weights)}")

  def head_loss(self, logits: jax.Array, labels: jax.Array, weights: jax.Array,
                label_smoothing: float | None = None) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy and accuracy over examples with weight 1; logits [B, K] with
    ABSENT_CHOICE at padding choices."""
    smoothing = self.label_smoothing if label_smoothing is None else label_smoothing
    real = (logits > ABSENT_CHOICE / 2).astype(jnp.float32)
    targets = ((1.0 - smoothing) * jax.nn.one_hot(labels, logits.shape[-1])
               + smoothing * real / real.sum(-1, keepdims=True))
    count = jnp.maximum(weights.sum(), 1.0)
    loss = (optax.softmax_cross_entropy(logits, targets) * weights).sum() / count
    accuracy = ((jnp.argmax(logits, -1) == labels) * weights).sum() / count
    return loss, accuracy

  def build(self, config: ml_collections.ConfigDict, dataset: pipeline.Dataset,
            modalities: tuple[str, ...], finetune: Any) -> tuple[pipeline.Preprocessor, Any]:
    """(ChoicePreprocessor, MultimodalModel whose heads have one logit each)."""
    if "text" not in modalities or not set(modalities) <= {"image", "text"}:
      raise ConfigError(f"config.model.modalities: multiple choice reads text (the choices) "
                        f"and optionally image; got {config.model.modalities}")
    heads = head_specs(config.model, modalities, lambda name: 1)
    if self.main not in [h.name for h in heads]:
      raise ConfigError(f"config.task.main: head '{self.main}' is not among this run's heads")
    features = tuple(group_features(config, dataset)) + breakdown_features(self.breakdown,
                                                                          dataset)
    preprocessor = make_choice_preprocessor(dataset, config, modalities, features,
                                            self.max_choices)
    model = build_model(config.model, modalities=modalities,
                        vocab_size=preprocessor.text_encoder.vocab_size, heads=heads,
                        adapter_dim=finetune.model_adapter_dim,
                        init_from=pretrained_sources(config))
    return preprocessor, model

  def evaluator(self, exp: Any, predict_fn: Any, batches: Any) -> MultipleChoiceEvaluator:
    subjects = None
    if self.breakdown == "scienceqa":
      subjects = tuple(exp.dataset.builder.info.features["subject"].names)
    return MultipleChoiceEvaluator(predict_fn, batches, exp.to_device, self.num_classes,
                                   self.main, groups=group_features(exp.config, exp.dataset),
                                   subject_names=subjects)


def breakdown_features(breakdown: str, dataset: pipeline.Dataset) -> tuple[str, ...]:
  """The per-example features `breakdown` reads, after checking the dataset has them."""
  if not breakdown:
    return ()
  features = dataset.builder.info.features
  missing = [name for name in scienceqa.FEATURES if name not in features]
  if missing:
    raise ConfigError(f"config.task.breakdown='{breakdown}': dataset '{dataset.name}' has no "
                      f"feature {', '.join(missing)}")
  if not hasattr(features["subject"], "names"):
    raise ConfigError(f"config.task.breakdown='{breakdown}': feature 'subject' of dataset "
                      f"'{dataset.name}' is not a class label")
  return scienceqa.FEATURES


class MultipleChoiceEvaluator(ClassificationEvaluator):
  """ClassificationEvaluator's metrics over choice positions (accuracy, ...), plus with
  `subject_names` (the `subject` class names) ScienceQA's `accuracy/<group>` breakdown."""

  def __init__(self, *args: Any, groups: dict[str, tuple[str, ...]] | None = None,
               subject_names: Sequence[str] | None = None, **kwargs: Any):
    self.subject_names = tuple(subject_names) if subject_names else None
    self.group_by = tuple(groups or ())
    collect = dict(groups or {})
    if self.subject_names:
      collect.update({key: () for key in scienceqa.FEATURES if key not in collect})
    super().__init__(*args, groups=collect, **kwargs)

  def metrics(self, predictions: dict[str, dict[str, np.ndarray]]
              ) -> Iterator[tuple[str, Any]]:
    groups = predictions.get("groups", {})
    features = {key: groups[key] for key in scienceqa.FEATURES} if self.subject_names else {}
    for key in features:
      if key not in self.group_by:
        del groups[key]  # collected for the breakdown only
    yield from super().metrics(predictions)
    if features:
      main = predictions[self.main]
      for column, value in scienceqa.breakdown(main["label"] == main["prediction"],
                                               subject_names=self.subject_names,
                                               **features).items():
        yield f"accuracy/{column}", value


class ChoicePreprocessor(pipeline.Preprocessor):
  """Dataset examples -> multiple-choice batches (see the module docstring for keys).

  `fields` maps roles to dataset features: `question`, `choices`, optionally `context`
  and `image`, and int targets/features (`label`, ...) as in pipeline.Preprocessor.
  """

  def __init__(self, fields: dict[str, str], text_encoder: TextEncoder, *, max_choices: int,
               image_size: Sequence[int] | None = None, image_channels: int | None = None):
    self.text_fields = {role: fields[role] for role in CHOICE_ROLES if role in fields}
    super().__init__({role: f for role, f in fields.items() if role not in CHOICE_ROLES},
                     None, image_size=image_size, image_channels=image_channels)
    self.text_encoder = text_encoder
    self.max_choices = max_choices

  @property
  def batch_keys(self) -> tuple[str, ...]:
    return ("text_ids", "text_mask", "choice_mask") + super().batch_keys

  def example(self, raw: dict) -> dict:
    out = super().example(raw)

    def text(role: str) -> str:
      if role not in self.text_fields:
        return ""
      value = raw[self.text_fields[role]]
      return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    choices = text("choices").split("\n")
    if len(choices) > self.max_choices:
      raise ConfigError(f"config.task.max_choices={self.max_choices}: an example has "
                        f"{len(choices)} choices ({choices})")
    if "label" in out and not 0 <= out["label"] < len(choices):
      raise ConfigError(f"answer {out['label']} is no index into the example's "
                        f"{len(choices)} choices ({choices})")
    out["prompt"] = " ".join(t for t in (text("question"), text("context")) if t)
    out["choices"] = choices
    return out

  def collate(self, examples: Sequence[dict]) -> dict[str, np.ndarray]:
    batch = super().collate(examples)
    size, num_choices = len(examples), self.max_choices
    batch["choice_mask"] = np.zeros((size, num_choices), bool)
    prompts, choices = [], []
    for i, example in enumerate(examples):
      batch["choice_mask"][i, :len(example["choices"])] = True
      prompts += [example["prompt"]] * num_choices
      choices += example["choices"] + [""] * (num_choices - len(example["choices"]))
    encoded = self.text_encoder(prompts, choices)
    batch.update({key: value.reshape(size, num_choices, -1) for key, value in encoded.items()})
    return batch


def make_choice_preprocessor(dataset: pipeline.Dataset, config: ml_collections.ConfigDict,
                             modalities: Sequence[str], features: Sequence[str],
                             max_choices: int) -> ChoicePreprocessor:
  """The ChoicePreprocessor of `config.data.fields` (roles question, choices, label,
  optional context, and image when it is a modality) and the int `features`."""
  roles = ["question", "choices", "label"] + (["image"] if "image" in modalities else [])
  missing = [role for role in roles if role not in config.data.fields]
  if missing:
    raise ConfigError(f"config.data.fields names no dataset feature for {', '.join(missing)}")
  if "context" in config.data.fields:
    roles.append("context")
  fields = {role: config.data.fields[role] for role in roles}
  fields.update({name: name for name in features if name not in fields})
  known = dataset.builder.info.features
  for role, feature in fields.items():
    if feature not in known:
      raise ConfigError(f"config.data.fields.{role}: dataset '{dataset.name}' has no feature "
                        f"'{feature}'; it has {', '.join(known)}")
  return ChoicePreprocessor(fields, pipeline.make_text_encoder(dataset, config),
                            max_choices=max_choices,
                            image_size=config.input.get("image_size", None),
                            image_channels=config.input.get("image_channels", None))
