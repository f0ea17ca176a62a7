"""`edu_tracing`: knowledge tracing on a simulated student population with known skill states.

Each example is one student's sequence of attempts at exercises: which exercise, its
skill, whether the answer was right, and the probability of a right answer that the
simulator drew it with. Students follow item response theory with learning (see
`students.py`): 200 exercises over 10 skills, each with a difficulty; a student has a
general ability, a per-skill offset and a learning rate, and every attempt at a skill
raises that skill's ability by the learning rate. Everything is drawn from the fixed
`EduTracing.SEED` (and `students.BANK_SEED` for the exercises): every build is
identical. Nothing is downloaded; the data is synthetic (no licence restrictions).

- Splits by student: `train` 20,000, `validation` 500, `test` 500 students; each split is
  drawn from its own seed, so no student appears in two. (Simulated students are free:
  with 4,000 a Transformer learns to recognise training students by their exercise
  sequences and overfits within a few epochs.)
- Sequences are 100 to 200 steps long (uniform); arrays have `MAX_LENGTH` = 200 entries
  and are 0 after `length` (the mask is `arange(200) < length`).
- `p_correct` is the oracle: the true success probability given the student's hidden
  state. Its ROC AUC against `response` is the ceiling any predictor can reach.

Features: `exercise` int32 [200] (0..199), `skill` int32 [200] (0..9, `exercise // 20`),
`response` int32 [200] (1 right, 0 wrong), `p_correct` float32 [200], `length` int32,
`student_id` int32 (unique over all splits), and the hidden state `ability` float32,
`skill_offset` float32 [10], `learning_rate` float32 (for analysis and tests; a model
must not read them). `info.metadata` holds `num_exercises`, `num_skills`, `max_length`
and `exercise_skill` (the skill of each exercise).
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from mmjax.data.builders.edu_tracing import students

SEQUENCE_FEATURES = ("exercise", "skill", "response", "p_correct")
STATE_FEATURES = ("ability", "skill_offset", "learning_rate")


class EduTracing(tfds.core.GeneratorBasedBuilder):
  """Simulated students' exercise sequences with the oracle success probability."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  SEED = 20260302
  SPLITS = {"train": 20_000, "validation": 500, "test": 500}
  MAX_LENGTH = students.MAX_LENGTH

  def _info(self) -> tfds.core.DatasetInfo:
    length = self.MAX_LENGTH
    bank = students.exercise_bank()
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "exercise": tfds.features.Tensor(shape=(length,), dtype=np.int32),
            "skill": tfds.features.Tensor(shape=(length,), dtype=np.int32),
            "response": tfds.features.Tensor(shape=(length,), dtype=np.int32),
            "p_correct": tfds.features.Tensor(shape=(length,), dtype=np.float32),
            "length": tfds.features.Scalar(dtype=np.int32),
            "student_id": tfds.features.Scalar(dtype=np.int32),
            "ability": tfds.features.Scalar(dtype=np.float32),
            "skill_offset": tfds.features.Tensor(shape=(students.NUM_SKILLS,),
                                                 dtype=np.float32),
            "learning_rate": tfds.features.Scalar(dtype=np.float32),
        }),
        metadata=tfds.core.MetadataDict(
            num_exercises=students.NUM_EXERCISES, num_skills=students.NUM_SKILLS,
            max_length=length, exercise_skill=bank.skill.tolist()),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded.
    bank = students.exercise_bank()
    splits, first_id = {}, 0
    for i, (name, count) in enumerate(self.SPLITS.items()):
      columns = students.make_split(count, self.SEED + i + 1, bank, max_length=self.MAX_LENGTH)
      splits[name] = self._generate_examples(columns, first_id)
      first_id += count
    return splits

  def _generate_examples(self, columns: dict[str, np.ndarray], first_id: int):
    for i in range(len(columns["length"])):
      example = {name: columns[name][i] for name in SEQUENCE_FEATURES}
      example.update({name: np.float32(columns[name][i]) if columns[name].ndim == 1
                      else columns[name][i].astype(np.float32) for name in STATE_FEATURES})
      example.update(length=columns["length"][i], student_id=first_id + i)
      yield i, example  # the key fixes the order
