"""`edu_scenes`: captioned scenes of coloured shapes and handwritten digits, for pre-training.

Each example is a 16x16 RGB image on a black background with a natural-English caption
("a red circle in the top left and a handwritten 7 in the bottom right", "top left: a red
circle. lower right: the number seven written by hand."). A scene is either one large
object scaled x2 over the whole image (about 15 %), or 1, 2 or 3 objects in distinct
cells of a 2x2 grid of 8x8 cells. An object is a shape (circle, square, triangle, cross;
filled or outlined) in one of six colours (red, green, blue, yellow, purple, cyan), or a
real handwritten digit from scikit-learn's `load_digits` drawn grey. Everything is drawn
from the fixed `EduScenes.SEED`: every build is identical. See `scenes.py` for wordings.

- Splits: `train` 60,000; `validation` 1,000 and `test` 1,000 (every `scene` unique
  within the split, so they hold mostly two- and three-object scenes); `classify` 1,000
  one-object scenes (large or in one cell), balanced over the 14 categories, for
  zero-shot classification by `category`.
- Digit images: `load_digits` is split exactly as `edu_grading` splits it (its
  SPLIT_SEED and FRACTIONS). `train` draws only from edu_grading's training images, the
  other splits only from its validation images; no edu_grading test image appears here,
  so a model pre-trained on this corpus can be fine-tuned and tested on edu_grading.
- A WordPiece vocabulary is built (deterministically) from the training captions plus
  20,000 edu_grading questions and saved as `tokenizer.json` in the dataset directory:
  one tokenizer serves pre-training here and fine-tuning on edu_grading.

Features: `image` uint8 [16, 16, 3] (0..255), `caption` text (at most 40 WordPiece
tokens with [CLS] and [SEP]), `scene` (canonical content, cells in fixed order: "large:
digit 7", "top left=red circle;bottom right=digit 7"), `category` (the object in the
first non-empty cell of top left, top right, bottom left, bottom right: circle, square,
triangle, cross, zero .. nine; 14 classes), `num_objects` (1..3), `image_id` (index into
`load_digits` of the first digit in that cell order, -1 if the scene has none).
"""

from __future__ import annotations

import itertools
import os
from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from mmjax.data.builders.edu_grading import questions
from mmjax.data.builders.edu_grading.edu_grading import (
  DIGITS_CITATION,
  DIGITS_HOMEPAGE,
  EduGrading,
)
from mmjax.data.builders.edu_scenes import scenes
from mmjax.data.tokenizer import TOKENIZER_FILE, build_wordpiece

FEATURES = ("image", "caption", "scene", "category", "num_objects", "image_id")


class SplitSpec(NamedTuple):
  num_examples: int
  image_split: str  # the edu_grading image split its digits come from
  unique: bool  # no two examples share a `scene`
  one_object: bool  # one object per scene, categories balanced


def grading_questions(count: int, seed: int) -> list[str]:
  """`count` edu_grading questions with random answers, the same for the same seed."""
  rng = np.random.default_rng(seed)
  return [questions.make_question(int(rng.integers(10)), rng) for _ in range(count)]


class EduScenes(tfds.core.GeneratorBasedBuilder):
  """Image-text pre-training: shapes and handwritten digits on a 2x2 grid, captioned."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  SEED = 20261207
  SPLITS = {
      "train": SplitSpec(60_000, "train", unique=False, one_object=False),
      "validation": SplitSpec(1_000, "validation", unique=True, one_object=False),
      "test": SplitSpec(1_000, "validation", unique=True, one_object=False),
      "classify": SplitSpec(1_000, "validation", unique=False, one_object=True),
  }
  NUM_GRADING_QUESTIONS = 20_000
  VOCAB_SIZE = 1024

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            # uint8 tensors rather than tfds.features.Image: no TensorFlow needed.
            "image": tfds.features.Tensor(
                shape=(scenes.IMAGE_SIZE, scenes.IMAGE_SIZE, 3), dtype=np.uint8),
            "caption": tfds.features.Text(),
            "scene": tfds.features.Text(),
            "category": tfds.features.ClassLabel(names=list(scenes.CATEGORIES)),
            "num_objects": tfds.features.Scalar(dtype=np.int32),
            "image_id": tfds.features.Scalar(dtype=np.int32),
        }),
        homepage=DIGITS_HOMEPAGE,
        citation=DIGITS_CITATION,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded.
    # The same image split as edu_grading's, so its test images stay unseen here.
    images, digits, image_splits = EduGrading.digit_images()
    examples = {
        name: scenes.make_split(spec.num_examples, image_splits[spec.image_split], images,
                                digits, seed=self.SEED + i + 1, unique=spec.unique,
                                one_object=spec.one_object)
        for i, (name, spec) in enumerate(self.SPLITS.items())
    }
    # self.data_dir is tfds's temporary directory here, renamed into place only when
    # the whole dataset is written, so the vocabulary appears atomically with it.
    texts = itertools.chain(examples["train"]["caption"],
                            grading_questions(self.NUM_GRADING_QUESTIONS, self.SEED))
    build_wordpiece(texts, self.VOCAB_SIZE, os.path.join(self.data_dir, TOKENIZER_FILE))
    return {name: self._generate_examples(split) for name, split in examples.items()}

  def _generate_examples(self, columns):
    for i in range(len(columns["caption"])):
      yield i, {name: columns[name][i] for name in FEATURES}  # the key fixes the order
