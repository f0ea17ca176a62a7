"""`easy_vqa`: the easy-VQA visual question answering dataset, read from its PyPI package.

easy-VQA (Victor Zhou, MIT licence) pairs 64x64 RGB pictures of one coloured shape
(circle, rectangle or triangle, in one of eight colours, on a lightly tinted background)
with templated English questions about it ("what color is the triangle?", "is there not
a blue shape?") and one-word answers from a closed list of 13 (three shapes, eight
colours, yes, no). The `easy-vqa` package (a dependency of mmjax) ships the PNG images
and the question files in its wheel, so this builder reads them offline through the
package's own API (`get_*_questions`, `get_*_image_paths`, `get_answers`).

- Splits: the package's `test` split as it is (1,000 images, 9,673 questions); its
  train split (4,000 images, 38,575 questions) divided BY IMAGE into `train` (3,600
  images) and `validation` (400 images, drawn from the fixed `EasyVqa.SEED`): no image
  appears in both, so validation measures answering about unseen pictures.
- A WordPiece vocabulary is built (deterministically) from the training questions and
  saved as `tokenizer.json` in the dataset directory.

Features: `image` uint8 [64, 64, 3] (0..255), `question` text, `answer` (13 classes, in
the order of the package's `answers.txt`), `answer_type` (shape, color or yes_no; derived
from the answer: the answer sets of the three question kinds are disjoint), `shape` and
`color` (the pictured object's, read from the pixels by `objects.describe_object`; the
build checks that they imply the package's answer to every question), `named_shape`,
`named_color` and `negated` (what the question says: the shape and colour it names,
"none" if it names none, and whether it says "not" or "no"), `image_id` (the
image's number within its package split: train/validation ids are 0..3999, test ids
0..999).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from mmjax.config import ConfigError
from mmjax.data.builders.easy_vqa import objects
from mmjax.data.tokenizer import TOKENIZER_FILE, build_wordpiece

IMAGE_SHAPE = (64, 64, 3)
SHAPE_ANSWERS = objects.SHAPES
YES_NO_ANSWERS = ("yes", "no")
ANSWER_TYPES = ("shape", "color", "yes_no")  # `answer_type` class names, in this order
HOMEPAGE = "https://github.com/vzhou842/easy-VQA"
CITATION = ("Victor Zhou, easy-VQA: the Easy Visual Question Answering dataset, "
            "https://github.com/vzhou842/easy-VQA (PyPI package easy-vqa 1.0).")
LICENSE = "MIT License, Copyright (c) 2019 Victor Zhou (the easy-vqa wheel's LICENSE)."


def answer_type(answer: str) -> str:
  """The kind of question an answer belongs to: "shape", "yes_no" or "color"."""
  if answer in SHAPE_ANSWERS:
    return "shape"
  return "yes_no" if answer in YES_NO_ANSWERS else "color"


def load_image(path: str) -> np.ndarray:
  """A package PNG as uint8 [64, 64, 3]; anything else is a one-line ConfigError."""
  from PIL import Image

  with Image.open(path) as image:
    pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
  if pixels.shape != IMAGE_SHAPE:
    raise ConfigError(f"easy-vqa image {path}: shape {pixels.shape}, expected {IMAGE_SHAPE}")
  return pixels


def package_split(split: str) -> tuple[list[str], list[str], list[int], dict[int, str]]:
  """(questions, answers, image_ids, {image_id: PNG path}) of the package's `train` or
  `test` split, in the package's question order."""
  import easy_vqa  # The images and questions ship inside the package: no download.

  if split == "train":
    questions, answers, image_ids = easy_vqa.get_train_questions()
    paths = easy_vqa.get_train_image_paths()
  elif split == "test":
    questions, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
  else:
    raise ValueError(f"easy-vqa has splits train and test, not '{split}'")
  missing = sorted(set(image_ids) - set(paths))
  if missing:
    raise ConfigError(f"easy-vqa {split} questions name image {missing[0]}, which the "
                      f"package's {split}/images directory does not hold")
  return list(questions), list(answers), [int(i) for i in image_ids], paths


def answer_names() -> list[str]:
  """The package's answers (its `answers.txt`, in file order): `answer`'s class names."""
  import easy_vqa

  return list(easy_vqa.get_answers())


def validation_images(image_ids: list[int], count: int, seed: int) -> set[int]:
  """`count` of the distinct `image_ids`, drawn from `seed` (the same on every build)."""
  distinct = np.unique(np.asarray(image_ids, np.int64))
  rng = np.random.default_rng(seed)
  return set(rng.choice(distinct, size=count, replace=False).tolist())


class EasyVqa(tfds.core.GeneratorBasedBuilder):
  """easy-VQA: questions about one coloured shape, answered from 13 words."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: easy-vqa 1.0's data, validation carved by image.",
                   "1.1.0": "named_shape, named_color and negated features (what each "
                            "question says); examples unchanged."}

  SEED = 20261214
  NUM_VALIDATION_IMAGES = 400  # of the package's 4,000 train images
  VOCAB_SIZE = 128

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            # uint8 tensors rather than tfds.features.Image: no TensorFlow needed. Stored
            # as raw bytes: tfds writes an unencoded tensor as a Python list of 12,288 ints
            # per example, which made the build ~20x slower.
            "image": tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8, encoding="bytes"),
            "question": tfds.features.Text(),
            "answer": tfds.features.ClassLabel(names=answer_names()),
            "answer_type": tfds.features.ClassLabel(names=list(ANSWER_TYPES)),
            "shape": tfds.features.ClassLabel(names=list(objects.SHAPES)),
            "color": tfds.features.ClassLabel(names=list(objects.PALETTE)),
            "named_shape": tfds.features.ClassLabel(names=[objects.NONE, *objects.SHAPES]),
            "named_color": tfds.features.ClassLabel(names=[objects.NONE, *objects.PALETTE]),
            "negated": tfds.features.ClassLabel(names=["no", "yes"]),
            "image_id": tfds.features.Scalar(dtype=np.int32),
        }),
        homepage=HOMEPAGE,
        citation=CITATION,
        license=LICENSE,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded.
    train = package_split("train")
    held_out = validation_images(train[2], self.NUM_VALIDATION_IMAGES, self.SEED)
    in_validation = [image_id in held_out for image_id in train[2]]
    splits = {
        "train": (train, [not v for v in in_validation]),
        "validation": (train, in_validation),
        "test": (package_split("test"), None),
    }
    # self.data_dir is tfds's temporary directory here, renamed into place only when
    # the whole dataset is written, so the vocabulary appears atomically with it.
    build_wordpiece((q for q, keep in zip(train[0], splits["train"][1], strict=True) if keep),
                    self.VOCAB_SIZE, os.path.join(self.data_dir, TOKENIZER_FILE))
    return {name: self._generate_examples(data, keep)
            for name, (data, keep) in splits.items()}

  def _generate_examples(self, data, keep):
    questions, answers, image_ids, paths = data
    known = set(answer_names())
    images = {}  # every image has ~10 questions: decode each PNG once
    described = {}
    for index, (question, answer, image_id) in enumerate(
        zip(questions, answers, image_ids, strict=True)):
      if keep is not None and not keep[index]:
        continue
      if answer not in known:
        raise ConfigError(f"easy-vqa question {index} ('{question}'): answer '{answer}' is "
                          "not in the package's answers.txt")
      if image_id not in images:
        images[image_id] = load_image(paths[image_id])
        described[image_id] = objects.describe_object(images[image_id])
      shape, colour = described[image_id]
      if objects.implied_answer(question, shape, colour) != answer:
        raise ConfigError(f"easy-vqa image {paths[image_id]} looks like a {colour} {shape}, "
                          f"but question {index} ('{question}') is answered '{answer}'")
      named_shape, named_colour, negated = objects.parse_question(question)
      # The key (the question's index in the package's file) fixes tfds's stored order.
      yield index, {"image": images[image_id], "question": question, "answer": answer,
                    "answer_type": answer_type(answer), "shape": shape, "color": colour,
                    "named_shape": named_shape, "named_color": named_colour,
                    "negated": "yes" if negated else "no", "image_id": image_id}
