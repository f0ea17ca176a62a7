"""Scenes of six coloured shapes on a 4x4 grid, and questions about them in plain English.

Pure numpy, no tfds: `make_split(num_scenes, seed)` draws scenes from `seed`, renders
each as a uint8 [32, 32, 3] image and asks one question of every type about it, the
same every time for the same arguments.

A scene holds one object of each of the six COLOURS, in six distinct cells of a 4x4 grid
of 8x8-pixel cells (a ViT with 8x8 patches sees one cell per patch), each a circle, a
square or a triangle. Objects are stored by colour: `cell[c]`, `shape[c]` belong to
the object of colour c. Positions are cell centres, so the distance between two objects
is the Euclidean distance between their cells (in cells).

Question types (QUESTION_TYPES), each about the object of one colour:

  non-relational  shape           its shape
                  horizontal      is it on the left (columns 0-1) or the right (2-3)
                  vertical        is it at the top (rows 0-1) or the bottom (2-3)
  relational      closest_shape   the shape of the object closest to it
                  furthest_shape  the shape of the object furthest from it
                  count           how many objects (it included) have its shape: 1..6

"The closest object" must be one object: a question whose nearest (or furthest) other
objects are tied in distance is never asked; the colour is drawn among those whose
answer is unique, and a scene where no colour has one is drawn again.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

GRID = 4  # cells per side
CELL_SIZE = 8  # pixels per cell side
IMAGE_SIZE = GRID * CELL_SIZE
OBJECT_SIZE = 7  # an object's pixels: rows and columns 0..6 of its cell

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "orange", "grey", "yellow")
COLOUR_RGB = np.array([[255, 0, 0], [0, 200, 0], [0, 0, 255], [255, 140, 0], [150, 150, 150],
                       [255, 255, 0]], np.uint8)
NUM_OBJECTS = len(COLOURS)  # one object per colour

QUESTION_TYPES = ("shape", "horizontal", "vertical", "closest_shape", "furthest_shape", "count")
RELATIONAL_TYPES = frozenset({"closest_shape", "furthest_shape", "count"})
RELATIONAL_NAMES = ("non_relational", "relational")
HORIZONTAL = ("left", "right")
VERTICAL = ("top", "bottom")
COUNTS = tuple(str(n) for n in range(1, NUM_OBJECTS + 1))
ANSWERS = SHAPES + HORIZONTAL + VERTICAL + COUNTS  # the `answer` classes, in this order
CELL_NAMES = tuple(f"row {r} column {k}" for r in range(GRID) for k in range(GRID))


def _shape_masks() -> np.ndarray:
  """bool [3 shapes, 8, 8]: circle, square, triangle (apex up) in the top-left 7x7."""
  y, x = np.mgrid[0:OBJECT_SIZE, 0:OBJECT_SIZE] - OBJECT_SIZE // 2  # -3..3
  circle = y ** 2 + x ** 2 <= 10  # rows 3, 5, 7, 7, 7, 5, 3 pixels wide
  square = np.ones((OBJECT_SIZE, OBJECT_SIZE), bool)
  triangle = 2 * np.abs(x) <= y + 3  # rows 1, 1, 3, 3, 5, 5, 7 pixels wide
  masks = np.zeros((len(SHAPES), CELL_SIZE, CELL_SIZE), bool)
  masks[:, :OBJECT_SIZE, :OBJECT_SIZE] = [circle, square, triangle]
  return masks


MASKS = _shape_masks()


@dataclasses.dataclass(frozen=True)
class Scene:
  """One scene; index c of each array is the object of colour COLOURS[c]."""

  cell: np.ndarray  # int64 [6], distinct, in 0..15: row * GRID + column
  shape: np.ndarray  # int64 [6], index into SHAPES

  @property
  def row(self) -> np.ndarray:
    return self.cell // GRID

  @property
  def column(self) -> np.ndarray:
    return self.cell % GRID

  def key(self) -> tuple[int, ...]:
    """Hashable content: two scenes with equal keys render to the same image."""
    return tuple(self.cell.tolist()) + tuple(self.shape.tolist())

  def description(self) -> str:
    """Canonical text, colours in COLOURS order: "red circle at row 0 column 2; ..."."""
    return "; ".join(f"{COLOURS[c]} {SHAPES[s]} at row {r} column {k}" for c, (s, r, k) in
                     enumerate(zip(self.shape.tolist(), self.row.tolist(),
                                   self.column.tolist(), strict=True)))


_DESCRIPTION_PART = re.compile(r"(\w+) (\w+) at row (\d+) column (\d+)")


def parse_description(text: str) -> Scene:
  """The inverse of `Scene.description`."""
  cell = np.zeros(NUM_OBJECTS, np.int64)
  shape = np.zeros(NUM_OBJECTS, np.int64)
  for part in text.split("; "):
    match = _DESCRIPTION_PART.fullmatch(part)
    if match is None:
      raise ValueError(f"not a scene description part: '{part}'")
    colour, name, row, column = match.groups()
    c = COLOURS.index(colour)
    cell[c] = int(row) * GRID + int(column)
    shape[c] = SHAPES.index(name)
  return Scene(cell, shape)


def sample_scene(rng: np.random.Generator) -> Scene:
  """Six distinct random cells, one per colour, and a uniform random shape for each."""
  return Scene(cell=rng.choice(GRID * GRID, size=NUM_OBJECTS, replace=False).astype(np.int64),
               shape=rng.integers(len(SHAPES), size=NUM_OBJECTS).astype(np.int64))


def squared_distances(scene: Scene) -> np.ndarray:
  """int64 [6, 6]: squared distance in cells between the objects of colours i and j."""
  dr = scene.row[:, None] - scene.row[None, :]
  dc = scene.column[:, None] - scene.column[None, :]
  return dr ** 2 + dc ** 2


def answer_objects(scene: Scene) -> dict[str, list[int | None]]:
  """{question type: for the object of each colour, the colour index of the object its
  answer reports}: the closest (furthest) other object for closest_shape
  (furthest_shape), None where that object is not unique; the asked object itself for
  the other types (its shape, its position, the shape whose objects are counted)."""
  distance = squared_distances(scene)
  own = list(range(NUM_OBJECTS))
  found = {}
  for question_type, sign in (("closest_shape", 1), ("furthest_shape", -1)):
    # Each object itself is pushed out of reach: past every other object's distance.
    signed = sign * distance + np.eye(NUM_OBJECTS, dtype=np.int64) * 4 * GRID ** 2
    unique = (signed == signed.min(axis=1, keepdims=True)).sum(axis=1) == 1
    found[question_type] = [j if ok else None for j, ok in
                            zip(signed.argmin(axis=1).tolist(), unique.tolist(), strict=True)]
  return {question_type: found.get(question_type, own) for question_type in QUESTION_TYPES}


def answers(scene: Scene) -> dict[str, list[str | None]]:
  """{question type: the answer (an ANSWERS name) about the object of each colour}; None
  where the closest or furthest other object is not unique (the question is ambiguous)."""
  shapes = scene.shape.tolist()
  objects = answer_objects(scene)
  return {
      "shape": [SHAPES[s] for s in shapes],
      "horizontal": [HORIZONTAL[int(k >= GRID // 2)] for k in scene.column.tolist()],
      "vertical": [VERTICAL[int(r >= GRID // 2)] for r in scene.row.tolist()],
      **{question_type: [None if j is None else SHAPES[shapes[j]]
                         for j in objects[question_type]]
         for question_type in ("closest_shape", "furthest_shape")},
      "count": [COUNTS[shapes.count(s) - 1] for s in shapes],
  }


def answer(scene: Scene, question_type: str, colour: int) -> str | None:
  """`answers(scene)[question_type][colour]`: one answer, None if ambiguous."""
  if question_type not in QUESTION_TYPES:
    raise ValueError(f"unknown question type '{question_type}'; expected one of "
                     f"{', '.join(QUESTION_TYPES)}")
  return answers(scene)[question_type][colour]


def render(scenes: list[Scene]) -> np.ndarray:
  """uint8 [n, 32, 32, 3]: each object's mask in its colour, on black."""
  grid = np.zeros((len(scenes), GRID * GRID, CELL_SIZE, CELL_SIZE, 3), np.uint8)
  for i, scene in enumerate(scenes):
    mask = MASKS[scene.shape]  # [6, 8, 8]
    grid[i, scene.cell] = mask[..., None] * COLOUR_RGB[:, None, None, :]
  grid = grid.reshape(len(scenes), GRID, GRID, CELL_SIZE, CELL_SIZE, 3).transpose(0, 1, 3, 2,
                                                                                   4, 5)
  return grid.reshape(len(scenes), IMAGE_SIZE, IMAGE_SIZE, 3)


# ---- Questions: several wordings per type; {o} names the object by its colour.

OBJECT_WORDS = ("object", "one", "thing", "item")
TEMPLATES = {
    "shape": (
        "What shape is the {o}?",
        "What is the shape of the {o}?",
        "Is the {o} a circle, a square or a triangle?",
        "Tell me the shape of the {o}.",
        "The {o}: what shape is it?",
        "Which shape does the {o} have?",
    ),
    "horizontal": (
        "Is the {o} on the left or the right?",
        "Is the {o} on the left side or the right side of the image?",
        "Which side is the {o} on, left or right?",
        "On which side of the picture is the {o}, left or right?",
        "Left or right: where is the {o}?",
        "Is the {o} in the left half or the right half?",
    ),
    "vertical": (
        "Is the {o} at the top or the bottom?",
        "Is the {o} in the top half or the bottom half of the image?",
        "Is the {o} nearer the top or the bottom of the picture?",
        "Top or bottom: where is the {o}?",
        "Which half is the {o} in, top or bottom?",
        "Is the {o} up at the top or down at the bottom?",
    ),
    "closest_shape": (
        "What is the shape of the object closest to the {o}?",
        "What shape is the object nearest to the {o}?",
        "Look at the {o}. What shape is the object closest to it?",
        "The object closest to the {o} is what shape?",
        "Which shape is nearest the {o}: a circle, a square or a triangle?",
        "What shape is the {o}'s nearest neighbour?",
    ),
    "furthest_shape": (
        "What is the shape of the object furthest from the {o}?",
        "What shape is the object farthest from the {o}?",
        "Look at the {o}. What shape is the object furthest away from it?",
        "The object farthest away from the {o} is what shape?",
        "Which shape is furthest from the {o}: a circle, a square or a triangle?",
        "What shape is the object at the greatest distance from the {o}?",
    ),
    "count": (
        "How many objects have the same shape as the {o}, including it?",
        "Counting the {o} itself, how many objects share its shape?",
        "Including the {o}, how many objects are the same shape as it?",
        "How many objects are shaped like the {o}, the {c} one included?",
        "How many shapes in the picture match the shape of the {o}, counting it too?",
        "Including itself, how many objects have the {o}'s shape?",
    ),
}


def _pick(rng: np.random.Generator, options):
  return options[int(rng.random() * len(options))]


def question(question_type: str, colour: int, rng: np.random.Generator) -> str:
  """One wording of a question of `question_type` about the object of `colour`."""
  name = COLOURS[colour]
  return _pick(rng, TEMPLATES[question_type]).format(o=f"{name} {_pick(rng, OBJECT_WORDS)}",
                                                     c=name)


def ask(scene: Scene, rng: np.random.Generator) -> list[tuple[str, int, str, int]] | None:
  """(question type, colour, answer, answer object's colour) for each of QUESTION_TYPES,
  the colour drawn uniformly among those whose answer is unique; None if some type has no
  such colour."""
  asked = []
  objects = answer_objects(scene)
  for question_type, per_colour in answers(scene).items():
    valid = [c for c, name in enumerate(per_colour) if name is not None]
    if not valid:
      return None
    colour = _pick(rng, valid)
    asked.append((question_type, colour, per_colour[colour], objects[question_type][colour]))
  return asked


def make_split(num_scenes: int, seed: int, *, first_id: int = 0,
               exclude: set[tuple[int, ...]] | None = None) -> dict:
  """`num_scenes` distinct scenes drawn from `seed`, none of whose keys is in `exclude`
  (the scenes of other splits; the new keys are added to it), each asked one question
  of every type: 6 * num_scenes examples, scene by scene, types in QUESTION_TYPES order.

  Returns the example columns: `image` uint8 [N, 32, 32, 3], `question` and `scene`
  (`Scene.description`) strings, `answer` (index into ANSWERS), `question_type` (index
  into QUESTION_TYPES), `relational` (0/1), `colour` (the asked object's, index into
  COLOURS), `object_cell` (the asked object's cell, 0..15), `answer_cell` (the cell of the
  object the answer reports, see `answer_objects`), `scene_id` (first_id + scene
  number), and per shape name (`circle`, `square`, `triangle`) how many objects of the
  scene have that shape (0..6).
  """
  seen = exclude if exclude is not None else set()
  scene_rng, question_rng = (np.random.default_rng(s)
                             for s in np.random.SeedSequence(seed).spawn(2))
  scenes, asked = [], []
  while len(scenes) < num_scenes:
    scene = sample_scene(scene_rng)
    if scene.key() in seen:
      continue
    questions = ask(scene, scene_rng)
    if questions is None:
      continue
    seen.add(scene.key())
    scenes.append(scene)
    asked.append(questions)
  images = render(scenes)
  columns = {name: [] for name in ("image", "question", "scene", "answer", "question_type",
                                   "relational", "colour", "object_cell", "answer_cell",
                                   "scene_id", *SHAPES)}
  for number, (scene, image, questions) in enumerate(zip(scenes, images, asked, strict=True)):
    description = scene.description()
    for question_type, colour, name, reported in questions:
      columns["image"].append(image)
      columns["question"].append(question(question_type, colour, question_rng))
      columns["scene"].append(description)
      columns["answer"].append(ANSWERS.index(name))
      columns["question_type"].append(QUESTION_TYPES.index(question_type))
      columns["relational"].append(int(question_type in RELATIONAL_TYPES))
      columns["colour"].append(colour)
      columns["object_cell"].append(int(scene.cell[colour]))
      columns["answer_cell"].append(int(scene.cell[reported]))
      columns["scene_id"].append(first_id + number)
      for index, shape_name in enumerate(SHAPES):
        columns[shape_name].append(int((scene.shape == index).sum()))
  columns["image"] = np.stack(columns["image"]) if scenes else np.zeros(
      (0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
  for name in ("answer", "question_type", "relational", "colour", "object_cell", "answer_cell",
               "scene_id", *SHAPES):
    columns[name] = np.asarray(columns[name], np.int64)
  return columns
