"""The training loop: config -> data, model, task, mesh -> steps, logs, checkpoints, evals.

`train(config, workdir)` resumes from the newest checkpoint in `workdir` when there is
one, so re-running the same command after an interruption continues the run.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from mmjax.config import ConfigError, check_fields, modalities
from mmjax.data import augment, pipeline
from mmjax.data.tokenizer import TOKENIZER_FILE
from mmjax.evaluate import evaluators as evaluators_lib
from mmjax.models import lora
from mmjax.models.model import pretrained_sources
from mmjax.tasks import build_task
from mmjax.tasks.pretrain import PretrainTask
from mmjax.train import adversarial as adversarial_lib
from mmjax.train import checkpoint as checkpoint_lib
from mmjax.train import param_rules, profile
from mmjax.train import sharding as sharding_lib
from mmjax.train.checkpoint import Checkpointer
from mmjax.train.optimizer import build_optimizer
from mmjax.train.state import TrainState
from mmjax.train.step import identity, jit_train_step, make_predict_step, make_train_step
from mmjax.utils.writers import MetricWriter, wandb_settings

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Experiment:
  """Everything built from a config before any parameter exists."""

  config: ml_collections.ConfigDict
  dataset: pipeline.Dataset
  preprocessor: pipeline.Preprocessor
  model: Any
  task: Any
  mesh: jax.sharding.Mesh
  finetune: param_rules.Finetune

  @property
  def batch_sharding(self) -> jax.sharding.NamedSharding:
    return sharding_lib.batch_sharding(self.mesh)

  @property
  def replicated(self) -> jax.sharding.NamedSharding:
    return sharding_lib.replicated(self.mesh)

  def to_device(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return sharding_lib.global_batch(batch, self.batch_sharding)

  def rows(self, global_batch_size: int) -> tuple[int, int]:
    """The rows of each global batch this process reads."""
    return sharding_lib.process_rows(self.batch_sharding, global_batch_size)

  def param_shardings(self, params: Any) -> Any:
    """Shardings of a parameter tree (arrays or shapes) from `config.sharding_rules`."""
    return sharding_lib.param_shardings(params, self.mesh,
                                        self.config.get("sharding_rules", None) or ())

  def example_batch(self) -> dict[str, np.ndarray]:
    """One real training example as a batch of 1 (for shapes at init)."""
    source = self.dataset.source(self.config.data.train_split)
    return self.preprocessor.collate([self.preprocessor.example(source[0])])


def build_experiment(config: ml_collections.ConfigDict,
                     devices: list[jax.Device] | None = None) -> Experiment:
  finetune = param_rules.Finetune.from_config(config)
  dataset = pipeline.open_dataset(config.data)

  def num_classes(head: str) -> int:
    if head not in config.data.fields:
      raise ConfigError(f"config.data.fields names no dataset feature for head '{head}'")
    return dataset.num_classes(config.data.fields[head])

  task = build_task(config, num_classes)
  # A task over inputs of its own kind (knowledge tracing's interaction sequences) names
  # them in `task.modalities`; the others read `config.model.modalities`.
  mods = getattr(task, "modalities", None) or modalities(config)
  preprocessor, model = task.build(config, dataset, mods, finetune)
  if scanned(config) and (finetune.mode == "lora" or pretrained_sources(config)
                          or (config.get("task", None) or {}).get("attention_targets")):
    raise ConfigError("config.model.block.scan: stacked layers cannot take LoRA factors, "
                      "converted pretrained towers (config.init_from) or attention "
                      "supervision (config.task.attention_targets); use scan=False")
  mesh = sharding_lib.make_mesh(config.mesh, devices)
  parts = sharding_lib.batch_parts(mesh)
  axes = " x ".join(sharding_lib.batch_axes(mesh)) or "none"
  for field, size in (("input.batch_size", config.input.batch_size),
                      ("evals.batch_size", config.evals.batch_size)):
    if size % parts:
      raise ConfigError(f"config.{field}={size} must be divisible by the {parts} devices "
                        f"the batch is split over (mesh axes {axes})")
  micro = accum_steps(config)
  if config.input.batch_size % (micro * parts):
    raise ConfigError(f"config.input.batch_size={config.input.batch_size} must be divisible "
                      f"by config.input.accum_steps={micro} times the {parts} devices the "
                      "batch is split over (each micro-batch is split over them)")
  for split in eval_splits(config):
    dataset.source(split)  # an unknown split fails now, not after training
  return Experiment(config, dataset, preprocessor, model, task, mesh, finetune)


def scanned(config: ml_collections.ConfigDict) -> bool:
  """Whether `config.model.block.scan` stacks the layers (`layers.BlockOptions.scan`)."""
  return bool((config.model.get("block", None) or {}).get("scan", False))


def accum_steps(config: ml_collections.ConfigDict) -> int:
  """`config.input.accum_steps` (default 1): micro-batches per optimizer step, each
  `batch_size / accum_steps` examples, gradients averaged (`step.make_train_step`)."""
  value = config.input.get("accum_steps", 1)
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ConfigError(f"config.input.accum_steps: expected a positive integer, got {value!r}")
  return value


def initial_params(exp: Experiment, *, pretrained: bool = True) -> dict:
  """The parameters training starts from, sharded over the mesh (`exp.param_shardings`):
  the one place where they are created.

  1. `random_params`: the model's random init.
  2. `load_pretrained_towers`: `config.init_from` checkpoints overwrite their towers,
     before LoRA factors exist (so LoRA starts from the pretrained kernels). Skipped with
     `pretrained=False`, when a workdir checkpoint will overwrite every parameter anyway.
  3. `add_finetune_params`: LoRA factors in lora mode.
  """
  params = random_params(exp)
  if pretrained:
    params = load_pretrained_towers(exp, params)
  return add_finetune_params(exp, params)


def load_pretrained_towers(exp: Experiment, params: dict) -> dict:
  """Loads `config.init_from`: an mmjax workdir or checkpoint (every parameter whose path
  and shape this model shares: towers, fusion), or per-modality imported checkpoints into
  `<modality>_encoder/...`. Logs what was loaded, new (kept from the random init) and
  ignored."""
  from mmjax.convert import load_pretrained  # reads safetensors only when asked to

  init_from = exp.config.get("init_from", None)
  if isinstance(init_from, str) and init_from:
    source = checkpoint_lib.read_params(init_from)
    params, report = checkpoint_lib.load_matching(params, source, init_from)
    log.info("init_from: %s", report)
    log.info("init_from: new (initialised here): %s", ", ".join(report.new) or "none")
    log.info("init_from: ignored (not in this model): %s", ", ".join(report.ignored) or "none")
    return params
  for modality, source in pretrained_sources(exp.config).items():
    params, report = load_pretrained(params, source["checkpoint"], source["kind"],
                                     prefix=f"{modality}_encoder")
    log.info("init_from.%s (%s): %s", modality, source["checkpoint"], report)
  return params


def random_params(exp: Experiment) -> dict:
  """The model's random init from `fold_in(key(config.seed), 0)`, sharded."""
  example = {k: jnp.asarray(v) for k, v in exp.example_batch().items()}

  def init(rng):
    return exp.model.init({"params": rng}, example, train=False)["params"]

  rng = jax.random.fold_in(jax.random.key(exp.config.seed), 0)
  shapes = jax.eval_shape(init, rng)
  if exp.finetune.mode == "lora":
    lora.check_targets(shapes, exp.finetune.lora_targets)  # before any compilation
  return jax.jit(init, out_shardings=exp.param_shardings(shapes))(rng)


def add_finetune_params(exp: Experiment, params: dict) -> dict:
  """In lora mode, `params` plus factors `lora_a`, `lora_b` beside every kernel the
  finetune rules label "lora", drawn from `fold_in(key(config.seed), 2)`; else `params`."""
  if exp.finetune.mode != "lora":
    return params
  lora.check_targets(params, exp.finetune.lora_targets)
  targets = jax.tree.map(lambda label: label == param_rules.LORA, exp.finetune.labels(params))
  add = functools.partial(lora.add_lora, targets=targets, rank=exp.finetune.lora_rank)
  rng = jax.random.fold_in(jax.random.key(exp.config.seed), 2)
  return jax.jit(add, out_shardings=exp.param_shardings(
      jax.eval_shape(add, params, rng=rng)))(params, rng=rng)


@dataclasses.dataclass
class TrainSetup:
  """What the steps need besides the state.

  Attributes:
    shardings: a tree like the TrainState of shardings.
    tx, schedule: the optimizer and its learning-rate schedule.
    trainable: a tree like `state.params` of python bools, or None when all train.
    model_params: state params -> the parameters `model.apply` takes (merges LoRA).
    num_trainable, num_total: parameter counts (elements).
  """

  shardings: Any
  tx: Any
  schedule: Any
  trainable: Any
  model_params: Any
  num_trainable: int
  num_total: int


def create_state(exp: Experiment, params: dict | None = None
                 ) -> tuple[TrainState, TrainSetup]:
  """The step-0 state and the TrainSetup, on the mesh.

  Args:
    exp: the experiment.
    params: the initial parameters (placed with `exp.param_shardings` here); None:
      `initial_params(exp)`.

  Returns the state (`params`, optimizer state of the trainable parameters only) and
  the TrainSetup.

  What trains is decided by regex rules over parameter paths: the finetune mode's rules
  (after the user's `config.finetune.rules`) and `config.optimizer.lr_mults` (0 freezes).
  """
  config = exp.config
  params = initial_params(exp) if params is None else params
  param_shardings = exp.param_shardings(params)
  params = jax.device_put(params, param_shardings)
  exp.finetune.warn_unmatched(params)
  mults = param_rules.lr_multipliers(params, config.optimizer.get("lr_mults", None) or ())
  trainable = param_rules.trainable_mask(exp.finetune.labels(params), mults)
  train_params, _ = param_rules.split_params(params, trainable)
  if not train_params:
    raise ConfigError(f"config.finetune: no parameter is trainable in mode "
                      f"'{exp.finetune.mode}' with config.finetune.rules and "
                      "config.optimizer.lr_mults as set")
  tx, schedule = build_optimizer(config, train_params)
  opt_shardings = sharding_lib.like_params_shardings(
      jax.eval_shape(tx.init, train_params), params, param_shardings, exp.mesh)
  opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(train_params)
  step = jax.device_put(jnp.zeros((), jnp.int32), exp.replicated)
  state = TrainState(step, params, opt_state)
  shardings = TrainState(exp.replicated, param_shardings, opt_shardings)
  all_train = all(jax.tree.leaves(trainable))
  return state, TrainSetup(shardings, tx, schedule, None if all_train else trainable,
                           model_params_fn(exp),
                           sum(x.size for x in jax.tree.leaves(train_params)),
                           sum(x.size for x in jax.tree.leaves(params)))


def model_params_fn(exp: Experiment) -> Any:
  """state params -> the parameters `model.apply` takes: LoRA factors merged into their
  kernels in lora mode (`lora.merge_lora`), else the identity."""
  if exp.finetune.mode == "lora":
    return functools.partial(lora.merge_lora, alpha=exp.finetune.lora_alpha)
  return identity


def eval_splits(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The dataset splits evaluation reads: `config.evals.splits` and, when configured, the
  zero-shot classification split."""
  zeroshot = config.evals.get("zeroshot", None)
  return tuple(config.evals.splits) + ((zeroshot.split,) if zeroshot else ())


def eval_batches(exp: Experiment, split: str,
                 preprocessor: pipeline.Preprocessor | None = None) -> Any:
  """() -> the padded evaluation batches of `split` (by the run's preprocessor unless
  another is given), a fresh pass on every call."""
  source = exp.dataset.source(split)
  preprocessor = preprocessor or exp.preprocessor
  size = exp.config.evals.batch_size
  return lambda: pipeline.eval_batches(source, preprocessor, global_batch_size=size,
                                       rows=exp.rows(size))


def make_evaluators(exp: Experiment, params_sharding: Any, model_params: Any = identity
                    ) -> dict[str, Any]:
  """{name: evaluator}: one per split of `config.evals.splits` (named by the split) and,
  for pre-training with `config.evals.zeroshot`, "zeroshot"."""
  config = exp.config
  predict = make_predict_step(exp.model, exp.task, params_sharding, exp.batch_sharding,
                              model_params=model_params)
  evaluators: dict[str, Any] = {
      split: exp.task.evaluator(exp, predict, eval_batches(exp, split))
      for split in config.evals.splits}
  zeroshot = config.evals.get("zeroshot", None)
  if zeroshot:
    if not isinstance(exp.task, PretrainTask):
      raise ConfigError("config.evals.zeroshot: zero-shot classification needs the "
                        "pretrain task's embeddings")
    evaluators["zeroshot"] = zeroshot_evaluator(exp, zeroshot, params_sharding, model_params)
  return evaluators


def zeroshot_evaluator(exp: Experiment, zeroshot: ml_collections.ConfigDict,
                       params_sharding: Any, model_params: Any
                       ) -> evaluators_lib.ZeroShotEvaluator:
  """`config.evals.zeroshot` = dict(split, label (a class-label feature), classnames (one
  phrase per class), templates ("a photo of a {}.", ...))."""
  check_fields("config.evals.zeroshot", zeroshot.keys(),
               {"split", "label", "classnames", "templates"})
  num_classes = exp.dataset.num_classes(zeroshot.label)
  if len(zeroshot.classnames) != num_classes:
    raise ConfigError(f"config.evals.zeroshot.classnames: {len(zeroshot.classnames)} names "
                      f"for the {num_classes} classes of '{zeroshot.label}'")
  texts = [template.format(name) for name in zeroshot.classnames
           for template in zeroshot.templates]
  prompts = exp.preprocessor.text_encoder(texts)
  prompts["example_mask"] = np.ones(len(texts), bool)
  size = -(-len(texts) // exp.config.evals.batch_size) * exp.config.evals.batch_size
  start, stop = exp.rows(size)  # this process's rows of the one batch of prompts
  prompts = {k: v[start:stop] for k, v in pipeline.pad_batch(prompts, size).items()}

  def embed(params, batch):
    return exp.model.apply({"params": model_params(params)}, batch, method="embed")

  embed_fn = jax.jit(embed, in_shardings=(params_sharding, exp.batch_sharding),
                     out_shardings=exp.batch_sharding)
  preprocessor = pipeline.Preprocessor({"image": exp.config.data.fields.image,
                                        "label": zeroshot.label}, None,
                                       **exp.preprocessor.image_options)
  return evaluators_lib.ZeroShotEvaluator(
      embed_fn, eval_batches(exp, zeroshot.split, preprocessor), exp.to_device, prompts,
      num_classes)


def run_evaluators(evaluators: dict[str, Any], params: Any
                   ) -> dict[str, dict[str, Any]]:
  return {split: dict(evaluator.run(params)) for split, evaluator in evaluators.items()}


def scalar_metrics(results: dict[str, dict[str, Any]]) -> dict[str, float]:
  """{split: {name: value}} -> {"split/name": value} for the scalar values."""
  return {f"{split}/{name}": value for split, metrics in results.items()
          for name, value in metrics.items() if isinstance(value, (int, float))}


def validate(config: ml_collections.ConfigDict) -> None:
  if config.checkpoint.every_steps % config.log_every_steps:
    raise ConfigError(f"config.checkpoint.every_steps={config.checkpoint.every_steps} must be a "
                      f"multiple of config.log_every_steps={config.log_every_steps}, so that a "
                      "resumed run logs the same averages")
  if config.total_steps <= 0:
    raise ConfigError(f"config.total_steps must be positive, got {config.total_steps}")
  split = config.evals.headline.partition("/")[0]
  names = tuple(config.evals.splits) + (("zeroshot",) if config.evals.get("zeroshot") else ())
  if split not in names:
    raise ConfigError(f"config.evals.headline='{config.evals.headline}' names '{split}', "
                      f"which is none of the evaluations {', '.join(names)}")
  wandb_settings(config)  # a bad config.wandb fails here, before anything is written


def record_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes `config.json`, warning when a workdir is reused with a different config."""
  path = os.path.join(workdir, "config.json")
  current = json.loads(config.to_json())
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      previous = json.load(f)
    if previous != current:
      log.warning("%s was written by a run with a different config; training continues "
                  "from its checkpoints with the new one", path)
  write_json(path, current)


def save_tokenizer(exp: Experiment, workdir: str) -> None:
  """Writes the run's tokenizer as `<workdir>/tokenizer.json` (process 0), so a run that
  starts from this one (`config.init_from`) can read text the same way
  (`config.input.tokenizer = <workdir>`)."""
  if exp.preprocessor.text_encoder is None or jax.process_index() != 0:
    return
  path = os.path.join(workdir, TOKENIZER_FILE)
  exp.preprocessor.text_encoder.tokenizer.backend_tokenizer.save(path + ".tmp")
  os.replace(path + ".tmp", path)


def write_json(path: str, value: Any) -> None:
  """Writes JSON atomically (process 0 only)."""
  if jax.process_index() != 0:
    return
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def headline(config: ml_collections.ConfigDict, results: dict[str, dict[str, Any]]
             ) -> tuple[str, float]:
  split, _, metric = config.evals.headline.partition("/")
  return config.evals.headline, float(results[split][metric])


# The step's health flags (`step.make_train_step`): read by the loop, not logged as means.
NONFINITE_KEYS = ("nonfinite", "nonfinite_grads", "nonfinite_grad")


class NonFiniteError(RuntimeError):
  """A training step produced a non-finite loss or gradient; the message is one line and
  `report` has the details (also written to `<workdir>/nonfinite.json`)."""

  def __init__(self, message: str, report: dict[str, Any]):
    super().__init__(message)
    self.report = report


def nonfinite_report(step: int, metrics: dict[str, Any], grad_names: list[str],
                     last_good: int | None, directory: str) -> dict[str, Any]:
  """What went wrong at `step`: its loss terms, the first parameter (in path order)
  whose gradient is not finite, and the checkpoint training can continue from."""
  index = int(metrics["nonfinite_grad"])
  return dict(step=step,
              loss_terms={k: float(metrics[k]) for k in sorted(
                  metrics, key=lambda k: (k != "loss", k)) if k.endswith("loss")},
              first_nonfinite_gradient=grad_names[index] if index >= 0 else None,
              nonfinite_gradients=int(metrics["nonfinite_grads"]),
              last_good_checkpoint=None if last_good is None
              else os.path.join(directory, str(last_good)))


class EarlyStopping:
  """`config.early_stopping` = dict(metric="<split>/<name>", mode="max"|"min", patience,
  min_delta): after each periodic evaluation (`config.evals.every_steps`), a value better
  than the best by more than `min_delta` makes that step the best (its checkpoint is kept
  in `<workdir>/best/`, apart from the latest); `patience` evaluations in a row without one
  stop training. The state travels in every checkpoint, so a resumed run decides alike."""

  FIELDS = {"metric", "mode", "patience", "min_delta"}

  def __init__(self, config: ml_collections.ConfigDict):
    spec = config.get("early_stopping", None)
    self.enabled = bool(spec and spec.get("metric"))  # metric "" (the default): off
    if not self.enabled:
      return
    check_fields("config.early_stopping", spec.keys(), self.FIELDS)
    self.split, _, self.name = spec.metric.partition("/")
    if self.split not in config.evals.splits or not self.name:
      raise ConfigError(f"config.early_stopping.metric='{spec.metric}': expected "
                        f"'<split>/<metric>' with a split of config.evals.splits "
                        f"({', '.join(config.evals.splits)})")
    self.mode = spec.get("mode", "max")
    if self.mode not in ("max", "min"):
      raise ConfigError(f"config.early_stopping.mode='{self.mode}': expected max or min")
    self.patience = int(spec.get("patience", 3))
    self.min_delta = float(spec.get("min_delta", 0.0))
    every = config.evals.every_steps
    if self.patience < 1 or not every or every % config.log_every_steps:
      raise ConfigError(
          f"config.early_stopping needs patience >= 1 (got {self.patience}) and periodic "
          f"evaluations at log steps: config.evals.every_steps={every} must be a positive "
          f"multiple of config.log_every_steps={config.log_every_steps}")
    self.state = dict(best=None, best_step=None, bad_evals=0, stopped=False)

  def update(self, step: int, results: dict[str, dict[str, Any]]) -> bool:
    """Records an evaluation; True when it is the best so far."""
    try:
      value = float(results[self.split][self.name])
    except KeyError:
      raise ConfigError(f"config.early_stopping.metric: the '{self.split}' evaluation "
                        f"reports no '{self.name}' (it has {', '.join(results[self.split])})"
                        ) from None
    best = self.state["best"]
    sign = 1.0 if self.mode == "max" else -1.0
    improved = best is None or sign * (value - best) > self.min_delta
    if improved:
      self.state.update(best=value, best_step=step, bad_evals=0)
    else:
      self.state["bad_evals"] += 1
      self.state["stopped"] = self.state["bad_evals"] >= self.patience
    return improved


def train(config: ml_collections.ConfigDict, workdir: str, *,
          stop_after_steps: int | None = None,
          devices: list[jax.Device] | None = None) -> dict[str, Any]:
  """Trains (resuming if `workdir` has checkpoints), evaluates, writes `eval.json`.

  `stop_after_steps` ends this invocation early, at the first log step after that many
  steps and after a checkpoint, as a preemption would; running again continues.
  Returns the final evaluation, or {} if stopped early.

  A run is exactly resumable: the checkpoint holds the state, the data iterator's
  position and the loop's own state; randomness derives from (seed, step). A step with
  a non-finite loss or gradient raises NonFiniteError before anything after the last
  good checkpoint is saved, unless `config.skip_nonfinite_steps` skips its update.
  """
  validate(config)
  exp = build_experiment(config, devices)  # config mistakes surface here, before any write
  adversarial = adversarial_lib.from_config(config)  # config.adversarial; None while off
  augmenter = augment.from_config(config, exp.preprocessor)  # config.augment; None while off
  stopper = EarlyStopping(config)
  skip_nonfinite = bool(config.get("skip_nonfinite_steps", False))
  had_checkpoints = checkpoint_lib.has_steps(workdir)
  # Pretrained towers load (and may fail on shapes) before anything is written.
  state, setup = create_state(exp, initial_params(exp, pretrained=not had_checkpoints))
  os.makedirs(workdir, exist_ok=True)
  record_config(config, workdir)
  save_tokenizer(exp, workdir)
  checkpointer = Checkpointer(workdir, keep=config.checkpoint.keep)
  best_checkpointer = Checkpointer(workdir, keep=1, subdir="best") if stopper.enabled else None
  restored = checkpointer.restore_latest(state)
  if restored is None and had_checkpoints:  # none restored: start afresh, pretrained
    state, setup = create_state(exp)
  log.info("parameters: %s trainable / %s total (finetune mode %s); mesh %s: %s",
           f"{setup.num_trainable:,}", f"{setup.num_total:,}", exp.finetune.mode,
           dict(exp.mesh.shape), sharding_lib.describe(setup.shardings.params))

  batches = pipeline.train_iterator(
      pipeline.train_source(exp.dataset, config.data), exp.preprocessor,
      global_batch_size=config.input.batch_size, seed=config.seed,
      num_threads=config.input.num_threads, rows=exp.rows(config.input.batch_size),
      augmenter=augmenter)
  start = 0
  if restored is not None:
    start, state, data_state, meta = restored
    batches.set_state(data_state)
    if stopper.enabled and meta.get("early_stopping"):
      stopper.state = dict(meta["early_stopping"])
  # Records past the step training starts from go: those of an interrupted run after its
  # last checkpoint, or all of them when no checkpoint was complete (killed during the
  # first save), so a rerun never logs a step twice.
  writer = MetricWriter(workdir, resume_step=start, config=config)  # + hparams, W&B
  train_step = make_train_step(exp.model, exp.task, setup.tx, setup.schedule,
                               jax.random.fold_in(jax.random.key(config.seed), 1),
                               trainable=setup.trainable, model_params=setup.model_params,
                               accum_steps=accum_steps(config), mesh=exp.mesh,
                               skip_nonfinite=skip_nonfinite, adversarial=adversarial)
  step_fn = jit_train_step(train_step, setup.shardings, exp.batch_sharding, exp.replicated)
  evaluators = make_evaluators(exp, setup.shardings.params, setup.model_params)
  grad_names = gradient_names(state.params, setup.trainable)

  def meta() -> dict:
    return {"early_stopping": stopper.state} if stopper.enabled else {}

  total = config.total_steps
  pending: list[tuple[int, dict[str, jax.Array]]] = []
  window_start = time.perf_counter()
  bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True,
             mininterval=1.0 if sys.stderr.isatty() else 30.0,
             disable=jax.process_index() != 0)
  peak = profile.peak_flops(exp.mesh.devices.flat[0].device_kind,
                            config.get("peak_flops_per_device", None))
  loops = accum_steps(config) > 1 or scanned(config)
  report = None
  step = start
  stopped_early = stopper.enabled and stopper.state["stopped"]
  try:
    while step < total and not stopped_early:
      step += 1
      batch = exp.to_device(next(batches))
      if report is None:  # compile before step 1, and say what the step costs
        step_fn, report = profile.compile_ahead(step_fn, state, batch, loops=loops)
        log.info("%s", report.summary())
        write_json(os.path.join(workdir, "compile.json"),
                   dict(dataclasses.asdict(report), peak_bytes=report.peak_bytes,
                        peak_flops_per_device=peak, mesh=dict(exp.mesh.shape),
                        params_trainable=setup.num_trainable, params_total=setup.num_total))
        window_start = time.perf_counter()
      state, metrics = step_fn(state, batch)
      pending.append((step, metrics))
      bar.update(1)
      if step % config.log_every_steps == 0 or step == total:
        # Every save happens at a log step (validate), after this check of the window.
        fetched = jax.device_get(pending)
        elapsed = time.perf_counter() - window_start
        scalars = window_scalars(fetched, grad_names, skip_nonfinite, checkpointer, workdir)
        scalars["train/steps_per_sec"] = len(fetched) / elapsed
        utilisation = profile.mfu(report, elapsed / len(fetched), peak)
        if utilisation is not None:
          scalars["train/mfu"] = utilisation
        writer.write(step, scalars)
        if "train/loss" in scalars:
          bar.set_postfix(loss=f"{scalars['train/loss']:.4f}",
                          steps_per_s=f"{scalars['train/steps_per_sec']:.1f}")
        pending, window_start = [], time.perf_counter()
      if config.evals.every_steps and step % config.evals.every_steps == 0 and step < total:
        results = run_evaluators(evaluators, state.params)
        writer.write(step, scalar_metrics(results))
        if stopper.enabled:
          if stopper.update(step, results):
            best_checkpointer.save(step, state, batches.get_state(), meta())
          stopped_early = stopper.state["stopped"]
          if stopped_early:
            log.info("early stopping at step %d: %s has not improved on %.6g (step %d) for "
                     "%d evaluations", step, config.early_stopping.metric,
                     stopper.state["best"], stopper.state["best_step"], stopper.patience)
      # An early stop waits for a log step, so no logged average is cut in two.
      stopping = (stop_after_steps is not None and step - start >= stop_after_steps
                  and step % config.log_every_steps == 0)
      if (step % config.checkpoint.every_steps == 0 or step == total or stopping
          or stopped_early):
        checkpointer.save(step, state, batches.get_state(), meta())
      if stopping and step < total and not stopped_early:
        break
  finally:
    bar.close()
    checkpointer.close()  # waits for the saves in flight: the last good one is complete
    if best_checkpointer is not None:
      best_checkpointer.close()

  if step < total and not stopped_early:
    writer.close()
    log.info("stopped at step %d of %d; run the same command to continue", step, total)
    return {}
  results = run_evaluators(evaluators, state.params)
  if step > start:  # a finished run started again is only re-evaluated
    writer.write(step, scalar_metrics(results))
  writer.close(finished=True)
  extra = {"early_stopping": stopper.state} if stopper.enabled else {}
  write_json(os.path.join(workdir, "eval.json"), {"step": step, **extra, **results})
  return results


def gradient_names(params: Any, trainable: Any) -> list[str]:
  """Paths of the trainable parameters in the order of the gradient tree's leaves."""
  train_params = params if trainable is None else param_rules.split_params(params, trainable)[0]
  return ["/".join(str(getattr(k, "key", k)) for k in path)
          for path, _ in jax.tree_util.tree_flatten_with_path(train_params)[0]]


def window_scalars(fetched: list[tuple[int, dict[str, Any]]], grad_names: list[str],
                   skip_nonfinite: bool, checkpointer: Checkpointer, workdir: str
                   ) -> dict[str, float]:
  """Means of one log window's step metrics as `train/...` scalars.

  A step with a non-finite loss or gradient raises NonFiniteError (its report is also
  written to `<workdir>/nonfinite.json`) or, with `skip_nonfinite`, is left out of the
  means and counted in `train/skipped_steps` with a warning.
  """
  bad = [(s, m) for s, m in fetched if m["nonfinite"]]
  if bad and not skip_nonfinite:
    step, metrics = bad[0]
    checkpointer.wait()
    report = nonfinite_report(step, metrics, grad_names, checkpointer.latest_step(),
                              checkpointer.directory)
    write_json(os.path.join(workdir, "nonfinite.json"), report)
    terms = ", ".join(f"{k}={v:.4g}" for k, v in report["loss_terms"].items())
    raise NonFiniteError(
        f"non-finite training step {step}: {terms}; first non-finite gradient: "
        f"{report['first_nonfinite_gradient'] or 'none (the loss itself)'} "
        f"({report['nonfinite_gradients']} of {len(grad_names)} parameters); last good "
        f"checkpoint: {report['last_good_checkpoint'] or 'none'}; details in "
        f"{os.path.join(workdir, 'nonfinite.json')}; config.skip_nonfinite_steps=True skips "
        "such updates instead", report)
  for step, metrics in bad:
    index = int(metrics["nonfinite_grad"])
    log.warning("step %d: non-finite loss or gradient (first: %s); update skipped", step,
                grad_names[index] if index >= 0 else "the loss")
  good = [m for s, m in fetched if not m["nonfinite"]]
  keys = [k for k in fetched[0][1] if k not in NONFINITE_KEYS]
  scalars = {f"train/{k}": float(np.mean([m[k] for m in good])) for k in keys} if good else {}
  if skip_nonfinite:
    scalars["train/skipped_steps"] = float(len(bad))
  return scalars


def evaluate(config: ml_collections.ConfigDict, workdir: str, checkpoint: str = "latest"
             ) -> dict[str, Any]:
  """Evaluates a checkpoint of `workdir` on `config.evals.splits`: the newest one
  ("latest", results in `eval.json`) or early stopping's best ("best", `eval_best.json`)."""
  if checkpoint not in ("latest", "best"):
    raise ConfigError(f"--checkpoint={checkpoint}: expected latest or best")
  exp = build_experiment(config)
  subdir = "checkpoints" if checkpoint == "latest" else "best"
  checkpointer = Checkpointer(workdir, keep=config.checkpoint.keep, subdir=subdir)
  state, setup = create_state(exp, initial_params(exp, pretrained=False))
  restored = checkpointer.restore_latest(state)
  checkpointer.close()
  if restored is None:
    hint = " (written when config.early_stopping is set)" if checkpoint == "best" else ""
    raise ConfigError(f"--workdir {workdir}: no {checkpoint} checkpoint to evaluate in "
                      f"{checkpointer.directory}{hint}")
  step, state = restored[:2]
  results = run_evaluators(
      make_evaluators(exp, setup.shardings.params, setup.model_params), state.params)
  name = "eval.json" if checkpoint == "latest" else "eval_best.json"
  write_json(os.path.join(workdir, name), {"step": step, **results})
  return results
