"""A simulated student population practising exercises: item response theory with learning.

Pure numpy, no tfds. The process (all logits in natural units):

- Exercise bank: `NUM_EXERCISES` exercises, `EXERCISES_PER_SKILL` per skill; exercise `e`
  practises skill `e // EXERCISES_PER_SKILL` and has a difficulty `b_e ~ N(0, DIFFICULTY_SD)`
  drawn once from `BANK_SEED` (`exercise_bank()`).
- Student `s`: a general ability `theta_s ~ N(0, ABILITY_SD)`, a per-skill offset
  `alpha_sk ~ N(0, SKILL_SD)` for each skill `k`, and a learning rate
  `gamma_s ~ Uniform(*LEARNING_RATE)`.
- Skill state: after `n_sk` earlier attempts at exercises of skill `k` (right or wrong),
  the student's ability in `k` is `a_sk = theta_s + alpha_sk + gamma_s * n_sk`: practice
  raises the skill it exercises, at the student's own rate.
- Response: attempting exercise `e` of skill `k`, the student succeeds with probability
  `p = sigmoid(a_sk - b_e)` (the one-parameter logistic IRT model, Rasch 1960), stored
  as `p_correct`: what an oracle that knows the student's hidden state would predict.
- Order: the first exercise's skill is uniform; after each step the student stays on the
  same skill with probability `1 - P_SWITCH`, else moves to a uniformly drawn skill (the
  same one possibly); the exercise is uniform among that skill's exercises. Sequence
  lengths are uniform in [MIN_LENGTH, MAX_LENGTH].

A predictor that sees only a student's history must infer `theta_s`, `alpha_sk` and
`gamma_s` from the responses so far; at the first steps it knows nothing about the student
and can only use the exercise's difficulty, so its gap to the oracle is largest there.
"""

from __future__ import annotations

import dataclasses

import numpy as np

NUM_SKILLS = 10
EXERCISES_PER_SKILL = 20
NUM_EXERCISES = NUM_SKILLS * EXERCISES_PER_SKILL
MIN_LENGTH = 100
MAX_LENGTH = 200
BANK_SEED = 20260301

DIFFICULTY_SD = 1.5
ABILITY_SD = 1.0
SKILL_SD = 0.25
LEARNING_RATE = (0.02, 0.08)
P_SWITCH = 0.2


def sigmoid(x: np.ndarray) -> np.ndarray:
  return 1.0 / (1.0 + np.exp(-x))


@dataclasses.dataclass(frozen=True)
class ExerciseBank:
  """skill: int32 [NUM_EXERCISES]; difficulty: float64 [NUM_EXERCISES]."""

  skill: np.ndarray
  difficulty: np.ndarray


def exercise_bank(seed: int = BANK_SEED) -> ExerciseBank:
  """The exercises every split shares: skill `e // EXERCISES_PER_SKILL`, difficulties drawn
  from `seed`."""
  rng = np.random.default_rng(seed)
  skill = (np.arange(NUM_EXERCISES) // EXERCISES_PER_SKILL).astype(np.int32)
  return ExerciseBank(skill, rng.normal(0.0, DIFFICULTY_SD, NUM_EXERCISES))


@dataclasses.dataclass(frozen=True)
class Students:
  """The hidden state of N students: ability [N], skill_offset [N, NUM_SKILLS],
  learning_rate [N] (float64)."""

  ability: np.ndarray
  skill_offset: np.ndarray
  learning_rate: np.ndarray

  def __len__(self) -> int:
    return len(self.ability)

  def skill_ability(self, practice: np.ndarray) -> np.ndarray:
    """Ability in every skill [N, NUM_SKILLS] after `practice` [N, NUM_SKILLS] attempts."""
    return (self.ability[:, None] + self.skill_offset
            + self.learning_rate[:, None] * practice)


def draw_students(count: int, rng: np.random.Generator) -> Students:
  """`count` students from the population's prior."""
  ability = rng.normal(0.0, ABILITY_SD, count)
  skill_offset = rng.normal(0.0, SKILL_SD, (count, NUM_SKILLS))
  learning_rate = rng.uniform(*LEARNING_RATE, count)
  return Students(ability, skill_offset, learning_rate)


def practice_counts(skills: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
  """Attempts per skill [N, NUM_SKILLS] in histories `skills` [N, T] (int), counting only
  the first `lengths` [N] steps of each (all T when None)."""
  skills = np.asarray(skills)
  steps = np.arange(skills.shape[1])[None]
  real = np.ones(skills.shape, bool) if lengths is None else steps < np.asarray(lengths)[:, None]
  counts = np.zeros((skills.shape[0], NUM_SKILLS), np.int64)
  np.add.at(counts, (np.repeat(np.arange(skills.shape[0]), skills.shape[1]), skills.ravel()),
            real.ravel().astype(np.int64))
  return counts


def success_probability(bank: ExerciseBank, students: Students, practice: np.ndarray,
                        exercises: np.ndarray) -> np.ndarray:
  """The true probability [N, C] that each student, after `practice` [N, NUM_SKILLS]
  attempts per skill, answers each of `exercises` [N, C] (or [C]) correctly."""
  exercises = np.broadcast_to(np.asarray(exercises), (len(students),) + np.shape(exercises)[-1:])
  ability = np.take_along_axis(students.skill_ability(practice), bank.skill[exercises], axis=1)
  return sigmoid(ability - bank.difficulty[exercises])


def simulate(bank: ExerciseBank, students: Students, lengths: np.ndarray,
             rng: np.random.Generator, max_length: int = MAX_LENGTH) -> dict[str, np.ndarray]:
  """Runs every student for `lengths` [N] steps; arrays [N, max_length], zero after each
  student's length.

  Returns {"exercise", "skill", "response"} int32, "p_correct" float32 (the probability the
  response was drawn with, before that step's practice counts) and "length" int32 [N].
  """
  count = len(students)
  lengths = np.asarray(lengths, np.int32)
  if lengths.min() < 1 or lengths.max() > max_length:
    raise ValueError(f"lengths must lie in [1, {max_length}], got {lengths.min()}.."
                     f"{lengths.max()}")
  exercise = np.zeros((count, max_length), np.int32)
  p_correct = np.zeros((count, max_length), np.float64)
  response = np.zeros((count, max_length), np.int32)
  practice = np.zeros((count, NUM_SKILLS), np.int64)
  rows = np.arange(count)
  skill = rng.integers(NUM_SKILLS, size=count)
  for t in range(max_length):
    if t:
      switch = rng.random(count) < P_SWITCH
      skill = np.where(switch, rng.integers(NUM_SKILLS, size=count), skill)
    exercise[:, t] = skill * EXERCISES_PER_SKILL + rng.integers(EXERCISES_PER_SKILL, size=count)
    p_correct[:, t] = success_probability(bank, students, practice, exercise[:, t:t + 1])[:, 0]
    response[:, t] = rng.random(count) < p_correct[:, t]
    practice[rows, skill] += 1
  real = np.arange(max_length)[None] < lengths[:, None]
  return {
      "exercise": np.where(real, exercise, 0).astype(np.int32),
      "skill": np.where(real, bank.skill[exercise], 0).astype(np.int32),
      "response": np.where(real, response, 0).astype(np.int32),
      "p_correct": np.where(real, p_correct, 0.0).astype(np.float32),
      "length": lengths,
  }


def make_split(count: int, seed: int, bank: ExerciseBank | None = None,
               min_length: int = MIN_LENGTH, max_length: int = MAX_LENGTH
               ) -> dict[str, np.ndarray]:
  """`count` students drawn and simulated from `seed`: `simulate`'s arrays plus the hidden
  state `ability` [N], `skill_offset` [N, NUM_SKILLS], `learning_rate` [N]. The same
  arguments give the same arrays."""
  bank = exercise_bank() if bank is None else bank
  rng = np.random.default_rng(seed)
  students = draw_students(count, rng)
  lengths = rng.integers(min_length, max_length + 1, size=count)
  out = simulate(bank, students, lengths, rng, max_length)
  out.update(ability=students.ability, skill_offset=students.skill_offset,
             learning_rate=students.learning_rate)
  return out
