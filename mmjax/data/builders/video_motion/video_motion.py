"""`video_motion`: video question answering about moving shapes, generated offline.

A first physics lesson in miniature: a young learner watches two shapes slide across a
screen and answers which way each one goes. Each example is a clip of 8 frames (uint8
[8, 32, 32, 3]) showing, on grey, two objects of distinct colours (red, green, blue,
yellow), each a circle, a square or a triangle, moving in straight lines in two different
directions (left, right, up, down) at 1 or 2 pixels per frame, and one question about it:

  direction  "Which way does the red circle move?"              left / right / up / down
  yes_no     "Is the blue square moving up?"                    yes / no
  which      "What colour is the shape that moves to the left?" red / green / blue / yellow

A direction is a change between frames, so the questions need the video; since the two
objects move differently, they also need the text. One frame alone gives a hint (an
object near the left edge is not moving left): knowing the generator, the best guess of
an object's direction from any one frame of known index is right at most 44 % of the time
(`clips.single_frame_accuracy`; chance 25 %). Everything is drawn from the fixed
`VideoMotion.SEED`: every build is identical. See `clips.py` for wordings.

- Splits (clip i is asked a question of type i mod 3, so types are exactly balanced):
  `train` 6,000 clips; `validation` 600; `test` 900. No clip occurs twice, within or
  across splits.
- A WordPiece vocabulary is built (deterministically) from the training questions and
  saved as `tokenizer.json` in the dataset directory.

Features: `video` uint8 [8, 32, 32, 3] (frames in time order, 0..255), `question` text,
`answer` (10 classes: left, right, up, down, no, yes, red, green, blue, yellow),
`question_type` (direction, yes_no, which), the asked object's `colour`, `direction` and
`speed` (classes "1", "2": pixels per frame), `named_direction` (the direction the question
names), `motion_red`, `motion_green`, `motion_blue`, `motion_yellow` (what the object of
that colour does: absent, left, right, up, down; targets for auxiliary heads), `clip_id`
(unique across splits), `clip` (canonical content: "red circle from row 3 column 0 moving
right 2 px/frame; ...").
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from mmjax.data.builders.generated import GeneratedQA
from mmjax.data.builders.video_motion import clips

FEATURES = ("video", "question", "answer", "question_type", "colour", "direction", "speed",
            "named_direction", *(f"motion_{c}" for c in clips.COLOURS), "clip_id", "clip")


class VideoMotion(GeneratedQA, tfds.core.GeneratorBasedBuilder):
  """Video QA: which way two coloured shapes move, over 8-frame clips."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  SEED = 20261215
  SPLIT_SIZES = {"train": 6_000, "validation": 600, "test": 900}
  FEATURES = FEATURES
  make_split = staticmethod(clips.make_split)
  VOCAB_SIZE = 128

  def _info(self) -> tfds.core.DatasetInfo:
    size = clips.FRAME_SIZE
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            # A uint8 tensor rather than tfds.features.Video (no TensorFlow needed), stored
            # as raw bytes: a list of 24,576 ints per clip takes 10x longer to write and read.
            "video": tfds.features.Tensor(shape=(clips.NUM_FRAMES, size, size, 3),
                                          dtype=np.uint8, encoding="bytes"),
            "question": tfds.features.Text(),
            "answer": tfds.features.ClassLabel(names=list(clips.ANSWERS)),
            "question_type": tfds.features.ClassLabel(names=list(clips.QUESTION_TYPES)),
            "colour": tfds.features.ClassLabel(names=list(clips.COLOURS)),
            "direction": tfds.features.ClassLabel(names=list(clips.DIRECTIONS)),
            "speed": tfds.features.ClassLabel(names=[str(v) for v in clips.SPEEDS]),
            "named_direction": tfds.features.ClassLabel(names=list(clips.DIRECTIONS)),
            **{f"motion_{c}": tfds.features.ClassLabel(names=list(clips.MOTIONS))
               for c in clips.COLOURS},
            "clip_id": tfds.features.Scalar(dtype=np.int32),
            "clip": tfds.features.Text(),
        }),
    )
