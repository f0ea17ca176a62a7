"""`edu_questions`: teaching-content generation, a question a teacher asks about a picture.

Each example pairs a 16x16 RGB scene of `edu_scenes` (coloured shapes and real
handwritten digits on a 2x2 grid, or one large object; drawn and rendered by the same
functions, `edu_scenes/scenes.py`) with a `topic` (counting, colour, shape, position,
digits, arithmetic) and the `question` a teacher asks about that picture on that topic:
"How many circles can you see?", "What colour is the square in the top left?", "Which
number is written in the bottom right?", "What is 7 minus 3?" (with the handwritten
digits shown).

The question is a deterministic function of (scene, topic), `questions.make_question`:
a few templates per topic, the template and the words it is filled with read off the
scene (which objects, in which cells, how many). A model that sees the picture and the
topic can therefore reproduce it exactly, so exact match, not only BLEU, measures it.
Each scene gets one topic, drawn uniformly among those that apply to it (every scene
can be asked about counting; arithmetic needs two digits). Everything is drawn from the
fixed `EduQuestions.SEED`: every build is identical.

- Splits: `train` 30,000; `validation` 1,000 and `test` 1,000.
- Digit images: `load_digits` split exactly as `edu_grading` splits it. `train` draws
  only from edu_grading's training images, the other splits only from its validation
  images, so the handwriting in validation and test is unseen in training and no
  edu_grading test image appears here.
- A WordPiece vocabulary is built (deterministically) from the training topics and
  questions and saved as `tokenizer.json` in the dataset directory.

Features: `image` uint8 [16, 16, 3] (0..255), `topic` text (the topic's name),
`question` text (at most 12 WordPiece tokens with [CLS] and [SEP]), `topic_id` (6
classes, TOPICS order), `scene` (the canonical content, as in edu_scenes: "large:digit
7", "top left=red circle;bottom right=digit 7").
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from mmjax.data.builders.edu_grading.edu_grading import (
  DIGITS_CITATION,
  DIGITS_HOMEPAGE,
  EduGrading,
)
from mmjax.data.builders.edu_questions import questions
from mmjax.data.builders.edu_scenes import scenes
from mmjax.data.tokenizer import TOKENIZER_FILE, build_wordpiece

FEATURES = ("image", "topic", "question", "topic_id", "scene")


class SplitSpec(NamedTuple):
  num_examples: int
  image_split: str  # the edu_grading image split its digits come from


def make_split(num: int, pool: np.ndarray, images: np.ndarray, digits: np.ndarray,
               seed: int) -> dict[str, list | np.ndarray]:
  """`num` examples drawn from `seed`, with digit images from `pool` (indices into
  `digits`) only: the example columns of FEATURES."""
  layout_rng, topic_rng = (np.random.default_rng(s)
                           for s in np.random.SeedSequence(seed).spawn(2))
  drawn = scenes.sample_scenes(num, pool, digits, layout_rng)
  names = scenes.scene_strings(drawn)
  topics = []
  for name in names:
    options = questions.applicable_topics(name)
    topics.append(options[int(topic_rng.integers(len(options)))])
  return {
      "image": scenes.render(drawn, images),
      "topic": topics,
      "question": [questions.make_question(n, t) for n, t in zip(names, topics, strict=True)],
      "topic_id": np.array([questions.TOPICS.index(t) for t in topics], np.int64),
      "scene": names,
  }


class EduQuestions(tfds.core.GeneratorBasedBuilder):
  """Question generation: from a picture and a topic, the question a teacher asks."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  SEED = 20261214
  SPLITS = {
      "train": SplitSpec(30_000, "train"),
      "validation": SplitSpec(1_000, "validation"),
      "test": SplitSpec(1_000, "validation"),
  }
  VOCAB_SIZE = 256

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            # uint8 tensors rather than tfds.features.Image: no TensorFlow needed.
            "image": tfds.features.Tensor(
                shape=(scenes.IMAGE_SIZE, scenes.IMAGE_SIZE, 3), dtype=np.uint8),
            "topic": tfds.features.Text(),
            "question": tfds.features.Text(),
            "topic_id": tfds.features.ClassLabel(names=list(questions.TOPICS)),
            "scene": tfds.features.Text(),
        }),
        homepage=DIGITS_HOMEPAGE,
        citation=DIGITS_CITATION,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded.
    # The same image split as edu_grading's, so its test images stay unseen here.
    images, digits, image_splits = EduGrading.digit_images()
    examples = {
        name: make_split(spec.num_examples, image_splits[spec.image_split], images, digits,
                         seed=self.SEED + i + 1)
        for i, (name, spec) in enumerate(self.SPLITS.items())
    }
    # self.data_dir is tfds's temporary directory here, renamed into place only when
    # the whole dataset is written, so the vocabulary appears atomically with it.
    train = examples["train"]
    build_wordpiece(list(questions.TOPICS) + train["question"], self.VOCAB_SIZE,
                    os.path.join(self.data_dir, TOKENIZER_FILE))
    return {name: self._generate_examples(split) for name, split in examples.items()}

  def _generate_examples(self, columns):
    for i in range(len(columns["scene"])):
      yield i, {name: columns[name][i] for name in FEATURES}  # the key fixes the order
