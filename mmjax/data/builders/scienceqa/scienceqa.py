"""`scienceqa`: ScienceQA (Lu et al., NeurIPS 2022), read from its official files.

ScienceQA is about 21k multiple-choice science questions from elementary and high school
curricula (grades 1-12), in natural, social and language science; about half have an
image context and about half a text context (the "hint"). It is not downloaded: get
problems.json, pid_splits.json and the images from the ScienceQA project
(https://scienceqa.github.io, data under CC BY-NC-SA 4.0) and point
`config.data.manual_dir` at the directory (layout: `problems.py`). It is then checked
(a one-line ConfigError names the file, pid and field of any problem) and built offline.

Splits (pid_splits.json): `train` (train), `validation` (val), `test` (test); in the
release 12,726 / 4,241 / 4,241 problems.

Features, the multiple-choice contract of mmjax/tasks/multiple_choice.py plus ScienceQA's
groups:
  question     Text
  context      Text: the hint, "" when none
  choices      Text: the choices joined by "\\n" (2 to 5 in the release)
  answer       int32: index of the correct choice
  image        uint8 [64, 64, 3]: the image context resized (bilinear, transparency over
               white); black when there is none
  has_image    int32 0/1
  subject      ClassLabel: natural science, social science, language science
  grade        int32 1..12
  has_context  int32 0/1: the hint is not empty
  pid          Text: the problem id
A WordPiece `tokenizer.json` is built from the train split's questions, hints and
choices.

Each directory gets its own build (the tfds config name is a hash of its path, the two
JSON files and its images' sizes and times), so pointing at another download, or an
edited one, builds afresh.
"""

from __future__ import annotations

import dataclasses
import itertools
import os

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from mmjax.config import ConfigError
from mmjax.data.builders.scienceqa import problems as problems_lib
from mmjax.data.tokenizer import TOKENIZER_FILE, build_wordpiece

IMAGE_SIZE = 64
VOCAB_SIZE = 8192
HOMEPAGE = "https://scienceqa.github.io"
CITATION = ("Lu, Mishra, Xia, Qiu, Chang, Zhu, Tafjord, Clark, Kalyan (2022). Learn to "
            "Explain: Multimodal Reasoning via Thought Chains for Science Question "
            "Answering. NeurIPS.")


@dataclasses.dataclass(eq=False)
class ScienceQaConfig(tfds.core.BuilderConfig):
  """One directory's build: `name` is its fingerprint; the checked problems ride along so
  the builder does not parse the files twice."""

  splits: dict[str, list[problems_lib.Problem]] | None = dataclasses.field(
      default=None, repr=False)


class ScienceQa(tfds.core.GeneratorBasedBuilder):
  """ScienceQA multiple-choice questions with text and image contexts."""

  name = "scienceqa"  # as `config.data.name` spells it (tfds would say science_qa)
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Download ScienceQA (https://scienceqa.github.io): problems.json, pid_splits.json and "
      "the images (train.zip, val.zip, test.zip unpacked into images/), and pass the "
      "directory as config.data.manual_dir.")

  @classmethod
  def builder_kwargs(cls, data_config: ml_collections.ConfigDict) -> dict:
    """{"config": the checked build of `config.data.manual_dir`}."""
    directory = problems_lib.check_directory(data_config.get("manual_dir", None))
    splits = problems_lib.read_splits(directory)
    return {"config": ScienceQaConfig(
        name="d" + problems_lib.fingerprint(directory, splits),
        description=f"ScienceQA read from {directory}", splits=splits)}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "question": tfds.features.Text(),
            "context": tfds.features.Text(),
            "choices": tfds.features.Text(),
            "answer": tfds.features.Scalar(dtype=np.int32),
            # uint8 tensors rather than tfds.features.Image: no TensorFlow needed.
            "image": tfds.features.Tensor(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8),
            "has_image": tfds.features.Scalar(dtype=np.int32),
            "subject": tfds.features.ClassLabel(names=list(problems_lib.SUBJECTS)),
            "grade": tfds.features.Scalar(dtype=np.int32),
            "has_context": tfds.features.Scalar(dtype=np.int32),
            "pid": tfds.features.Text(),
        }),
        homepage=HOMEPAGE,
        citation=CITATION,
        # Examples stay in pid_splits.json order, so predictions line up with its pids.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    config = self.builder_config
    splits = getattr(config, "splits", None)
    if splits is None:  # built without builder_kwargs (e.g. `tfds build --manual_dir`)
      try:
        directory = str(dl_manager.manual_dir)
      except AssertionError as e:
        raise ConfigError(f"config.data.manual_dir: {str(e).splitlines()[0]}") from None
      splits = problems_lib.read_splits(problems_lib.check_directory(directory))
    # Decode every image once before anything is written: a bad file is one clear error.
    images = {problem.image: problems_lib.load_image(problem.image, IMAGE_SIZE)
              for problem in itertools.chain(*splits.values()) if problem.image is not None}
    # self.data_dir is tfds's temporary directory here, renamed into place only when
    # the whole dataset is written, so the vocabulary appears atomically with it.
    texts = (text for problem in splits["train"]
             for text in (problem.question, problem.context, *problem.choices))
    build_wordpiece(texts, VOCAB_SIZE, os.path.join(self.data_dir, TOKENIZER_FILE))
    return {name: self._generate_examples(split, images) for name, split in splits.items()}

  def _generate_examples(self, split: list[problems_lib.Problem],
                         images: dict[str, np.ndarray]):
    black = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    for index, problem in enumerate(split):
      yield index, {
          "question": problem.question,
          "context": problem.context,
          "choices": "\n".join(problem.choices),
          "answer": problem.answer,
          "image": images[problem.image] if problem.image is not None else black,
          "has_image": int(problem.image is not None),
          "subject": problem.subject,
          "grade": problem.grade,
          "has_context": int(bool(problem.context)),
          "pid": problem.pid,
      }
