"""`shapes_relational`: relational visual question answering on scenes of coloured shapes.

In the spirit of Sort-of-CLEVR (Santoro et al. 2017, "A simple neural network module for
relational reasoning"), generated here from scratch. Each image (uint8 [32, 32, 3]) shows
six objects, one of each colour (red, green, blue, orange, grey, yellow), in six distinct
cells of a 4x4 grid of 8x8-pixel cells on black; each object is a circle, a square or a
triangle. Every question names one object by its colour and is of one of six types:

  non-relational  shape           "What shape is the red object?"
                  horizontal      "Is the green one on the left or the right?"
                  vertical        "Is the blue thing at the top or the bottom?"
  relational      closest_shape   "What is the shape of the object closest to the grey one?"
                  furthest_shape  "What shape is the object farthest from the orange item?"
                  count           "How many objects have the same shape as the yellow
                                   object, including it?"

Relational questions need the asked object to be compared with the others (distances
between cell centres; a question whose closest or furthest object is tied is never
asked). Each type has six wordings and four words for the object ("object", "one",
"thing", "item"). Everything is drawn from the fixed `ShapesRelational.SEED`: every build
is identical. See `scenes.py`.

- Splits (one question of each type per scene, so types are exactly balanced):
  `train` 18,000 scenes = 108,000 questions; `validation` 500 scenes = 3,000; `test` 800
  scenes = 4,800. No scene occurs twice, within or across splits.
- A WordPiece vocabulary is built (deterministically) from the training questions and
  saved as `tokenizer.json` in the dataset directory.

Features: `image` uint8 [32, 32, 3] (0..255), `question` text, `answer` (13 classes:
circle, square, triangle, left, right, top, bottom, 1..6), `question_type` (the six types
above), `relational` (non_relational, relational), `colour` (the colour the question
names), `object_cell` (the asked object's cell, 16 classes "row R column K", row-major),
`answer_cell` (the cell of the object the answer reports: the closest or furthest object
for those questions, the asked object for the others; grounding targets for auxiliary
heads), `circle`, `square`, `triangle` (how many objects of the scene have that shape,
classes "0".."6"), `scene_id` (unique across splits),
`scene` (canonical content: "red circle at row 0 column 2; green square at row 1 column 3;
...", colours in the order above).
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from mmjax.data.builders.generated import GeneratedQA
from mmjax.data.builders.shapes_relational import scenes

FEATURES = ("image", "question", "answer", "question_type", "relational", "colour", "object_cell",
            "answer_cell", "circle", "square", "triangle", "scene_id", "scene")
CITATION = ("Santoro et al. (2017), A simple neural network module for relational reasoning, "
            "NeurIPS (Sort-of-CLEVR, the task this dataset follows).")


class ShapesRelational(GeneratedQA, tfds.core.GeneratorBasedBuilder):
  """Relational VQA on six coloured shapes: positions, shapes, closest/furthest, counts."""

  VERSION = tfds.core.Version("1.2.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.",
                   "1.1.0": "object_cell and answer_cell features; examples unchanged.",
                   "1.2.0": "circle, square and triangle (shape counts) features."}

  SEED = 20261124
  SPLIT_SIZES = {"train": 18_000, "validation": 500, "test": 800}
  FEATURES = FEATURES
  make_split = staticmethod(scenes.make_split)
  VOCAB_SIZE = 256

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            # uint8 tensors rather than tfds.features.Image: no TensorFlow needed.
            "image": tfds.features.Tensor(
                shape=(scenes.IMAGE_SIZE, scenes.IMAGE_SIZE, 3), dtype=np.uint8),
            "question": tfds.features.Text(),
            "answer": tfds.features.ClassLabel(names=list(scenes.ANSWERS)),
            "question_type": tfds.features.ClassLabel(names=list(scenes.QUESTION_TYPES)),
            "relational": tfds.features.ClassLabel(names=list(scenes.RELATIONAL_NAMES)),
            "colour": tfds.features.ClassLabel(names=list(scenes.COLOURS)),
            "object_cell": tfds.features.ClassLabel(names=list(scenes.CELL_NAMES)),
            "answer_cell": tfds.features.ClassLabel(names=list(scenes.CELL_NAMES)),
            **{name: tfds.features.ClassLabel(names=[str(n) for n in range(7)])
               for name in scenes.SHAPES},
            "scene_id": tfds.features.Scalar(dtype=np.int32),
            "scene": tfds.features.Text(),
        }),
        citation=CITATION,
    )
