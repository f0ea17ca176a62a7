"""Tasks bind inputs, model, loss and metrics (chosen by `config.task.name`).

A task is a frozen dataclass whose fields are `config.task`'s (plus what `build_task`
derives from `config.losses`), with four methods; a new task is one file here and one
entry in TASKS:

  build(config, dataset, modalities, finetune) -> (preprocessor, model)
      what reads the dataset into batches and the flax module applied to them;
  loss(outputs, batch) -> (scalar, {metric name: scalar})   (inside the jitted step);
  predict(outputs) -> per-example arrays, leading axis B      (inside the jitted eval);
  evaluator(exp, predict_fn, batches) -> an object whose run(params) yields
      (metric name, value) pairs for one split (mmjax/evaluate/evaluators.py).
"""

import dataclasses
from collections.abc import Callable

import ml_collections

from mmjax.config import ConfigError, check_fields, did_you_mean
from mmjax.tasks.classification import ClassificationTask
from mmjax.tasks.generation import GenerationTask
from mmjax.tasks.knowledge_tracing import KnowledgeTracingTask
from mmjax.tasks.multiple_choice import MultipleChoiceTask
from mmjax.tasks.pretrain import PretrainTask

TASKS = {
    "classification": ClassificationTask,
    "generation": GenerationTask,
    "knowledge_tracing": KnowledgeTracingTask,
    "multiple_choice": MultipleChoiceTask,
    "pretrain": PretrainTask,
}


def build_task(config: ml_collections.ConfigDict, num_classes: Callable[[str], int]):
  """The task of `config.task`, trained on the heads (or, for `pretrain`, the objectives)
  weighted in `config.losses`."""
  kwargs = config.task.to_dict()
  name = kwargs.pop("name")
  if name not in TASKS:
    raise ConfigError(f"config.task.name: unknown task '{name}'; expected one of "
                      f"{', '.join(TASKS)}")
  check_fields("config.task", kwargs, {f.name for f in dataclasses.fields(TASKS[name])} -
               {"weights", "num_classes"})
  if name == "pretrain":
    return PretrainTask(weights={k: float(w) for k, w in config.losses.items()}, **kwargs)
  if name == "generation":  # one loss, next-token cross-entropy: no heads, no weights
    return GenerationTask(**kwargs)
  if name == "knowledge_tracing":  # one loss over next responses: no heads, no weights
    return KnowledgeTracingTask(**kwargs)
  heads = list(config.model.heads.keys())
  for head in config.losses.keys():
    if head not in heads:
      raise ConfigError(f"config.losses.{head}: no such head in config.model.heads"
                        f"{did_you_mean(head, heads)}")
  main = kwargs.get("main", "label")
  if main not in config.losses:
    raise ConfigError(f"config.task.main: head '{main}' has no weight in config.losses")
  weights = {head: float(w) for head, w in config.losses.items()}
  if name == "multiple_choice":  # a head scores one choice; its classes: the choice slots
    max_choices = kwargs.get("max_choices", MultipleChoiceTask.max_choices)
    num_classes = lambda head: max_choices  # noqa: E731
  return TASKS[name](num_classes={h: num_classes(h) for h in weights}, weights=weights,
                     **kwargs)
