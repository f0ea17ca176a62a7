"""A teacher's question about a scene on a topic: a fixed function of (scene, topic).

Pure Python, no tfds: `make_question(scene, topic)` reads the canonical scene string of
`edu_scenes` (`scenes.scene_strings`: "large:digit 7", "top left=red circle;bottom
right=digit 7") and returns the one question a teacher asks about that scene on that
topic. Nothing is random here, so a model that sees the scene and the topic can
reproduce the question word for word (exact match is reachable); the templates differ
with what the scene holds (how many objects, large or in cells, shape or digit).

"The first object" is the first in cell order (top left, top right, bottom left, bottom
right); a large scene's one object fills the picture. Topics, when they apply, and
their questions:

  counting    always. The first object's kind, plural ("circles", or "numbers" for a
              digit); by the number of objects n: n = 1 (or large) "How many circles
              are in the picture?", n = 2 "How many circles can you see?", n = 3
              "Count the circles. How many are there?"
  colour      some shape. The first shape: "What colour is the big circle?" (large),
              else "What colour is the circle in the top left?"
  shape       some shape. The first shape's place: "What is the name of the big
              shape?" (large), "What shape is in the top left?" (n = 1), else "Which
              shape is drawn in the top left?"
  position    objects in cells (not large). The last object: "Where is the red
              circle?" / "Where is the number 7?" (n = 1), else "Which corner is the
              red circle in?" / "Which corner is the number 7 in?"
  digits      some digit. The first digit's place: "Which number is written in the
              picture?" (large), else "Which number is written in the top left?"
  arithmetic  at least two digits. The first two, a then b: "What is a minus b?" when
              a >= b, else "What is a plus b?"
"""

from __future__ import annotations

from typing import NamedTuple

from mmjax.data.builders.edu_scenes.scenes import CELLS, COLOURS, SHAPES

TOPICS = ("counting", "colour", "shape", "position", "digits", "arithmetic")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles",
           "cross": "crosses"}
LARGE_PREFIX = "large:"


class SceneObject(NamedTuple):
  """One object of a canonical scene string: its cell ("top left"; "" when large), and
  either a shape with its colour or a digit (`digit` -1 for shapes)."""

  cell: str
  shape: str
  colour: str
  digit: int

  @property
  def is_digit(self) -> bool:
    return self.digit >= 0

  @property
  def name(self) -> str:
    """How a question names it: "red circle", "number 7"."""
    return f"number {self.digit}" if self.is_digit else f"{self.colour} {self.shape}"


def parse_scene(scene: str) -> tuple[bool, list[SceneObject]]:
  """A canonical scene string -> (large, its objects in cell order)."""
  large = scene.startswith(LARGE_PREFIX)
  if large:
    entries = [("", scene[len(LARGE_PREFIX):])]
  else:
    entries = [tuple(entry.split("=", 1)) for entry in scene.split(";") if entry]
  objects = []
  for cell, name in entries:
    if (cell and cell not in CELLS) or " " not in name:
      raise ValueError(f"not a canonical scene string: {scene!r}")
    first, second = name.split(" ", 1)
    if first == "digit" and second.isdigit():
      objects.append(SceneObject(cell, "", "", int(second)))
    elif first in COLOURS and second in SHAPES:
      objects.append(SceneObject(cell, second, first, -1))
    else:
      raise ValueError(f"not a canonical scene string: {scene!r}")
  if not objects or (large and len(objects) != 1):
    raise ValueError(f"not a canonical scene string: {scene!r}")
  return large, objects


def applicable_topics(scene: str) -> tuple[str, ...]:
  """The topics of TOPICS a question can be asked about for `scene`, in TOPICS order."""
  large, objects = parse_scene(scene)
  shapes = sum(not o.is_digit for o in objects)
  digits = len(objects) - shapes
  applies = {"counting": True, "colour": shapes > 0, "shape": shapes > 0,
             "position": not large, "digits": digits > 0, "arithmetic": digits >= 2}
  return tuple(topic for topic in TOPICS if applies[topic])


def make_question(scene: str, topic: str) -> str:
  """The question about canonical `scene` on `topic` (see the module docstring);
  ValueError when the topic does not apply to the scene."""
  if topic not in applicable_topics(scene):
    raise ValueError(f"topic {topic!r} does not apply to the scene {scene!r}")
  large, objects = parse_scene(scene)
  count = len(objects)
  shapes = [o for o in objects if not o.is_digit]
  digits = [o for o in objects if o.is_digit]
  if topic == "counting":
    first = objects[0]
    noun = "numbers" if first.is_digit else PLURALS[first.shape]
    if count == 1:
      return f"How many {noun} are in the picture?"
    if count == 2:
      return f"How many {noun} can you see?"
    return f"Count the {noun}. How many are there?"
  if topic == "colour":
    shape = shapes[0]
    if large:
      return f"What colour is the big {shape.shape}?"
    return f"What colour is the {shape.shape} in the {shape.cell}?"
  if topic == "shape":
    if large:
      return "What is the name of the big shape?"
    if count == 1:
      return f"What shape is in the {shapes[0].cell}?"
    return f"Which shape is drawn in the {shapes[0].cell}?"
  if topic == "position":
    last = objects[-1]
    if count == 1:
      return f"Where is the {last.name}?"
    return f"Which corner is the {last.name} in?"
  if topic == "digits":
    if large:
      return "Which number is written in the picture?"
    return f"Which number is written in the {digits[0].cell}?"
  a, b = digits[0].digit, digits[1].digit  # arithmetic
  return f"What is {a} minus {b}?" if a >= b else f"What is {a} plus {b}?"
