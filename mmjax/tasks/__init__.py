"""Tasks bind head outputs to targets: loss, predictions, metrics (by `config.task.name`)."""

import dataclasses
from collections.abc import Callable

import ml_collections

from mmjax.config import ConfigError, check_fields, did_you_mean
from mmjax.tasks.classification import ClassificationTask
from mmjax.tasks.pretrain import PretrainTask

TASKS = {
    "classification": ClassificationTask,
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
  heads = list(config.model.heads.keys())
  for head in config.losses.keys():
    if head not in heads:
      raise ConfigError(f"config.losses.{head}: no such head in config.model.heads"
                        f"{did_you_mean(head, heads)}")
  main = kwargs.get("main", "label")
  if main not in config.losses:
    raise ConfigError(f"config.task.main: head '{main}' has no weight in config.losses")
  weights = {head: float(w) for head, w in config.losses.items()}
  return TASKS[name](num_classes={h: num_classes(h) for h in weights}, weights=weights,
                     **kwargs)
