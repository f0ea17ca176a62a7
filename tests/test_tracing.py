"""Knowledge tracing: the student simulator, the edu_tracing build, the causal tracer, the
task's loss and evaluation, runlocal training and exercise recommendation."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmjax.config import ConfigError
from mmjax.data import pipeline
from mmjax.data.builders.edu_tracing import students
from mmjax.data.builders.edu_tracing.edu_tracing import EduTracing
from mmjax.evaluate.metrics import roc_auc
from mmjax.models.tracing import KnowledgeTracer
from mmjax.tasks import build_task
from mmjax.tasks.knowledge_tracing import (
  KnowledgeTracingTask,
  TracingEvaluator,
  TracingPreprocessor,
  exercise_mean_correct,
  recommend,
  student_baseline,
)
from mmjax.train import checkpoint, loop

from conftest import load_config

CONFIG = "configs/edu/knowledge_tracing.py"


def runlocal(data_dir, **overrides):
  return load_config(CONFIG, "runlocal", **{"data.data_dir": data_dir, **overrides})


@pytest.fixture(scope="module")
def tracing(data_dir):
  """The prepared `edu_tracing` dataset."""
  return pipeline.open_dataset(ml_collections.ConfigDict(
      dict(name="edu_tracing", data_dir=data_dir, cache=False)))


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
  """(workdir, experiment) after training the runlocal config (60 steps)."""
  workdir = str(tmp_path_factory.mktemp("tracing") / "run")
  config = runlocal(data_dir)
  loop.train(config, workdir)
  return workdir, loop.build_experiment(config)


def small_model(**kwargs):
  return KnowledgeTracer(**dict(dict(num_exercises=students.NUM_EXERCISES,
                                     num_skills=students.NUM_SKILLS, max_len=40, width=16,
                                     depth=2, mlp_dim=32, num_heads=2), **kwargs))


# --- simulator ---------------------------------------------------------------------------


def test_simulation_is_deterministic_and_padded_after_length():
  a, b = students.make_split(30, seed=5), students.make_split(30, seed=5)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  other = students.make_split(30, seed=6)
  assert not np.array_equal(a["exercise"], other["exercise"])
  assert a["length"].min() >= students.MIN_LENGTH and a["length"].max() <= students.MAX_LENGTH
  real = np.arange(students.MAX_LENGTH)[None] < a["length"][:, None]
  for key in ("exercise", "skill", "response", "p_correct"):
    assert not a[key][~real].any()
  np.testing.assert_array_equal(a["skill"][real],
                                a["exercise"][real] // students.EXERCISES_PER_SKILL)
  np.testing.assert_array_equal(students.exercise_bank().difficulty,
                                students.exercise_bank().difficulty)


def test_p_correct_follows_the_documented_process():
  """p_correct = sigmoid(ability + skill offset + learning rate * earlier attempts at the
  skill - difficulty), recomputed step by step here; responses are drawn with it."""
  split = students.make_split(400, seed=11)
  bank = students.exercise_bank()
  for i in range(0, 400, 37):
    practice = np.zeros(students.NUM_SKILLS)
    for t in range(split["length"][i]):
      e = split["exercise"][i, t]
      k = bank.skill[e]
      logit = (split["ability"][i] + split["skill_offset"][i, k]
               + split["learning_rate"][i] * practice[k] - bank.difficulty[e])
      assert split["p_correct"][i, t] == pytest.approx(1 / (1 + np.exp(-logit)), abs=1e-6)
      practice[k] += 1
  # Responses are Bernoulli(p_correct): in each bin of p, the share right matches mean p.
  real = np.arange(students.MAX_LENGTH)[None] < split["length"][:, None]
  p, response = split["p_correct"][real], split["response"][real]
  bins = np.digitize(p, np.linspace(0, 1, 11)[1:-1])
  for b in range(10):
    chosen = bins == b
    if chosen.sum() > 500:
      assert response[chosen].mean() == pytest.approx(p[chosen].mean(), abs=0.03)
  # Students differ: per-student success rates spread widely (ability sd 1 logit).
  rates = (split["response"] * real).sum(1) / split["length"]
  assert rates.std() > 0.12
  # The order: the next step stays on the same skill with probability 0.8 + 0.2 / 10.
  same = (split["skill"][:, 1:] == split["skill"][:, :-1])[real[:, 1:]]
  assert same.mean() == pytest.approx(1 - students.P_SWITCH * (1 - 1 / students.NUM_SKILLS),
                                      abs=0.01)


def test_success_probability_rises_with_practice():
  bank = students.exercise_bank()
  group = students.Students(np.zeros(2), np.zeros((2, students.NUM_SKILLS)),
                            np.array([0.05, 0.05]))
  practice = np.zeros((2, students.NUM_SKILLS))
  practice[1, 0] = 10  # the second student practised skill 0 ten times
  p = students.success_probability(bank, group, practice, np.array([0, 25]))
  logit = np.log(p / (1 - p))
  assert logit[1, 0] - logit[0, 0] == pytest.approx(0.5)  # 10 attempts * 0.05
  assert logit[1, 1] == pytest.approx(logit[0, 1])  # exercise 25 practises skill 1
  assert logit[0, 0] == pytest.approx(-bank.difficulty[0])


# --- dataset ----------------------------------------------------------------------------


def test_built_dataset_is_the_simulation(tracing):
  info = tracing.builder.info
  assert {name: len(tracing.source(name)) for name in ("train", "validation", "test")} == \
      EduTracing.SPLITS
  assert info.metadata["num_exercises"] == 200 and info.metadata["num_skills"] == 10
  assert info.metadata["exercise_skill"] == students.exercise_bank().skill.tolist()
  # Splits draw from SEED + 1, + 2, + 3; ids number the students of all splits in turn
  # (tfds stores examples in an order fixed by their keys, not by id).
  first = 0
  for offset, name in enumerate(("train", "validation", "test"), start=1):
    source = tracing.source(name)
    ids = sorted(source[i]["student_id"] for i in range(len(source)))
    assert ids == list(range(first, first + len(source)))
    expected = students.make_split(len(source), EduTracing.SEED + offset)
    for i in (0, len(source) - 1):
      raw = source[i]
      j = raw["student_id"] - first
      for key in ("exercise", "skill", "response", "p_correct", "length"):
        np.testing.assert_array_equal(raw[key], expected[key][j])
      assert raw["ability"] == pytest.approx(expected["ability"][j])
      np.testing.assert_allclose(raw["skill_offset"], expected["skill_offset"][j], rtol=1e-6)
    first += len(source)
  raw = tracing.source("test")[0]
  example = TracingPreprocessor().example(raw)
  assert example["seq_mask"].sum() == raw["length"] and example["seq_mask"][:raw["length"]].all()


# --- model ------------------------------------------------------------------------------


def test_tracer_is_causal_in_responses_and_exercises():
  """The logit at step t depends on exercises <= t and responses < t only."""
  model = small_model()
  rng = np.random.default_rng(0)
  batch = {"exercise": rng.integers(200, size=(2, 30)).astype(np.int32),
           "response": rng.integers(2, size=(2, 30)).astype(np.int32)}
  batch["skill"] = batch["exercise"] // students.EXERCISES_PER_SKILL
  params = model.init(jax.random.key(0), batch, train=False)
  logits = lambda b: np.asarray(model.apply(params, b, train=False)["logits"])  # noqa: E731
  base = logits(batch)
  assert base.shape == (2, 30)
  k = 12
  flipped = dict(batch, response=batch["response"].copy())
  flipped["response"][:, k] = 1 - flipped["response"][:, k]
  out = logits(flipped)
  np.testing.assert_allclose(out[:, :k + 1], base[:, :k + 1], atol=1e-6)  # <= k: unseen
  assert np.abs(out[:, k + 1:] - base[:, k + 1:]).min() > 1e-6  # later steps read it
  other = dict(batch, exercise=batch["exercise"].copy(), skill=batch["skill"].copy())
  other["exercise"][:, k] = (other["exercise"][:, k] + 100) % 200
  other["skill"][:, k] = other["exercise"][:, k] // students.EXERCISES_PER_SKILL
  out = logits(other)
  np.testing.assert_allclose(out[:, :k], base[:, :k], atol=1e-6)
  assert np.abs(out[:, k:] - base[:, k:]).min() > 1e-6
  # A shorter sequence gives the same logits as the prefix of a longer one.
  prefix = {key: value[:, :k] for key, value in batch.items()}
  np.testing.assert_allclose(logits(prefix), base[:, :k], atol=1e-5)


# --- task -------------------------------------------------------------------------------


def test_loss_is_masked_binary_cross_entropy():
  task = KnowledgeTracingTask()
  logits = jnp.array([[2.0, -1.0, 7.0], [0.5, 3.0, -3.0]])
  batch = {"response": jnp.array([[1, 1, 0], [0, 1, 1]]),
           "seq_mask": jnp.array([[True, True, False], [True, True, True]]),
           "example_mask": jnp.array([True, False])}
  loss, metrics = task.loss({"logits": logits}, batch)
  # Only row 0's first two steps count: -log sigmoid(2), -log sigmoid(-1).
  expected = (np.log1p(np.exp(-2.0)) + np.log1p(np.exp(1.0))) / 2
  assert float(loss) == pytest.approx(expected, rel=1e-6)
  assert float(metrics["accuracy"]) == pytest.approx(0.5)
  # Whatever padded steps and padded students hold changes nothing.
  noisy = logits.at[0, 2].set(-9.0).at[1].set(jnp.array([9.0, -9.0, 9.0]))
  assert float(task.loss({"logits": noisy}, batch)[0]) == pytest.approx(float(loss))
  np.testing.assert_allclose(task.predict({"logits": logits})["probability"],
                             jax.nn.sigmoid(logits))


def test_build_task_and_config_errors(data_dir, tracing):
  config = runlocal(data_dir)
  assert build_task(config, lambda head: 0) == KnowledgeTracingTask(early_steps=20)
  with pytest.raises(ConfigError, match="config.task: unknown field"):
    build_task(runlocal(data_dir, **{"task": dict(name="knowledge_tracing", heads=1)}),
               lambda head: 0)
  with pytest.raises(ConfigError, match="config.model.max_len=100 is shorter"):
    loop.build_experiment(runlocal(data_dir, **{"model.max_len": 100}))
  with pytest.raises(ConfigError, match="config.model: unknown field"):
    loop.build_experiment(runlocal(data_dir, **{"model.heads": dict(label=1)}))


def test_evaluator_reports_model_oracle_and_baselines(tracing):
  """A 'model' that predicts p_correct reaches the oracle; the baselines are as defined."""
  source = tracing.source("test")
  preprocessor = TracingPreprocessor()
  batches = lambda: pipeline.eval_batches(source, preprocessor, global_batch_size=96)  # noqa: E731
  means = exercise_mean_correct(tracing.source("train"), students.NUM_EXERCISES)
  oracle = TracingEvaluator(lambda params, batch: {"probability": batch["p_correct"]},
                            batches, lambda batch: batch, means)
  metrics = dict(oracle.run(None))
  assert metrics["num_examples"] == 500
  assert metrics["auc"] == pytest.approx(metrics["oracle_auc"]) and metrics["auc_gap"] == 0
  # Recomputed by hand from the raw split.
  rows = [source[i] for i in range(len(source))]
  mask = np.stack([np.arange(200) < r["length"] for r in rows])
  exercise = np.stack([r["exercise"] for r in rows])
  response = np.stack([r["response"] for r in rows])
  assert metrics["num_steps"] == mask.sum()
  assert metrics["baseline_auc"] == pytest.approx(roc_auc(response[mask],
                                                          means[exercise][mask]))
  assert metrics["oracle_auc"] > metrics["baseline_student_auc"] > metrics["baseline_auc"]
  assert metrics["early/oracle_auc"] > 0.75 and metrics["late/oracle_auc"] > 0.75
  assert 0.3 < means.mean() < 0.7 and means.std() > 0.15  # difficulties differ


def test_exercise_means_count_real_steps_only():
  rows = [{"exercise": np.array([0, 2, 0, 1]), "response": np.array([1, 1, 0, 1]),
           "length": 3},
          {"exercise": np.array([2, 2, 0, 0]), "response": np.array([0, 1, 1, 1]),
           "length": 2}]
  # Exercise 0: 1, 0 (row 0) -> 1/2; exercise 2: 1 (row 0), 0, 1 (row 1) -> 2/3;
  # exercises 1 (only in padding) and 3 (nowhere): the overall share, 3 right of 5.
  np.testing.assert_allclose(exercise_mean_correct(rows, 4), [0.5, 0.6, 2 / 3, 0.6])


def test_student_baseline_is_the_shrunk_running_residual():
  means = np.array([0.5, 0.6])
  exercise = np.array([[0, 1, 0, 1]])
  response = np.array([[1, 0, 1, 0]])
  mask = np.array([[True, True, True, False]])
  out = student_baseline(exercise, response, mask, means, prior=1.0)
  # Step 0: no history, the exercise mean; step 1: residual 0.5 over 1 step + 1
  # pseudo-step; step 2: residuals 0.5 and -0.6 over 2 + 1.
  np.testing.assert_allclose(out[0, :3], [0.5, 0.6 + 0.25, 0.5 + (0.5 - 0.6) / 3])


# --- training and recommendation --------------------------------------------------------


def test_runlocal_trains_and_beats_the_exercise_baseline(trained):
  workdir, _ = trained
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    losses = [r["train/loss"] for r in map(json.loads, f) if "train/loss" in r]
  assert len(losses) == 6 and losses[-1] < 0.85 * losses[0], losses  # 0.71 -> 0.52 measured
  with open(os.path.join(workdir, "eval.json")) as f:
    written = json.load(f)
  for split in ("validation", "test"):
    metrics = written[split]
    assert metrics["num_examples"] == 500
    assert set(metrics) >= {"auc", "oracle_auc", "baseline_auc", "auc_gap", "accuracy"}
    assert metrics["auc_gap"] == pytest.approx(metrics["oracle_auc"] - metrics["auc"])
    # 60 tiny steps already learn the exercises' difficulties and some of the student.
    assert metrics["baseline_auc"] + 0.03 < metrics["auc"] < metrics["oracle_auc"]


def test_recommend_finds_exercises_near_the_target_for_known_students(trained):
  """Students drawn from the simulator, so each candidate's TRUE success probability is
  known after their 120 simulated steps."""
  workdir, exp = trained
  params = checkpoint.read_params(workdir)
  bank = students.exercise_bank()
  rng = np.random.default_rng(7)
  count = 40
  group = students.draw_students(count, rng)
  history = students.simulate(bank, group, np.full(count, 120), rng, max_length=120)
  candidates = np.arange(students.NUM_EXERCISES)
  truth = students.success_probability(bank, group, students.practice_counts(history["skill"]),
                                       candidates)  # [count, 200]
  chosen = []
  for i in range(count):
    steps = {key: history[key][i] for key in ("exercise", "skill", "response")}
    best, probabilities = recommend(exp.model, params, steps, candidates, target=0.7)
    assert probabilities.shape == (200,) and best == np.argmin(np.abs(probabilities - 0.7))
    chosen.append(best)
  errors = np.abs(truth[np.arange(count), chosen] - 0.7)
  # The recommended exercise's true success probability is near the target (0.148 on
  # average with the 60-step runlocal model, 0.060 with the full config's), far nearer
  # than a random exercise's (0.280), and abler students get harder exercises.
  assert errors.mean() < 0.2 and errors.mean() < 0.65 * np.abs(truth - 0.7).mean(), errors
  assert np.corrcoef(group.ability, bank.difficulty[chosen])[0, 1] > 0.6


def test_recommend_scores_the_next_step_of_the_history():
  model = small_model()
  history = {"exercise": np.array([3, 50, 51]), "skill": np.array([0, 2, 2]),
             "response": np.array([1, 0, 1])}
  batch = {key: jnp.asarray(value[None]) for key, value in history.items()}
  params = model.init(jax.random.key(1), batch, train=False)["params"]
  candidates = np.array([7, 120, 199])
  best, probabilities = recommend(model, params, history, candidates, target=0.5)
  for candidate, probability in zip(candidates, probabilities, strict=True):
    row = {key: np.append(value, last)[None] for (key, value), last in zip(
        history.items(), (candidate, candidate // students.EXERCISES_PER_SKILL, 0),
        strict=True)}
    logit = model.apply({"params": params}, row, train=False)["logits"][0, 3]
    assert probability == pytest.approx(float(jax.nn.sigmoid(logit)), abs=1e-6)
  assert best == candidates[np.argmin(np.abs(probabilities - 0.5))]
  empty = {key: np.zeros(0, np.int32) for key in history}
  assert recommend(model, params, empty, candidates)[1].shape == (3,)
  with pytest.raises(ValueError, match="max_len"):
    recommend(model, params, {key: np.zeros(40, np.int32) for key in history}, candidates)
