"""`edu_grading`: handwritten homework grading (question text + handwritten answer image).

Each example pairs an arithmetic question whose answer is one digit ("What is 7 - 3?",
"Subtract four from 8.", short word problems) with a real handwritten digit from
scikit-learn's `load_digits` (1,797 8x8 images by 43 writers, UCI optdigits). The label
says whether the handwritten answer is correct.

- Images are split once, stratified by digit: 70 % train, 10 % validation, 20 % test;
  no test or validation image appears in training.
- Every image is used with several questions, half of which it answers correctly, so
  labels are balanced per image and per question wording: neither modality alone
  predicts the label (a single-modality model stays near 50 %).
- A WordPiece vocabulary is built (deterministically) from the training questions and saved as
  `tokenizer.json` in the dataset directory.

Features: `image` uint8 [8, 8, 1] (0..255), `question` text, `label` (0 incorrect,
1 correct), `answer` (the question's correct digit, 10 classes), `written_digit` (the
digit in the image, 10 classes), `image_id` (index into `load_digits`).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from mmjax.data.builders.edu_grading import questions
from mmjax.data.tokenizer import TOKENIZER_FILE, build_wordpiece

DIGITS_HOMEPAGE = "https://archive.ics.uci.edu/dataset/80"
DIGITS_CITATION = "Alpaydin & Kaynak (1998), Optical Recognition of Handwritten Digits, UCI."


def load_digit_images() -> tuple[np.ndarray, np.ndarray]:
  """The 1,797 handwritten digits as uint8 [N, 8, 8, 1] in 0..255, and their labels [N]."""
  from sklearn.datasets import load_digits  # Ships inside scikit-learn: no download.

  digits = load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
  return images[..., None], digits.target.astype(np.int64)


def split_images(labels: np.ndarray, seed: int,
                 fractions: dict[str, float]) -> dict[str, np.ndarray]:
  """Stratified, disjoint split of image indices (sorted within each split)."""
  rng = np.random.default_rng(seed)
  splits = {name: [] for name in fractions}
  for digit in np.unique(labels):
    indices = rng.permutation(np.flatnonzero(labels == digit))
    start = 0
    for i, (name, fraction) in enumerate(fractions.items()):
      stop = len(indices) if i == len(fractions) - 1 else start + round(fraction * len(indices))
      splits[name].extend(indices[start:stop].tolist())
      start = stop
  return {name: np.sort(np.asarray(ids, dtype=np.int64)) for name, ids in splits.items()}


def make_examples(image_ids: np.ndarray, images: np.ndarray, digits: np.ndarray,
                  questions_per_image: int, seed: int) -> list[dict]:
  """`questions_per_image` (even) examples per image, half of them correct."""
  rng = np.random.default_rng(seed)
  examples = []
  for image_id in image_ids:
    digit = int(digits[image_id])
    for q in range(questions_per_image):
      correct = q % 2 == 0
      answer = digit if correct else int((digit + rng.integers(1, 10)) % 10)
      examples.append({
          "image": images[image_id],
          "question": questions.make_question(answer, rng),
          "label": int(correct),
          "answer": answer,
          "written_digit": digit,
          "image_id": int(image_id),
      })
  return examples


class EduGrading(tfds.core.GeneratorBasedBuilder):
  """Handwritten homework grading: is the handwritten digit the answer to the question?"""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.",
                   "1.1.0": "Deterministic vocabulary: the same tokenizer.json on every build."}

  SPLIT_SEED = 20261123
  FRACTIONS = {"train": 0.7, "validation": 0.1, "test": 0.2}
  QUESTIONS_PER_IMAGE = {"train": 16, "validation": 8, "test": 10}
  VOCAB_SIZE = 512

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            # uint8 tensors rather than tfds.features.Image: no TensorFlow needed.
            "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
            "question": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=["incorrect", "correct"]),
            "answer": tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
            "written_digit": tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
            "image_id": tfds.features.Scalar(dtype=np.int32),
        }),
        homepage=DIGITS_HOMEPAGE,
        citation=DIGITS_CITATION,
    )

  @classmethod
  def digit_images(cls) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(images, digits, {split: image indices}): the handwritten digits and the image
    split every builder that draws on them uses, so edu_grading's test images stay
    unseen by them all."""
    images, digits = load_digit_images()
    return images, digits, split_images(digits, cls.SPLIT_SEED, cls.FRACTIONS)

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded.
    images, digits, image_splits = self.digit_images()
    examples = {
        name: make_examples(ids, images, digits, self.QUESTIONS_PER_IMAGE[name],
                            seed=self.SPLIT_SEED + i + 1)
        for i, (name, ids) in enumerate(image_splits.items())
    }
    # self.data_dir is tfds's temporary directory here, renamed into place only when
    # the whole dataset is written, so the vocabulary appears atomically with it.
    build_wordpiece((ex["question"] for ex in examples["train"]), self.VOCAB_SIZE,
                    os.path.join(self.data_dir, TOKENIZER_FILE))
    return {name: self._generate_examples(split) for name, split in examples.items()}

  def _generate_examples(self, examples):
    yield from enumerate(examples)  # (key, example); the key fixes tfds's stored order
