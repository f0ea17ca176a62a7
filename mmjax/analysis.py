"""Looking inside a finished run: what the notebooks in `notebooks/` are built on.

  run = load_run("runs/shapes")              # config, experiment, restored parameters
  preds = predictions(run, "test")           # per example: label, prediction, probabilities
  shown = examples(run, "test", [0, 1, 2])   # chosen examples as the model reads them
  maps = attention_maps(run, shown.batch)    # question -> image attention of every fusion layer
  table = summarize(read_results("runs/sweep/results.csv"))  # a sweep's mean +- std

Everything here runs on one process (a notebook) with whatever devices it has; the
parameters are restored onto the run's own mesh (`config.mesh`), so a run trained on 8
devices is read back on 1 when its mesh says `("data", -1)`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from mmjax.config import ConfigError
from mmjax.data import pipeline
from mmjax.evaluate import metrics as metrics_lib
from mmjax.models import fusion as fusion_lib
from mmjax.models import lora
from mmjax.tasks import classification
from mmjax.train import checkpoint as checkpoint_lib
from mmjax.train import loop
from mmjax.train import sharding as sharding_lib
from mmjax.train.step import make_predict_step, tracing_mesh

# -- Runs ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
  """A trained run, ready to apply.

  Attributes:
    workdir: where it was read from (None for a run made in memory, e.g. in tests).
    exp: the experiment rebuilt from the run's config (dataset, preprocessor, model, task,
      mesh).
    params: the tree `exp.model.apply({"params": params}, ...)` takes: the restored
      parameters with any LoRA factors merged into their kernels.
    step: the training step of the restored checkpoint.
  """

  workdir: str | None
  exp: loop.Experiment
  params: Any
  step: int
  _compiled: dict = dataclasses.field(default_factory=dict, repr=False)

  @property
  def config(self) -> ml_collections.ConfigDict:
    return self.exp.config

  @property
  def main_head(self) -> str:
    """The head whose predictions are the task's (`config.task.main`)."""
    return classification_task(self).main

  def class_names(self, head: str | None = None) -> tuple[str, ...]:
    """Names of the classes of `head` (default: the main head) as the dataset's class-label
    feature names them, else "0", "1", ..."""
    task = classification_task(self)
    head = head or task.main
    names = classification.class_names(self.config, self.exp.dataset, [head])
    return names.get(head) or tuple(str(i) for i in range(task.num_classes[head]))


def run_config(workdir: str, data_dir: str | None = None) -> ml_collections.ConfigDict:
  """The config a run was trained with, rebuilt from `<workdir>/config.json`.

  JSON turned the config's tuples into lists; they become tuples again (config files use
  tuples throughout). `data_dir` replaces `config.data.data_dir` (the run may have been
  trained on another machine or in a temporary directory).
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise ConfigError(f"{workdir}: no config.json; expected the workdir of a training run "
                      "(`mmjax train` writes it there)")
  with open(path, encoding="utf-8") as f:
    config = ml_collections.ConfigDict(_lists_to_tuples(json.load(f)))
  if data_dir is not None:
    config.data.data_dir = data_dir
  return config


def _lists_to_tuples(value: Any) -> Any:
  if isinstance(value, dict):
    return {key: _lists_to_tuples(item) for key, item in value.items()}
  if isinstance(value, list):
    return tuple(_lists_to_tuples(item) for item in value)
  return value


def load_run(workdir: str, data_dir: str | None = None, *,
             devices: Sequence[jax.Device] | None = None) -> Run:
  """The run in `workdir` at its newest checkpoint.

  The experiment is rebuilt from `<workdir>/config.json` (`run_config`), and only the
  parameters of the newest checkpoint are read (`checkpoint.read_params`, on the host
  whatever mesh saved them), placed on the experiment's mesh and, in LoRA mode, merged
  (`lora.merge_lora`), as the train and predict steps' `model_params` does. Neither the
  random init nor the optimizer state is built: nothing to compile before the first
  forward pass.

  Args:
    workdir: a training run's workdir (config.json and checkpoints/).
    data_dir: where its dataset lives, if not where the run's config says.
    devices: the devices of the mesh (default: all).

  Raises:
    ConfigError (one line naming the workdir): no config.json, no checkpoint yet, or
    checkpointed parameters that do not fit the model the config builds.
  """
  config = run_config(workdir, data_dir)
  # A notebook reads a split or a few examples once: decoding whole splits into memory
  # first (`config.data.cache`, a training speed-up) would only cost time.
  config.data.cache = False
  directory = os.path.join(workdir, "checkpoints")
  steps = sorted(int(name) for name in (os.listdir(directory) if os.path.isdir(directory)
                                        else ()) if name.isdigit()
                 and os.path.isdir(os.path.join(directory, name, "state")))
  if not steps:
    raise ConfigError(f"{workdir}: no checkpoint in {os.path.abspath(directory)}; the run "
                      "has not saved one yet")
  exp = loop.build_experiment(config, None if devices is None else list(devices))
  saved = checkpoint_lib.read_params(os.path.join(directory, str(steps[-1])))
  if exp.finetune.mode == "lora":
    saved = lora.merge_lora(saved, alpha=exp.finetune.lora_alpha)
  _check_params(workdir, exp, saved)
  params = jax.device_put(saved, exp.param_shardings(saved))
  return Run(workdir, exp, params, steps[-1])


def _check_params(workdir: str, exp: loop.Experiment, params: Any) -> None:
  """The saved parameters have the paths and shapes of the model's (else a ConfigError)."""
  example = exp.example_batch()
  expected = traverse_util.flatten_dict(jax.eval_shape(
      lambda rng: exp.model.init({"params": rng}, example, train=False)["params"],
      jax.random.key(0)), sep="/")
  found = traverse_util.flatten_dict(params, sep="/")
  wrong = sorted(path for path in set(expected) | set(found)
                 if path not in expected or path not in found
                 or tuple(expected[path].shape) != tuple(found[path].shape))
  if wrong:
    raise ConfigError(f"{workdir}: the checkpoint's parameters do not fit the model its "
                      f"config.json builds ({len(wrong)} differ, first {wrong[0]})")


def classification_task(run: Run) -> classification.ClassificationTask:
  """The run's task, which must be classification (the one with class predictions)."""
  task = run.exp.task
  if not isinstance(task, classification.ClassificationTask):
    raise ConfigError(f"{run.workdir or 'the run'}: task '{run.config.task.name}' has no "
                      "class predictions; expected a classification run")
  return task


def _padded_to_device(run: Run, batch: dict[str, np.ndarray]) -> tuple[dict, int]:
  """(the batch padded to a multiple of the devices it is split over, on the mesh;
  its number of real rows)."""
  size = len(batch["example_mask"])
  parts = sharding_lib.batch_parts(run.exp.mesh)
  padded = pipeline.pad_batch({key: np.array(value) for key, value in batch.items()},
                              -(-size // parts) * parts)
  return run.exp.to_device(padded), size


def _params_sharding(run: Run) -> Any:
  return jax.tree.map(lambda x: x.sharding, run.params)


def _predict_fn(run: Run):
  if "predict" not in run._compiled:
    run._compiled["predict"] = make_predict_step(run.exp.model, run.exp.task,
                                                 _params_sharding(run), run.exp.batch_sharding)
  return run._compiled["predict"]


# -- Examples and predictions ----------------------------------------------------------------


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Model images (float in [-1, 1], see `mmjax.data.pipeline`) -> uint8 [0, 255]."""
  return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255
                 ).astype(np.uint8)


@dataclasses.dataclass
class Examples:
  """Chosen examples of a split, as the model reads them and as people read them.

  Attributes:
    split: the dataset split.
    index: [N] their positions in the split.
    batch: the model batch of them (inputs, targets, example_mask), N rows.
    texts: the raw text of each (the `text` field before tokenising), or None.
  """

  split: str
  index: np.ndarray
  batch: dict[str, np.ndarray]
  texts: list[str] | None

  @property
  def images(self) -> np.ndarray | None:
    """[N, H, W, C] uint8 as the model saw them (resized like its input), or None."""
    return to_uint8(self.batch["image"]) if "image" in self.batch else None


def examples(run: Run, split: str, indices: Iterable[int]) -> Examples:
  """The examples at `indices` of `split`, preprocessed as in evaluation."""
  indices = np.asarray(list(indices), np.int64)
  source = run.exp.dataset.source(split)
  if indices.size == 0 or indices.min() < 0 or indices.max() >= len(source):
    raise ConfigError(f"examples: indices must be non-empty and within the {len(source)} "
                      f"examples of split '{split}'")
  preprocessor = run.exp.preprocessor
  prepared = [preprocessor.example(source[int(i)]) for i in indices]
  texts = [e["text"] for e in prepared] if "text" in preprocessor.fields else None
  return Examples(split, indices, preprocessor.collate(prepared), texts)


@dataclasses.dataclass
class Predictions:
  """A classification run's predictions on a split, padding examples left out.

  Attributes:
    split: the dataset split.
    head: the main head (`config.task.main`).
    class_names: names of its classes.
    index: [N] each example's position in the split.
    label, prediction: [N] int, the main head's true and predicted class.
    probabilities: [N, C] the main head's softmax.
    heads: {head: {"label", "prediction", "probabilities"}} for every head with a target
      in the batches (the main one included).
    images: [N, H, W, C] uint8 as the model saw them, or None (no image input, or
      `inputs=False`).
    texts: the raw text of each example, or None.
  """

  split: str
  head: str
  class_names: tuple[str, ...]
  index: np.ndarray
  label: np.ndarray
  prediction: np.ndarray
  probabilities: np.ndarray
  heads: dict[str, dict[str, np.ndarray]]
  images: np.ndarray | None = None
  texts: list[str] | None = None

  @property
  def accuracy(self) -> float:
    return float(np.mean(self.label == self.prediction)) if len(self.label) else 0.0

  @property
  def misclassified(self) -> np.ndarray:
    """Rows (into these arrays, not split positions) where prediction != label."""
    return np.flatnonzero(self.label != self.prediction)

  def confusion_matrix(self) -> np.ndarray:
    """[C, C] counts; row = true class, column = predicted class."""
    return metrics_lib.confusion_matrix(self.label, self.prediction, len(self.class_names))


def predictions(run: Run, split: str, limit: int | None = None, *,
                inputs: bool = True) -> Predictions:
  """Every head's predictions on `split` (its first `limit` examples when given), read
  through the run's evaluation batches and predict step, so `accuracy` is the
  `<split>/accuracy` the run reported for the same checkpoint.

  `inputs` keeps the images and texts (all of them: mind the memory on big splits; or
  pass False and read the few to show with `examples`).
  """
  task = classification_task(run)
  if jax.process_count() > 1:
    raise ConfigError("analysis.predictions reads a split in one process; run it without "
                      "jax.distributed")
  source = run.exp.dataset.source(split)
  predict = _predict_fn(run)
  heads = [h for h in task.num_classes if h in run.exp.preprocessor.targets]
  rows: dict[str, dict[str, list]] = {h: {"label": [], "prediction": [], "probabilities": []}
                                      for h in heads}
  images, count = [], 0
  for batch in loop.eval_batches(run.exp, split)():
    keep = batch["example_mask"].copy()
    if limit is not None:
      keep &= np.cumsum(keep) <= limit - count
    if not keep.any():
      break
    outputs = jax.device_get(predict(run.params, run.exp.to_device(batch)))
    for head in heads:
      if head not in outputs:  # its tower is not in this run (a modality ablation)
        continue
      rows[head]["label"].append(batch[head][keep])
      rows[head]["prediction"].append(np.asarray(outputs[head]["prediction"])[keep])
      rows[head]["probabilities"].append(np.asarray(outputs[head]["probabilities"])[keep])
    if inputs and "image" in batch:
      images.append(to_uint8(batch["image"][keep]))
    count += int(keep.sum())
    if limit is not None and count >= limit:
      break
  out = {h: {k: np.concatenate(v) for k, v in r.items()} for h, r in rows.items() if r["label"]}
  index = np.arange(count)  # one process reads the split in order
  texts = None
  if inputs and "text" in run.exp.preprocessor.fields:
    field = run.exp.preprocessor.fields["text"]
    texts = [_text(source[int(i)][field]) for i in index]
  main = out[task.main]
  return Predictions(split, task.main, run.class_names(task.main), index, main["label"],
                     main["prediction"], main["probabilities"], out,
                     np.concatenate(images) if images else None, texts)


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# -- Attention -------------------------------------------------------------------------------


@dataclasses.dataclass
class AttentionMaps:
  """How much the text tokens attend to each image token, per fusion layer.

  Attributes:
    weights: {layer path: [B, heads, T_query, S_image]} attention weights (the layer's
      softmax over every key it attends to, restricted to the image tokens: rows sum to 1
      where the image tokens are all the keys, as in cross_attention and co_attention
      fusion of image and text; less under merged fusion, whose keys are every token).
      Image token 0 is the image [CLS], then one token per patch in row-major order.
    queries: [B][T_query] names of the query tokens: the question's WordPiece tokens
      ("[CLS]", "what", ...) and, under merged fusion, "[fused CLS]" first.
    query_mask: [B, T_query] True on real query tokens (not text padding).
    grid: (rows, columns) of the image patches.
    outputs: the task's predictions for the same batch ({head: {"prediction",
      "probabilities"}}).
  """

  weights: dict[str, np.ndarray]
  queries: list[list[str]]
  query_mask: np.ndarray
  grid: tuple[int, int]
  outputs: dict[str, dict[str, np.ndarray]]

  @property
  def layers(self) -> list[str]:
    return list(self.weights)

  def patches(self, layer: str, query: int = 0, head: int | None = None) -> np.ndarray:
    """[B, rows, columns]: the attention of query token `query` (0: the question's [CLS],
    or the fused [CLS] under merged fusion) on each image patch in `layer`, of one head
    or (None) the mean over heads. The image [CLS] is left out."""
    weights = self.weights[layer][:, :, query, 1:]
    weights = weights.mean(axis=1) if head is None else weights[:, head]
    return weights.reshape(len(weights), *self.grid)


# Where each fusion kind's text -> image attention lives (module paths under `fusion/`).
_ATTENTION_LAYERS = {
    "cross_attention": ("cross_encoder", "cross_attention"),
    "co_attention": (None, "text/cross_attention"),
    "merged": ("encoder", "self_attention"),
}


def attention_maps(run: Run, batch: dict[str, np.ndarray]) -> AttentionMaps:
  """Applies the model to `batch` (e.g. `examples(...).batch`) with its attention logits
  sown (`layers.MultiHeadAttention`) and returns the text -> image attention of every
  fusion layer.

  Fusion kinds: cross_attention (the text tokens query the image tokens; needs text as
  the query modality), co_attention (the text stream's cross-attention), merged (rows of
  the fused [CLS] and the text tokens, columns of the image tokens). concat and late
  fusion have no attention between modalities: ConfigError.
  """
  config = run.config
  kind = config.model.fusion.kind
  modalities = sorted(run.exp.model.towers)
  name = run.workdir or "the run"
  if kind not in _ATTENTION_LAYERS:
    raise ConfigError(f"{name}: fusion kind '{kind}' has no attention between modalities "
                      "(no text token attends to an image token); attention maps need "
                      f"{', '.join(_ATTENTION_LAYERS)}")
  if "image" not in modalities or "text" not in modalities:
    raise ConfigError(f"{name}: attention maps need the image and text towers; this run has "
                      f"{', '.join(modalities)}")
  query = "text"
  if kind == "cross_attention":
    query = config.model.fusion.get("query_modality", "text")
    if query not in modalities:
      query = next(m for m in (*fusion_lib.QUERY_PREFERENCE, *modalities) if m in modalities)
    if query != "text":
      raise ConfigError(f"{name}: cross_attention fusion queries with the {query} tokens, so "
                        "no text token attends to the image; attention maps need "
                        "query_modality='text'")

  size = len(batch["example_mask"])
  device_batch, _ = _padded_to_device(run, batch)
  logits, outputs = _attention_fn(run)(run.params, device_batch)
  logits = {path: np.asarray(value)[:size] for path, value in jax.device_get(logits).items()}
  outputs = jax.tree.map(lambda x: np.asarray(x)[:size], jax.device_get(outputs))

  lengths = _token_lengths(run, batch)
  text_ids = np.asarray(batch["text_ids"])
  text_mask = np.asarray(batch["text_mask"], bool)
  tokenizer = run.exp.preprocessor.text_encoder.tokenizer
  queries = [tokenizer.convert_ids_to_tokens([int(i) for i in ids]) for ids in text_ids]
  before = lambda m: sum(lengths[other] for other in modalities if other < m)  # noqa: E731
  if kind == "merged":  # keys and queries: [fused CLS] + every stream, sorted by modality
    image_start = 1 + before("image")
    text_start = 1 + before("text")
    rows = np.concatenate([[0], text_start + np.arange(lengths["text"])])
    queries = [["[fused CLS]", *q] for q in queries]
    query_mask = np.concatenate([np.ones((size, 1), bool), text_mask], axis=1)
  else:  # keys: the other streams, sorted by modality
    image_start = sum(lengths[m] for m in modalities if m != query and m < "image")
    rows = np.arange(lengths["text"])
    query_mask = text_mask
  columns = slice(image_start, image_start + lengths["image"])
  weights = {path: _softmax(value)[:, :, rows, columns] for path, value in logits.items()}
  return AttentionMaps(weights, queries, query_mask, _patch_grid(run, batch, lengths["image"]),
                       outputs)


def _attention_fn(run: Run):
  """Jitted (params, batch) -> ({layer path: logits [B, heads, T, S]}, task predictions)
  for the fusion layers that attend from text to image."""
  if "attention" in run._compiled:
    return run._compiled["attention"]
  model, task = run.exp.model, run.exp.task
  kind = run.config.model.fusion.kind
  encoder, layer = _ATTENTION_LAYERS[kind]

  def apply(params, batch):
    with tracing_mesh(run.exp.mesh):
      outputs, variables = model.apply({"params": params}, batch, train=False,
                                       mutable=["intermediates"])
    sown = traverse_util.flatten_dict(variables["intermediates"].get("fusion", {}), sep="/")
    found = {}
    for path, value in sown.items():
      if not path.endswith(f"{layer}/logits"):
        continue
      parts = path.split("/")
      if encoder is not None and parts[0] != encoder:
        continue
      array = value[0]
      if "scanned_blocks" in parts:  # nn.scan stacks the layers on a leading axis
        for i in range(array.shape[0]):
          found[f"fusion/{parts[0]}/block_{i}/{layer}"] = array[i]
      else:
        found["fusion/" + path.removesuffix("/logits")] = array
    return dict(sorted(found.items(), key=lambda item: _natural_key(item[0]))), \
        task.predict(outputs)

  run._compiled["attention"] = jax.jit(apply)
  return run._compiled["attention"]


def _natural_key(path: str) -> list:
  return [int(part) if part.isdigit() else part
          for piece in path.split("/") for part in piece.split("_")]


def _softmax(logits: np.ndarray) -> np.ndarray:
  logits = np.asarray(logits, np.float64)
  shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32)


def _token_lengths(run: Run, batch: dict[str, np.ndarray]) -> dict[str, int]:
  """{modality: tokens its tower gives} for `batch` (shapes only, nothing computed)."""
  one = {key: np.asarray(value)[:1] for key, value in batch.items()}
  towers = jax.eval_shape(
      lambda params, b: run.exp.model.apply({"params": params}, b, train=False,
                                            method="encode"), run.params, one)
  return {modality: tokens.tokens.shape[1] for modality, tokens in towers.items()}


def _patch_grid(run: Run, batch: dict[str, np.ndarray], image_tokens: int) -> tuple[int, int]:
  """(rows, columns) of the image patches: the image size over the tower's patch size, or
  a square when the tower does not say."""
  height, width = np.asarray(batch["image"]).shape[1:3]
  patch = getattr(run.exp.model.towers["image"], "patch_size", None)
  grid = (height // patch, width // patch) if patch else (math.isqrt(image_tokens - 1),) * 2
  if grid[0] * grid[1] != image_tokens - 1:
    raise ConfigError(f"{run.workdir or 'the run'}: {image_tokens} image tokens are not "
                      f"[CLS] + a {grid[0]}x{grid[1]} grid of patches")
  return grid


# -- Sweeps ----------------------------------------------------------------------------------

# The columns of a sweep's results.csv before its metric columns (`python -m experiments.sweep`).
RESULT_COLUMNS = ("sweep", "run", "seed", "status", "workdir", "minutes")


@dataclasses.dataclass
class Results:
  """A sweep's results.csv: one record per run (every value a string, "" when missing).

  Attributes:
    columns: the header, in file order.
    records: one dict per line.
    metrics: the metric columns (after RESULT_COLUMNS) with at least one number.
  """

  columns: list[str]
  records: list[dict[str, str]]
  metrics: list[str]

  def value(self, record: dict[str, str], column: str) -> float:
    """The number in `column`, NaN when the cell is empty or not a number."""
    return _number(record.get(column, ""))


def _number(text: str | None) -> float:
  try:
    return float(text) if text not in (None, "") else math.nan
  except ValueError:
    return math.nan


def read_results(path: str) -> Results:
  """Reads a sweep's results.csv (a file, or the sweep directory holding one)."""
  if os.path.isdir(path):
    path = os.path.join(path, "results.csv")
  if not os.path.exists(path):
    raise ConfigError(f"{path}: no such file; a sweep writes results.csv into its directory")
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    columns = list(reader.fieldnames or [])
    records = [dict(r) for r in reader]
  missing = [c for c in ("sweep", "run", "seed", "status") if c not in columns]
  if missing:
    raise ConfigError(f"{path}: no column {', '.join(missing)}; expected a header starting "
                      f"{','.join(RESULT_COLUMNS)}")
  metrics = [c for c in columns if c not in RESULT_COLUMNS and any(
      not math.isnan(_number(r.get(c))) for r in records)]
  return Results(columns, records, metrics)


@dataclasses.dataclass
class Summary:
  """One row of a sweep table: a (sub-sweep, row label) over its seeds.

  Attributes:
    sweep, run: the sub-sweep and the row label.
    seeds: the seeds of its finished runs.
    failed: how many of its runs failed (left out of every statistic).
    mean, std, count: {metric: value}: mean, sample standard deviation (ddof=1; NaN with
      one value) and number of finished runs that have the metric.
    values: {metric: [value per finished run that has it]}.
  """

  sweep: str
  run: str
  seeds: list[int]
  failed: int
  mean: dict[str, float]
  std: dict[str, float]
  count: dict[str, int]
  values: dict[str, list[float]]


def summarize(results: Results, metrics: Sequence[str] | None = None) -> list[Summary]:
  """Mean and std over seeds of each (sweep, run) row, rows in order of first appearance.

  `metrics`: the columns to summarise (default `results.metrics`: every numeric metric
  column); an unknown one is a ConfigError.
  """
  metrics = list(results.metrics if metrics is None else metrics)
  unknown = [m for m in metrics if m not in results.columns]
  if unknown:
    raise ConfigError(f"metrics: no column {', '.join(unknown)} in results.csv; it has "
                      f"{', '.join(results.metrics)}")
  groups: dict[tuple[str, str], list[dict[str, str]]] = {}
  for record in results.records:
    groups.setdefault((record["sweep"], record["run"]), []).append(record)
  rows = []
  for (sweep, run), records in groups.items():
    done = [r for r in records if r["status"] == "done"]
    values = {m: [v for v in (results.value(r, m) for r in done) if not math.isnan(v)]
              for m in metrics}
    rows.append(Summary(
        sweep, run, [int(_number(r["seed"])) for r in done], len(records) - len(done),
        {m: float(np.mean(v)) if v else math.nan for m, v in values.items()},
        {m: float(np.std(v, ddof=1)) if len(v) > 1 else math.nan for m, v in values.items()},
        {m: len(v) for m, v in values.items()}, values))
  return rows


def decimals(values: Iterable[float]) -> int:
  """Decimals to show numbers of this size: 3 below 10, 1 below 1,000, none above (the
  sweep runner's results.md rule), by the largest finite one."""
  largest = max((abs(v) for v in values if not math.isnan(v)), default=0.0)
  return 0 if largest >= 1000 else 1 if largest >= 10 else 3


def format_mean_std(mean: float, std: float, count: int, digits: int | None = None) -> str:
  """"0.912 ± 0.004" with `digits` decimals (default `decimals([mean])`) and thousands
  separators (parameter counts); the mean alone for one value; "—" for none."""
  if count == 0 or math.isnan(mean):
    return "—"
  digits = decimals([mean]) if digits is None else digits
  text = f"{mean:,.{digits}f}"
  return text if count < 2 else f"{text} ± {std:,.{digits}f}"


def format_table(rows: Sequence[Summary], metrics: Sequence[str]) -> str:
  """A plain-text table: one line per row (label, seeds, failed) and a `mean ± std`
  column per metric, each column with the decimals its largest mean needs."""
  digits = {m: decimals(row.mean[m] for row in rows) for m in metrics}
  header = ["run", "seeds", "failed", *metrics]
  lines = [[row.run, str(len(row.seeds)), str(row.failed),
            *(format_mean_std(row.mean[m], row.std[m], row.count[m], digits[m])
              for m in metrics)]
           for row in rows]
  widths = [max(len(cell) for cell in column) for column in zip(header, *lines, strict=True)]
  render = lambda cells: "  ".join(  # noqa: E731
      cell.ljust(w) if i == 0 else cell.rjust(w)
      for i, (cell, w) in enumerate(zip(cells, widths, strict=True)))
  return "\n".join([render(header), render(["-" * w for w in widths]), *map(render, lines)])
