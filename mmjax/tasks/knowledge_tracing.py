"""Knowledge tracing: predict whether a student answers the next exercise right, from the
exercises and responses before it; and recommend the next exercise from those predictions.

Batches (numpy, from `TracingPreprocessor`):

  exercise, skill, response  int32   [B, L]  0 after each student's length
  p_correct                  float32 [B, L]  the simulator's true success probability
  seq_mask                   bool    [B, L]  True on real steps (`arange(L) < length`)
  example_mask               bool    [B]     False on padding students of the last eval batch

The model (`mmjax/models/tracing.py`) gives logits [B, L]; the loss is the binary
cross-entropy of response t against logit t over real steps. Evaluation pools every real
step of a split and reports the model's ROC AUC beside the ceiling (`oracle_auc`: the
true probabilities `p_correct`, which know each student's hidden state) and two non-neural
baselines that the model should beat (`baseline_auc`: each exercise's mean correctness in
the training split, as DKT papers compare against; `baseline_student_auc`: that plus the
student's shrunk mean residual over earlier steps).

`recommend` picks, for one student's history, the candidate exercise whose predicted
success probability is closest to a target (0.7: hard enough to learn from, likely
enough to succeed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mmjax.config import ConfigError
from mmjax.data import pipeline
from mmjax.evaluate.evaluators import real_outputs
from mmjax.evaluate.metrics import roc_auc
from mmjax.models.tracing import KnowledgeTracer, build_tracer

SEQUENCE_KEYS = ("exercise", "skill", "response")
FEATURES = SEQUENCE_KEYS + ("p_correct", "length")
METADATA = ("num_exercises", "num_skills")
# Pseudo-count of the per-student baseline: its residual mean is sum / (count + this).
STUDENT_PRIOR = 5.0


class TracingPreprocessor:
  """Dataset examples (one student each) -> the batches of the module docstring."""

  text_encoder = None  # no text: the loop saves no tokenizer
  batch_keys = SEQUENCE_KEYS + ("p_correct", "seq_mask", "example_mask")

  def example(self, raw: dict) -> dict[str, np.ndarray]:
    out = {key: np.asarray(raw[key], np.int32) for key in SEQUENCE_KEYS}
    out["p_correct"] = np.asarray(raw["p_correct"], np.float32)
    out["seq_mask"] = np.arange(out["exercise"].shape[0]) < int(raw["length"])
    return out

  def collate(self, examples: Sequence[dict]) -> dict[str, np.ndarray]:
    batch = {key: np.stack([e[key] for e in examples]) for key in examples[0]}
    batch["example_mask"] = np.ones(len(examples), bool)
    return batch


def dataset_spec(dataset: pipeline.Dataset) -> dict[str, int]:
  """{"num_exercises", "num_skills", "max_length"} of a knowledge-tracing dataset
  (`edu_tracing`); ConfigError when it lacks the features or metadata."""
  features = dataset.builder.info.features
  missing = [name for name in FEATURES if name not in features]
  metadata = dataset.builder.info.metadata or {}
  missing += [f"metadata {name}" for name in METADATA if name not in metadata]
  if missing:
    raise ConfigError(f"config.data.name: dataset '{dataset.name}' lacks {', '.join(missing)};"
                      " knowledge tracing needs per-step exercise, skill, response, p_correct,"
                      " a length and metadata num_exercises, num_skills (e.g. edu_tracing)")
  return dict(num_exercises=int(metadata["num_exercises"]),
              num_skills=int(metadata["num_skills"]),
              max_length=int(features["exercise"].shape[0]))


@dataclasses.dataclass(frozen=True)
class KnowledgeTracingTask:
  """Binary cross-entropy of each next response; AUC against the oracle and baselines.

  Attributes:
    early_steps: evaluation also reports AUCs over steps < early_steps (`early/...`) and
      the rest (`late/...`), where a model knows little and much about the student.
  """

  modalities: ClassVar[tuple[str, ...]] = ("interactions",)
  early_steps: int = 20

  def build(self, config: ml_collections.ConfigDict, dataset: pipeline.Dataset,
            modalities: tuple[str, ...], finetune: Any
            ) -> tuple[TracingPreprocessor, KnowledgeTracer]:
    """(preprocessor, KnowledgeTracer of `config.model`) for the dataset's exercises."""
    del modalities
    spec = dataset_spec(dataset)
    if config.model.get("max_len", 0) < spec["max_length"]:
      raise ConfigError(f"config.model.max_len={config.model.get('max_len', None)} is shorter "
                        f"than the {spec['max_length']} steps of dataset '{dataset.name}'")
    model = build_tracer(config.model, num_exercises=spec["num_exercises"],
                         num_skills=spec["num_skills"], adapter_dim=finetune.model_adapter_dim)
    return TracingPreprocessor(), model

  def loss(self, outputs: dict[str, jax.Array], batch: dict[str, jax.Array]
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean binary cross-entropy over real steps of real students, and accuracy (at 0.5)."""
    logits = outputs["logits"]
    labels = batch["response"].astype(jnp.float32)
    weights = (batch["seq_mask"] & batch["example_mask"][:, None]).astype(jnp.float32)
    count = jnp.maximum(weights.sum(), 1.0)
    loss = (optax.sigmoid_binary_cross_entropy(logits, labels) * weights).sum() / count
    accuracy = (((logits > 0) == (labels > 0.5)) * weights).sum() / count
    return loss, {"loss": loss, "accuracy": accuracy}

  def predict(self, outputs: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """{"probability": [B, L]}: the predicted chance that each response is right; the
    targets (`response`, `p_correct`, `seq_mask`) are read from the batch."""
    return {"probability": jax.nn.sigmoid(outputs["logits"])}

  def evaluator(self, exp: Any, predict_fn: Any, batches: Any) -> TracingEvaluator:
    spec = dataset_spec(exp.dataset)
    means = exercise_mean_correct(exp.dataset.source(exp.config.data.train_split),
                                  spec["num_exercises"])
    return TracingEvaluator(predict_fn, batches, exp.to_device, means, self.early_steps)


def exercise_mean_correct(source: Sequence[dict], num_exercises: int) -> np.ndarray:
  """[num_exercises] float64: the share of right responses to each exercise over the real
  steps of `source` (the training split); the overall share for an unseen exercise."""
  right = np.zeros(num_exercises)
  count = np.zeros(num_exercises)
  for index in range(len(source)):
    raw = source[index]
    length = int(raw["length"])
    exercise = np.asarray(raw["exercise"])[:length]
    right += np.bincount(exercise, np.asarray(raw["response"])[:length], num_exercises)
    count += np.bincount(exercise, minlength=num_exercises)
  overall = right.sum() / max(count.sum(), 1.0)
  return np.where(count > 0, right / np.maximum(count, 1.0), overall)


def student_baseline(exercise: np.ndarray, response: np.ndarray, seq_mask: np.ndarray,
                     means: np.ndarray, prior: float = STUDENT_PRIOR) -> np.ndarray:
  """[N, L] predictions: the exercise's mean correctness plus the student's mean residual
  (response - exercise mean) over earlier real steps, shrunk by `prior` pseudo-steps of 0;
  clipped to [0, 1]."""
  expected = means[exercise]
  residual = np.where(seq_mask, response - expected, 0.0)
  before = np.cumsum(residual, axis=1) - residual  # sum over steps < t
  steps = np.cumsum(seq_mask, axis=1) - seq_mask
  return np.clip(expected + before / (steps + prior), 0.0, 1.0)


class TracingEvaluator:
  """AUC, accuracy and log loss of the predictions over every real step of one split,
  beside the oracle (`p_correct`) and the baselines (module docstring)."""

  def __init__(self, predict_fn: Callable[[Any, dict], dict], batches: Callable[[], Iterable],
               to_device: Callable[[dict], dict], exercise_means: np.ndarray,
               early_steps: int = 20):
    self.predict_fn = predict_fn
    self.batches = batches
    self.to_device = to_device
    self.exercise_means = exercise_means
    self.early_steps = early_steps

  def collect(self, params: Any) -> dict[str, np.ndarray]:
    """{"probability", "exercise", "response", "p_correct", "seq_mask"} [N, L] for the
    split's real students."""
    keys = ("exercise", "response", "p_correct", "seq_mask")
    rows: dict[str, list] = {key: [] for key in keys + ("probability",)}
    for batch, outputs in real_outputs(self.predict_fn, params, self.batches(),
                                       self.to_device, keys):
      for key in keys:
        rows[key].append(batch[key])
      rows["probability"].append(outputs["probability"])
    return {key: np.concatenate(value) for key, value in rows.items()}

  def run(self, params: Any) -> Iterator[tuple[str, Any]]:
    out = self.collect(params)
    mask = out["seq_mask"]
    response = out["response"][mask]
    scores = {
        "": out["probability"],
        "oracle_": out["p_correct"],
        "baseline_": self.exercise_means[out["exercise"]],
        "baseline_student_": student_baseline(out["exercise"], out["response"], mask,
                                              self.exercise_means),
    }
    aucs = {name: roc_auc(response, score[mask]) for name, score in scores.items()}
    for name, value in aucs.items():
      yield f"{name}auc", value
    yield "auc_gap", aucs["oracle_"] - aucs[""]
    for name in ("", "oracle_"):
      predicted = scores[name][mask]
      yield f"{name}accuracy", float(np.mean((predicted > 0.5) == (response == 1)))
      clipped = np.clip(predicted.astype(np.float64), 1e-7, 1 - 1e-7)
      yield f"{name}log_loss", float(-np.mean(response * np.log(clipped)
                                              + (1 - response) * np.log(1 - clipped)))
    steps = np.broadcast_to(np.arange(mask.shape[1]), mask.shape)
    for part, chosen in (("early", steps < self.early_steps),
                         ("late", steps >= self.early_steps)):
      part_mask = mask & chosen
      if 0 < out["response"][part_mask].sum() < part_mask.sum():  # both classes present
        for name in ("", "oracle_"):
          yield f"{part}/{name}auc", roc_auc(out["response"][part_mask],
                                             scores[name][part_mask])
    yield "num_examples", int(len(mask))
    yield "num_steps", int(mask.sum())


def recommend(model: KnowledgeTracer, params: Any, history: dict[str, np.ndarray],
              candidates: np.ndarray, target: float = 0.7, *,
              candidate_skills: np.ndarray | None = None) -> tuple[int, np.ndarray]:
  """The candidate exercise whose predicted success probability for this student is
  closest to `target`, and the probabilities [C] of all candidates.

  Args:
    model, params: a trained KnowledgeTracer and its parameters (`{"params": ...}` inner
      tree).
    history: the student's steps so far, {"exercise", "skill", "response"} [T] ints (T may
      be 0), T < model.max_len.
    candidates: [C] exercise ids to choose from.
    target: the wanted success probability.
    candidate_skills: [C] their skills; None looks them up in `edu_tracing`'s exercise bank.
  """
  candidates = np.asarray(candidates, np.int32).reshape(-1)
  if candidate_skills is None:
    from mmjax.data.builders.edu_tracing import students  # the edu_tracing exercises

    candidate_skills = students.exercise_bank().skill[candidates]
  candidate_skills = np.asarray(candidate_skills, np.int32).reshape(-1)
  if candidates.shape != candidate_skills.shape or not candidates.size:
    raise ValueError(f"recommend: {candidates.size} candidates and {candidate_skills.size} "
                     "candidate skills; expected the same positive number")
  length = len(history["exercise"])
  if length >= model.max_len:
    raise ValueError(f"recommend: a history of {length} steps leaves no room for the next "
                     f"within the model's max_len {model.max_len}")
  # One row per candidate: the history, then the candidate as step `length` (its response
  # is unknown and unread: the logit at a step sees only earlier responses).
  batch = {}
  for key, last in (("exercise", candidates), ("skill", candidate_skills),
                    ("response", np.zeros_like(candidates))):
    rows = np.zeros((len(candidates), length + 1), np.int32)
    rows[:, :length] = np.asarray(history[key], np.int32)
    rows[:, length] = last
    batch[key] = rows
  logits = model.apply({"params": params}, batch, train=False)["logits"][:, length]
  probabilities = np.asarray(jax.nn.sigmoid(logits), np.float64)
  return int(candidates[np.argmin(np.abs(probabilities - target))]), probabilities
