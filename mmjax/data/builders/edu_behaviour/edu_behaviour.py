"""`edu_behaviour`: learning-behaviour classification from three modalities of evidence.

For each lesson of a student: a written reflection (text), a grey photo of the worksheet
(image) and a short audio clip of the student (waveform). The label says whether the
student was engaged, struggling or disengaged. Each modality independently shows a cue
of the true label (with probability 0.58 to 0.62), no evidence (0.28 to 0.32) or a
cue of another label (0.10), so every modality carries only part of the signal: the
Bayes-optimal test accuracy is about 0.70 from one modality, 0.81 from two and 0.88
from all three (see `behaviour.py`, `behaviour.bayes_accuracy`). Everything is
generated from the fixed `EduBehaviour.SEED`: every build is identical.

- Splits: `train` 20,000; `validation` 2,000; `test` 2,000; labels balanced.
- A WordPiece vocabulary is built (deterministically) from the training reflections
  and saved as `tokenizer.json` in the dataset directory.

Features: `image` uint8 [16, 16, 1] (0..255, a worksheet photo), `reflection` text (at
most 34 WordPiece tokens with [CLS] and [SEP]), `audio` int16 [4000] (0.5 s at 8 kHz),
`label` (engaged, struggling, disengaged), and for analysis the cue each modality shows,
`image_cue`, `text_cue`, `audio_cue` (engaged, struggling, disengaged, unclear), and
`example_id` (the example's index in `behaviour.make_split`'s output for its split).
"""

from __future__ import annotations

import os
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from mmjax.data.builders.edu_behaviour import behaviour
from mmjax.data.tokenizer import TOKENIZER_FILE, build_wordpiece

FEATURES = ("image", "reflection", "audio", "label",
            *(f"{m}_cue" for m in behaviour.MODALITIES), "example_id")


class EduBehaviour(tfds.core.GeneratorBasedBuilder):
  """Engaged, struggling or disengaged? From a reflection, a worksheet photo and audio."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  SEED = 20261215
  SPLITS: ClassVar[dict[str, int]] = {"train": 20_000, "validation": 2_000, "test": 2_000}
  VOCAB_SIZE = 512
  # Hz of `audio`; pipeline.make_preprocessor checks config.model.audio.sample_rate.
  audio_sample_rate = behaviour.SAMPLE_RATE

  def _info(self) -> tfds.core.DatasetInfo:
    cue = lambda: tfds.features.ClassLabel(names=list(behaviour.CUES))  # noqa: E731
    size = behaviour.IMAGE_SIZE
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            # uint8 / int16 tensors rather than tfds Image / Audio: no TensorFlow needed.
            "image": tfds.features.Tensor(shape=(size, size, 1), dtype=np.uint8),
            "reflection": tfds.features.Text(),
            "audio": tfds.features.Tensor(shape=(behaviour.AUDIO_SAMPLES,), dtype=np.int16),
            "label": tfds.features.ClassLabel(names=list(behaviour.LABELS)),
            **{f"{m}_cue": cue() for m in behaviour.MODALITIES},
            "example_id": tfds.features.Scalar(dtype=np.int32),
        }),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded.
    examples = {name: behaviour.make_split(num, seed=self.SEED + i + 1)
                for i, (name, num) in enumerate(self.SPLITS.items())}
    # self.data_dir is tfds's temporary directory here, renamed into place only when
    # the whole dataset is written, so the vocabulary appears atomically with it.
    build_wordpiece(examples["train"]["reflection"], self.VOCAB_SIZE,
                    os.path.join(self.data_dir, TOKENIZER_FILE))
    return {name: self._generate_examples(split) for name, split in examples.items()}

  def _generate_examples(self, columns):
    for i in range(len(columns["label"])):
      yield i, {name: columns[name][i] for name in FEATURES}  # the key fixes the order
