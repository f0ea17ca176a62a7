"""Metric writers: `metrics.jsonl`, TensorBoard (scalars and the HPARAMS view) and,
optionally, Weights & Biases.

Every run writes `<workdir>/metrics.jsonl` (one JSON object per logged step) and
`<workdir>/tensorboard/`. Given the run's config, the TensorBoard file also gets the
hparams plugin's summaries: at the start the flattened config (its scalar and string
fields, lists as JSON text: `optimizer.learning_rate`, `model.fusion.kind`, `seed`, ...)
with the metric tags to show beside them (`config.evals.headline`, each eval split's
value of that metric, `train/loss`), and at the end of a finished run a success status;
TensorBoard's HPARAMS tab then lists the run with its final metric values (the last
value of those scalar tags).

W&B (`config.wandb`, off by default): with `enabled=True` and the `wandb` package
installed (`pip install 'mmjax[wandb]'`), process 0 also logs every scalar to a W&B run
whose config is the run's config. The run lives in `<workdir>/wandb/` (`dir`), its id is
kept in `<workdir>/wandb_id`, and it is opened with `resume="allow"`, so a resumed
training run continues the same W&B run; steps the W&B run already has (logged by the
interrupted process past its last checkpoint: the same values, resume being exact) are
not sent twice. `mode` is "offline" (the default: files only, `wandb sync` uploads them
later), "online" or "disabled". Enabled without the package installed, training goes on
with one warning line saying how to install it.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Sequence
from numbers import Number
from typing import Any

import jax
import ml_collections

from mmjax.config import ConfigError, check_fields

log = logging.getLogger(__name__)

WANDB_FIELDS = {"enabled", "project", "entity", "name", "tags", "mode"}
WANDB_MODES = ("offline", "online", "disabled")
WANDB_ID_FILE = "wandb_id"


def wandb_settings(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """The `wandb.init` arguments of `config.wandb`, or None while it is off (absent or
  `enabled=False`); a one-line ConfigError for an unknown field, mode or tag."""
  spec = config.get("wandb", None)
  if not spec:
    return None
  check_fields("config.wandb", spec.keys(), WANDB_FIELDS)
  if not spec.get("enabled", False):
    return None
  mode = spec.get("mode", "offline")
  if mode not in WANDB_MODES:
    raise ConfigError(f"config.wandb.mode='{mode}': expected one of {', '.join(WANDB_MODES)}")
  tags = spec.get("tags", ()) or ()
  if isinstance(tags, str) or not all(isinstance(t, str) for t in tags):
    raise ConfigError(f"config.wandb.tags: expected a tuple of strings, got {tags!r}")
  return dict(project=spec.get("project", None) or "mmjax", entity=spec.get("entity", None)
              or None, name=spec.get("name", None) or None, tags=list(tags), mode=mode)


def flat_config(config: ml_collections.ConfigDict) -> dict[str, bool | int | float | str]:
  """The config's leaves as {"a.b.c": value}: numbers, bools and strings as they are,
  lists as JSON text; None (unset) fields are left out."""
  flat: dict[str, Any] = {}

  def visit(prefix: str, value: Any) -> None:
    if isinstance(value, dict):
      for key, item in value.items():
        visit(f"{prefix}.{key}" if prefix else str(key), item)
    elif isinstance(value, (bool, int, float, str)):
      flat[prefix] = value
    elif value is not None:
      flat[prefix] = json.dumps(value)

  visit("", json.loads(config.to_json_best_effort()))
  return flat


def hparam_metrics(config: ml_collections.ConfigDict) -> list[str]:
  """The scalar tags the HPARAMS view shows beside the config: the headline, its metric
  on every eval split, and the training loss."""
  evals = config.get("evals", None) or {}
  headline = evals.get("headline", "") or ""
  tags = [headline] if headline else []
  metric = headline.partition("/")[2]
  if metric:
    tags += [f"{split}/{metric}" for split in evals.get("splits", ())]
  return list(dict.fromkeys([*tags, "train/loss"]))


def run_id(workdir: str) -> str:
  """The W&B run id of `workdir`: read from `<workdir>/wandb_id`, made on first use."""
  path = os.path.join(workdir, WANDB_ID_FILE)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      value = f.read().strip()
    if value:
      return value
  value = uuid.uuid4().hex[:16]
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(value + "\n")
  os.replace(path + ".tmp", path)
  return value


class WandbWriter:
  """Scalars to one W&B run (see the module docstring); `create` is None when off."""

  def __init__(self, run: Any):
    self.run = run
    # The first step this process may log: a resumed run already has the ones before it.
    self.first_step = int(getattr(run, "step", 0) or 0)

  @classmethod
  def create(cls, config: ml_collections.ConfigDict, workdir: str) -> WandbWriter | None:
    settings = wandb_settings(config)
    if settings is None or jax.process_index() != 0:
      return None
    try:
      import wandb  # noqa: PLC0415 - optional: `pip install 'mmjax[wandb]'`
    except ImportError:
      log.warning("config.wandb.enabled is set but the wandb package is not installed "
                  "(pip install wandb); logging to metrics.jsonl and TensorBoard only")
      return None
    run = wandb.init(dir=workdir, id=run_id(workdir), resume="allow",
                     config=json.loads(config.to_json_best_effort()), **settings)
    log.info("W&B run %s (%s mode) in %s", run.id, settings["mode"], run.dir)
    return cls(run)

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if step >= self.first_step:
      self.run.log(scalars, step=step)

  def close(self) -> None:
    self.run.finish()


class MetricWriter:
  """Writes scalars to `<workdir>/metrics.jsonl`, `<workdir>/tensorboard/` and, when
  `config.wandb` enables it, W&B.

  Only process 0 writes. With `resume_step`, records after that step (written by an
  interrupted run past its last checkpoint, and a line cut short by a kill) are dropped
  from `metrics.jsonl` and purged from TensorBoard, so a resumed run's logs match an
  uninterrupted run's. With `config`, its hyper-parameters go to TensorBoard's HPARAMS
  view (and W&B's run config).
  """

  def __init__(self, workdir: str, tensorboard: bool = True, resume_step: int | None = None,
               config: ml_collections.ConfigDict | None = None):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    self._wandb = None
    self._hparams = None
    if not self.enabled:
      return
    if resume_step is not None:
      self.truncate_after(resume_step)
    if tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=30,
                               purge_step=None if resume_step is None else resume_step + 1)
    if config is not None:
      if self._tb is not None:
        self.write_hparams(config)
      self._wandb = WandbWriter.create(config, workdir)

  def write_hparams(self, config: ml_collections.ConfigDict,
                    metrics: Sequence[str] | None = None) -> None:
    """The hparams plugin's experiment and session-start summaries: the flattened config
    and the metric tags (default `hparam_metrics(config)`) to show with it."""
    from tensorboardX.summary import hparams

    experiment, start, self._hparams = hparams(
        flat_config(config), dict.fromkeys(metrics or hparam_metrics(config), 0.0))
    self._tb.file_writer.add_summary(experiment)
    self._tb.file_writer.add_summary(start)

  def truncate_after(self, step: int) -> None:
    if not os.path.exists(self.path):
      return
    kept = []
    with open(self.path, encoding="utf-8") as f:
      for line in f:
        try:
          record = json.loads(line)
        except ValueError:  # the last line of a process killed while writing it
          continue
        if record["step"] <= step:
          kept.append(line if line.endswith("\n") else line + "\n")
    tmp = self.path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(kept)
    os.replace(tmp, self.path)

  def write(self, step: int, scalars: dict[str, Number]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for name, value in scalars.items():
        self._tb.add_scalar(name, float(value), int(step))
    if self._wandb is not None:
      self._wandb.write(int(step), {k: v for k, v in record.items() if k != "step"})

  def close(self, finished: bool = False) -> None:
    """Flushes and closes; `finished` (the run reached its end) also ends the hparams
    session with a success status."""
    if self._tb is not None:
      if finished and self._hparams is not None:
        self._tb.file_writer.add_summary(self._hparams)
      self._tb.close()
    if self._wandb is not None:
      self._wandb.close()
      self._wandb = None
