"""Ensembles of trained runs: averaged logits, and model soups (averaged weights).

Logit ensembles, `mmjax eval --workdir A --workdir B ...` (`evaluate_ensemble`):
every member is rebuilt from its own `<workdir>/config.json` and its newest (or, with
`--checkpoint best`, early stopping's best) checkpoint, so members may differ in
architecture, size, fusion or fine-tuning mode (LoRA factors are merged per member).
They must share the task, the dataset, the heads and each head's classes: that is
checked before any parameter is read (a one-line ConfigError naming the workdir and
what differs). Every member reads the same evaluation split in split order, each
through its own preprocessor (its tokenizer, image size); per head, its logits
[N, C] are averaged over the members with equal weights, and the usual metrics are
computed from the averaged logits (softmax -> probabilities, argmax -> prediction),
beside each member's own metrics. The evaluation setup - `config.evals` (splits, batch
size, headline) and `config.data.data_dir` - is the first member's, or --config's when
one is given; results go to `eval_ensemble.json` in --out or the first workdir.

Model soups, `mmjax soup --workdir A --workdir B ... --out DIR` (`make_soup`): runs
whose parameter trees are identical (same paths, shapes and dtypes; else a one-line
error naming the first differing path) are averaged element-wise, in float64 and cast
back (a "uniform soup", Wortsman et al. 2022). Averaging is done on the parameters the
model applies, so LoRA runs are merged first (their ranks may differ); the soup's LoRA
factors are then the first member's `lora_a` and a zero `lora_b`, which merge to the
averaged kernels. With `greedy`, members are ranked by a held-out metric (e.g.
"validation/accuracy") and each is added only if the soup's value does not drop.
The soup is a new workdir that `mmjax eval`, `mmjax export` and `mmjax.analysis` read
like any run: the first member's config.json and tokenizer, one checkpoint written by
the Checkpointer (atomic) at the first member's step, with a fresh optimizer state and
the first member's data position, and `soup.json` (members, their held-out values and
which were kept). A soup helps members fine-tuned from one shared start (a pretrained
or base run, `config.init_from`); independently initialised runs sit in different
basins and their average is usually no better than chance.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from mmjax.analysis import run_config
from mmjax.config import ConfigError
from mmjax.data.tokenizer import TOKENIZER_FILE
from mmjax.evaluate import evaluators as evaluators_lib
from mmjax.models import lora
from mmjax.tasks.classification import ClassificationTask
from mmjax.train import checkpoint as checkpoint_lib
from mmjax.train import loop, param_rules
from mmjax.train.checkpoint import Checkpointer
from mmjax.train.step import make_predict_step, tracing_mesh

log = logging.getLogger(__name__)

CHECKPOINTS = {"latest": "checkpoints", "best": "best"}  # --checkpoint -> subdirectory


# -- Members ---------------------------------------------------------------------------------


def member_config(workdir: str, setup: ml_collections.ConfigDict | None = None
                  ) -> ml_collections.ConfigDict:
  """`<workdir>/config.json`, with `setup`'s `evals` and `data.data_dir` when given (the
  evaluation setup every member shares)."""
  config = run_config(workdir)
  if setup is not None:
    config.evals = ml_collections.ConfigDict(setup.evals.to_dict())
    config.data.data_dir = setup.data.get("data_dir", None)
  return config


def state_dir(workdir: str, checkpoint: str = "latest") -> tuple[str, int]:
  """(the saved TrainState of `workdir`'s newest `checkpoint` ("latest" or "best"), its
  step)."""
  if checkpoint not in CHECKPOINTS:
    raise ConfigError(f"--checkpoint={checkpoint}: expected latest or best")
  try:
    directory = checkpoint_lib.state_directory(os.path.join(workdir, CHECKPOINTS[checkpoint]))
  except ConfigError:
    hint = " (written when config.early_stopping is set)" if checkpoint == "best" else ""
    raise ConfigError(f"--workdir {workdir}: no {checkpoint} checkpoint in "
                      f"{os.path.join(workdir, CHECKPOINTS[checkpoint])}{hint}") from None
  return directory, int(os.path.basename(os.path.dirname(directory)))


def first_difference(expected: Any, found: Any, *, dtypes: bool = False) -> str | None:
  """The first parameter path (in sorted order) where two trees of arrays (or shapes)
  differ, with how; None when the paths and shapes (and with `dtypes` dtypes) agree."""
  want = traverse_util.flatten_dict(expected, sep="/")
  have = traverse_util.flatten_dict(found, sep="/")
  for path in sorted(set(want) | set(have)):
    if path not in have:
      return f"{path} is missing"
    if path not in want:
      return f"{path} is extra"
    if tuple(want[path].shape) != tuple(have[path].shape):
      return f"{path} has shape {tuple(have[path].shape)}, not {tuple(want[path].shape)}"
    if dtypes and np.dtype(want[path].dtype) != np.dtype(have[path].dtype):
      return f"{path} has dtype {np.dtype(have[path].dtype)}, not {np.dtype(want[path].dtype)}"
  return None


def check_fits(workdir: str, exp: loop.Experiment, params: Any) -> None:
  """The saved state parameters have the paths and shapes of the state the config
  builds (random init plus any LoRA factors), else a one-line ConfigError."""
  expected = jax.eval_shape(lambda: loop.initial_params(exp, pretrained=False))
  difference = first_difference(expected, params)
  if difference:
    raise ConfigError(f"--workdir {workdir}: the checkpoint does not fit the model its "
                      f"config.json builds: {difference}")


@dataclasses.dataclass
class Member:
  """One run of an ensemble.

  Attributes:
    workdir: where it was read from.
    exp: the experiment rebuilt from its config.json (with the shared evaluation setup).
    step: the step of the restored checkpoint.
    params: its state parameters (LoRA factors unmerged) on its mesh; None until loaded.
  """

  workdir: str
  exp: loop.Experiment
  step: int = 0
  params: Any = None
  _logits: Any = dataclasses.field(default=None, repr=False)

  def load(self, checkpoint: str = "latest") -> Member:
    directory, self.step = state_dir(self.workdir, checkpoint)
    saved = checkpoint_lib.read_params(os.path.dirname(directory))
    check_fits(self.workdir, self.exp, saved)
    self.params = jax.device_put(saved, self.exp.param_shardings(saved))
    return self

  def logits_fn(self) -> Callable[[Any, dict], dict[str, jax.Array]]:
    """(params, batch) -> {head: logits [B, C]} for the task's heads, jitted on the mesh."""
    if self._logits is None:
      exp, model_params = self.exp, loop.model_params_fn(self.exp)
      heads = tuple(exp.task.num_classes)

      def logits(params, batch):
        with tracing_mesh(exp.mesh):
          outputs = exp.model.apply({"params": model_params(params)}, batch, train=False)
        return {head: outputs[head] for head in heads if head in outputs}

      self._logits = jax.jit(logits, in_shardings=(self.exp.param_shardings(self.params),
                                                   exp.batch_sharding),
                             out_shardings=exp.batch_sharding)
    return self._logits

  def evaluator(self) -> evaluators_lib.ClassificationEvaluator:
    """The task's evaluator, used for its `metrics` of given predictions."""
    return self.exp.task.evaluator(self.exp, None, None)

  def outputs(self, split: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """({target or group key: [N]}, {head: logits [N, C]}) of every real example of
    `split`, in split order."""
    evaluator = self.evaluator()
    keys = [*evaluator.num_classes, *evaluator.groups]
    columns, logits = [], []
    for batch, out in evaluators_lib.real_outputs(
        self.logits_fn(), self.params, loop.eval_batches(self.exp, split)(),
        self.exp.to_device, keys):
      columns.append(batch)
      logits.append(out)
    return evaluators_lib.concatenate(columns), evaluators_lib.concatenate(logits)


def open_members(workdirs: Sequence[str], setup: ml_collections.ConfigDict | None = None
                 ) -> list[Member]:
  """The members' experiments (no parameters read yet), checked to form an ensemble."""
  if not workdirs:
    raise ConfigError("--workdir: an ensemble needs at least one workdir")
  if len(set(map(os.path.abspath, workdirs))) != len(workdirs):
    raise ConfigError(f"--workdir: a workdir is given twice ({', '.join(workdirs)})")
  members = []
  for workdir in workdirs:
    config = member_config(workdir, setup)
    config.data.cache = False  # one pass over the evaluation splits: nothing to reuse
    exp = loop.build_experiment(config)
    if not isinstance(exp.task, ClassificationTask):
      raise ConfigError(f"--workdir {workdir}: ensembles average class logits; task "
                        f"'{config.task.name}' has none (expected classification or "
                        "multiple_choice)")
    members.append(Member(workdir, exp))
  check_compatible(members)
  return members


def check_compatible(members: Sequence[Member]) -> None:
  """Members share the task, dataset, heads, class counts and label features (else a
  one-line ConfigError naming the workdir and the first mismatch)."""
  def traits(exp: loop.Experiment) -> list[tuple[str, Any]]:
    return [("task", exp.config.task.name), ("dataset", exp.config.data.name),
            ("main head", exp.task.main), ("heads and class counts", exp.task.num_classes),
            ("label features", {h: exp.config.data.fields.get(h) for h in exp.task.num_classes})]

  first = members[0]
  for member in members[1:]:
    for (what, ours), (_, theirs) in zip(traits(first.exp), traits(member.exp), strict=True):
      if ours != theirs:
        raise ConfigError(f"--workdir {member.workdir}: {what} {theirs!r} differs from "
                          f"--workdir {first.workdir}'s {ours!r}; ensemble members must "
                          "share the task, dataset, heads and class counts")


# -- Logit ensembles -------------------------------------------------------------------------


def predictions(task: ClassificationTask, columns: dict[str, np.ndarray],
                logits: dict[str, np.ndarray], groups: Sequence[str] = ()
                ) -> dict[str, Any]:
  """What `ClassificationEvaluator.metrics` reads: {head: {"label", "prediction" [N],
  "probabilities" [N, C]}} from logits (the task's own `predict`), and {"groups"}."""
  predicted = jax.device_get(task.predict({h: jnp.asarray(v) for h, v in logits.items()}))
  out: dict[str, Any] = {head: {"label": columns[head],
                                "prediction": np.asarray(p["prediction"]),
                                "probabilities": np.asarray(p["probabilities"])}
                         for head, p in predicted.items()}
  if groups:
    out["groups"] = {key: columns[key] for key in groups}
  return out


def mean_logits(logits: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """{head: mean over members of logits [N, C]} (float32, the mean taken in float64)."""
  return {head: np.mean([np.asarray(member[head], np.float64) for member in logits],
                        axis=0).astype(np.float32) for head in logits[0]}


def split_predictions(members: Sequence[Member], split: str
                      ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """(the ensemble's predictions on `split`, each member's), as `predictions` returns.

  The ensemble covers the heads every member has (a member trained without a modality
  lacks the heads that read it), which must include the main head.
  """
  first = members[0]
  outputs = [member.outputs(split) for member in members]  # (columns, logits) of each
  heads = [h for h in first.exp.task.num_classes if all(h in lg for _, lg in outputs)]
  if first.exp.task.main not in heads:
    lacking = next(m for m, (_, lg) in zip(members, outputs, strict=True)
                   if first.exp.task.main not in lg)
    raise ConfigError(f"--workdir {lacking.workdir}: its model has no '{first.exp.task.main}' "
                      "head (its modalities leave it out); ensemble members need the main head")
  for member, (columns, _) in zip(members[1:], outputs[1:], strict=True):
    for head in heads:
      if not np.array_equal(columns[head], outputs[0][0][head]):
        raise ConfigError(f"--workdir {member.workdir}: its '{split}' examples differ from "
                          f"--workdir {first.workdir}'s (head '{head}' labels disagree); "
                          "members must read the same dataset")
  singles = [predictions(m.exp.task, columns, logits, tuple(m.evaluator().groups))
             for m, (columns, logits) in zip(members, outputs, strict=True)]
  mean = mean_logits([{h: logits[h] for h in heads} for _, logits in outputs])
  return (predictions(first.exp.task, outputs[0][0], mean, tuple(first.evaluator().groups)),
          singles)


def evaluate_ensemble(workdirs: Sequence[str], setup: ml_collections.ConfigDict | None = None,
                      *, checkpoint: str = "latest", out_dir: str | None = None
                      ) -> dict[str, Any]:
  """Evaluates the mean-of-logits ensemble of `workdirs` and each member on the splits of
  the evaluation setup (`setup`'s, else the first member's `config.evals`); see
  `evaluate_members` for what it returns and writes."""
  members = open_members(workdirs, setup)
  for member in members:
    member.load(checkpoint)
  return evaluate_members(members, out_dir or workdirs[0], checkpoint)


def evaluate_members(members: Sequence[Member], out_dir: str, checkpoint: str = "latest"
                     ) -> dict[str, Any]:
  """The ensemble's and each member's metrics on the first member's `config.evals.splits`.

  Returns (and writes to `<out_dir>/eval_ensemble.json`, process 0):
    {"members": [{"workdir", "step"}], "checkpoint", "method", "headline",
     "ensemble": {split: metrics}, "single": [{split: metrics} per member],
     "summary": {"<split>/<metric>": {"members": [...], "ensemble"}} for the scalar
     metrics, "path": the file}.
  """
  first = members[0]
  ensemble: dict[str, Any] = {}
  single: list[dict[str, Any]] = [{} for _ in members]
  for split in first.exp.config.evals.splits:
    combined, separate = split_predictions(members, split)
    ensemble[split] = dict(first.evaluator().metrics(combined))
    for i, (member, preds) in enumerate(zip(members, separate, strict=True)):
      single[i][split] = dict(member.evaluator().metrics(preds))
  summary = {f"{split}/{name}": {"members": [s[split][name] for s in single],
                                 "ensemble": value}
             for split, metrics in ensemble.items() for name, value in metrics.items()
             if isinstance(value, (int, float)) and all(name in s[split] for s in single)}
  report = dict(members=[dict(workdir=os.path.abspath(m.workdir), step=m.step)
                         for m in members],
                checkpoint=checkpoint, method="mean of logits",
                headline=first.exp.config.evals.headline, ensemble=ensemble, single=single,
                summary=summary)
  os.makedirs(out_dir, exist_ok=True)
  report["path"] = os.path.abspath(os.path.join(out_dir, "eval_ensemble.json"))
  loop.write_json(report["path"], report)
  return report


# -- Model soups -----------------------------------------------------------------------------


def average_params(trees: Sequence[Any], names: Sequence[str]) -> Any:
  """The element-wise mean of parameter trees with identical paths, shapes and dtypes
  (taken in float64, cast back to each leaf's dtype); a one-line ConfigError naming the
  first differing path otherwise. Non-float leaves must be equal and are kept."""
  for tree, name in zip(trees[1:], names[1:], strict=True):
    difference = first_difference(trees[0], tree, dtypes=True)
    if difference:
      raise ConfigError(f"mmjax soup: --workdir {name}'s parameters differ from --workdir "
                        f"{names[0]}'s ({difference}); a soup averages runs of one "
                        "architecture")
  flat = [traverse_util.flatten_dict(jax.device_get(tree), sep="/") for tree in trees]
  mean = {}
  for path, leaf in flat[0].items():
    leaf = np.asarray(leaf)
    if jnp.issubdtype(leaf.dtype, jnp.floating):  # bfloat16 included
      total = sum(np.asarray(f[path], np.float64) for f in flat)
      mean[path] = (total / len(flat)).astype(leaf.dtype)
    else:
      for f, name in zip(flat[1:], names[1:], strict=True):
        if not np.array_equal(np.asarray(f[path]), leaf):
          raise ConfigError(f"mmjax soup: --workdir {name}'s integer parameter {path} "
                            f"differs from --workdir {names[0]}'s")
      mean[path] = leaf
  return traverse_util.unflatten_dict(mean, sep="/")


def unmerge_like(state_params: Any, model_params: Any) -> Any:
  """State parameters shaped like `state_params` whose merge (`lora.merge_lora`) is
  `model_params`: kernels from `model_params`, `lora_a` kept, `lora_b` zero."""
  flat = traverse_util.flatten_dict(jax.device_get(state_params))
  merged = traverse_util.flatten_dict(model_params)
  for path, leaf in flat.items():
    if path[-1] == lora.LORA_B:
      flat[path] = np.zeros_like(np.asarray(leaf))
    elif path[-1] != lora.LORA_A:
      flat[path] = merged[path]
  return traverse_util.unflatten_dict(flat)


def read_data_state(workdir: str, checkpoint: str, step: int) -> dict:
  """The data iterator's position saved with `workdir`'s checkpoint `step`."""
  reader = Checkpointer(workdir, keep=1, subdir=CHECKPOINTS[checkpoint])
  try:
    return dict(reader.manager.restore(step, args=ocp.args.Composite(
        data=ocp.args.JsonRestore()))["data"])
  finally:
    reader.close()


def make_soup(workdirs: Sequence[str], out_dir: str, *,
              setup: ml_collections.ConfigDict | None = None, checkpoint: str = "latest",
              greedy: bool = False, metric: str = "validation/accuracy") -> dict[str, Any]:
  """Writes the soup of `workdirs` as a new workdir `out_dir` (see the module docstring).

  Args:
    workdirs: runs with identical parameter trees (after merging LoRA factors).
    out_dir: the new workdir; it must not hold checkpoints yet.
    setup: a config whose `evals` and `data.data_dir` the soup's config takes.
    checkpoint: "latest" or "best" (early stopping's) of every member.
    greedy: rank the members by `metric` and add each only if the soup's `metric` does
      not drop (uniform soup of every member otherwise).
    metric: "<split>/<metric name>" (any split of the dataset, e.g. "validation" or
      "train[:2000]"), higher is better; used with `greedy`.

  Returns (and writes to `<out_dir>/soup.json`) {"members": [{"workdir", "step", and with
  greedy "metric" (its own value), "kept"}], "method", "step", "metric", "soup_metric"}.
  """
  if not workdirs:
    raise ConfigError("mmjax soup: give the runs to average with --workdir A --workdir B")
  if os.path.abspath(out_dir) in map(os.path.abspath, workdirs):
    raise ConfigError(f"--out {out_dir}: is one of the --workdir runs; the soup is a new "
                      "workdir")
  if checkpoint_lib.has_steps(out_dir):
    raise ConfigError(f"--out {out_dir}: already holds checkpoints; choose a new directory")
  configs = [member_config(w, setup) for w in workdirs]
  exp = loop.build_experiment(configs[0])
  for config, workdir in zip(configs[1:], workdirs[1:], strict=True):
    if config.model.to_dict() != configs[0].model.to_dict():
      log.warning("mmjax soup: --workdir %s's config.model differs from --workdir %s's; "
                  "the soup uses the first's", workdir, workdirs[0])
  states, model_trees, steps = [], [], []
  for config, workdir in zip(configs, workdirs, strict=True):
    directory, step = state_dir(workdir, checkpoint)
    saved = checkpoint_lib.read_params(os.path.dirname(directory))
    finetune = param_rules.Finetune.from_config(config)
    states.append(saved)
    model_trees.append(jax.device_get(lora.merge_lora(saved, alpha=finetune.lora_alpha))
                       if finetune.mode == "lora" else saved)
    steps.append(step)
  check_fits(workdirs[0], exp, states[0])
  average_params(model_trees, workdirs)  # refuses mismatched trees before any evaluation

  members = [dict(workdir=os.path.abspath(w), step=s) for w, s in zip(workdirs, steps,
                                                                       strict=True)]
  report: dict[str, Any] = dict(members=members, checkpoint=checkpoint,
                                method="greedy" if greedy else "uniform")
  chosen = list(range(len(workdirs)))
  if greedy:
    score = heldout_scorer(exp, metric)
    values = [score(tree) for tree in model_trees]
    order = sorted(range(len(workdirs)), key=lambda i: -values[i])
    chosen, best = [order[0]], values[order[0]]
    for i in order[1:]:
      value = score(average_params([model_trees[j] for j in chosen + [i]],
                                   [workdirs[j] for j in chosen + [i]]))
      log.info("greedy soup: adding %s gives %s = %.4f (soup so far %.4f)", workdirs[i],
               metric, value, best)
      if value >= best:
        chosen, best = chosen + [i], value
    for i, member in enumerate(members):
      member.update(metric=values[i], kept=i in chosen)
    report.update(metric=metric, soup_metric=best)
  soup = average_params([model_trees[i] for i in chosen], [workdirs[i] for i in chosen])
  state_params = unmerge_like(states[0], soup) if exp.finetune.mode == "lora" else soup

  state, _ = loop.create_state(exp, state_params)
  step = steps[0]
  state = state.replace(step=jax.device_put(jnp.asarray(step, jnp.int32), exp.replicated))
  data_state = read_data_state(workdirs[0], checkpoint, step)
  os.makedirs(out_dir, exist_ok=True)
  loop.record_config(configs[0], out_dir)
  tokenizer = os.path.join(workdirs[0], TOKENIZER_FILE)
  if os.path.isfile(tokenizer) and jax.process_index() == 0:
    shutil.copyfile(tokenizer, os.path.join(out_dir, TOKENIZER_FILE))
  report["step"] = step
  writer = Checkpointer(out_dir, keep=1, async_save=False)
  try:
    # From the host: orbax would otherwise slice every replicated array per device, one
    # compiled slice per shape (seconds on a CPU); restoring reshards it as it does any.
    writer.save(step, jax.device_get(state), data_state, {"soup": report})
  finally:
    writer.close()
  loop.write_json(os.path.join(out_dir, "soup.json"), report)
  return report


def heldout_scorer(exp: loop.Experiment, metric: str) -> Callable[[Any], float]:
  """model params (numpy, LoRA merged) -> `metric` ("<split>/<name>") on that split."""
  split, _, name = metric.partition("/")
  if not name:
    raise ConfigError(f"--greedy_metric={metric}: expected '<split>/<metric>', e.g. "
                      "validation/accuracy")
  exp.dataset.source(split)  # an unknown split fails here
  shapes = jax.eval_shape(lambda: exp.model.init(
      {"params": jax.random.key(0)}, {k: jnp.asarray(v) for k, v in
                                      exp.example_batch().items()}, train=False)["params"])
  shardings = exp.param_shardings(shapes)
  predict = make_predict_step(exp.model, exp.task, shardings, exp.batch_sharding)
  evaluator = exp.task.evaluator(exp, predict, loop.eval_batches(exp, split))

  def score(params: Any) -> float:
    results = dict(evaluator.run(jax.device_put(params, shardings)))
    if name not in results:
      raise ConfigError(f"--greedy_metric={metric}: the '{split}' evaluation reports no "
                        f"'{name}' (it has {', '.join(results)})")
    return float(results[name])

  return score
