"""Short clips of two coloured shapes moving in straight lines, and questions about the motion.

Pure numpy, no tfds: `make_split(num_clips, seed)` draws clips from `seed`, renders each
as uint8 [NUM_FRAMES, 32, 32, 3] frames and asks one question about it, the same every
time for the same arguments.

A clip holds two objects of two distinct COLOURS (each a circle, square or triangle, the
7x7 masks of `shapes_relational`) on mid-grey. Each moves in a straight line for the whole
clip, in one of the four DIRECTIONS at 1 or 2 pixels per frame (7 or 14 pixels over the
8 frames), the two in different directions, starting at a random position from which it
stays inside the frame. The objects' 7x7 boxes never overlap in any frame, so every
pixel of a colour belongs to its object and its centroid moves exactly with it.

Question types (QUESTION_TYPES), one per clip, cycling so that each split is balanced:

  direction  "Which way does the red circle move?"              left, right, up, down
  yes_no     "Is the blue square moving up?"                    yes, no
  which      "What colour is the shape that moves to the left?" a colour

The answer needs the video (a direction is a change between frames) and, since the two
objects move differently, the text (which object, or which direction, is asked about).
For `yes_no`, half the answers are "yes"; half the "no" questions name the other object's
direction, so a model must tie each motion to its object. A single frame still gives a
hint: an object starting near the left edge cannot be moving left. The best guess of a
direction from one frame is right at most 44 % of the time (`single_frame_accuracy`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mmjax.data.builders.shapes_relational.scenes import MASKS as CELL_MASKS
from mmjax.data.builders.shapes_relational.scenes import SHAPES

NUM_FRAMES = 8
FRAME_SIZE = 32  # pixels per frame side
OBJECT_SIZE = 7
MASKS = CELL_MASKS[:, :OBJECT_SIZE, :OBJECT_SIZE]  # bool [3 shapes, 7, 7]
MAX_POSITION = FRAME_SIZE - OBJECT_SIZE  # top-left corners 0..25 keep an object inside

# Mid-grey: about 0 once pixels are scaled to [-1, 1], so an empty patch embeds to about the
# patch embedding's bias and the objects carry the variation. On black (-1) every empty
# patch got the same large embedding, and a video tower with zero-initialised heads
# learned neither which colours a clip shows nor how they move (measured, 1,000 steps).
BACKGROUND = 128
COLOURS = ("red", "green", "blue", "yellow")
COLOUR_RGB = np.array([[255, 0, 0], [0, 200, 0], [0, 0, 255], [255, 255, 0]], np.uint8)
DIRECTIONS = ("left", "right", "up", "down")
# (row, column) step per frame of each direction, rows growing downwards as in images.
STEPS = np.array([[0, -1], [0, 1], [-1, 0], [1, 0]], np.int64)
SPEEDS = (1, 2)  # pixels per frame
NUM_OBJECTS = 2

# What each colour does in a clip (the `motion_<colour>` features): absent, or a direction.
MOTIONS = ("absent",) + DIRECTIONS

QUESTION_TYPES = ("direction", "yes_no", "which")
YES_NO = ("no", "yes")
ANSWERS = DIRECTIONS + YES_NO + COLOURS  # the `answer` classes, in this order


@dataclasses.dataclass(frozen=True)
class Clip:
  """Two moving objects; index i of each array is object i.

  Object i's top-left corner in frame t is `start[i] + t * speed[i] * STEPS[direction[i]]`.
  """

  colour: np.ndarray  # int64 [2], distinct, index into COLOURS
  shape: np.ndarray  # int64 [2], index into SHAPES
  direction: np.ndarray  # int64 [2], distinct, index into DIRECTIONS
  speed: np.ndarray  # int64 [2], pixels per frame
  start: np.ndarray  # int64 [2, 2], (row, column) of the top-left corner in frame 0

  def corners(self) -> np.ndarray:
    """int64 [NUM_FRAMES, 2 objects, 2]: each object's (row, column) in each frame."""
    t = np.arange(NUM_FRAMES)[:, None, None]
    return self.start[None] + t * (self.speed[:, None] * STEPS[self.direction])[None]

  def key(self) -> tuple[int, ...]:
    """Hashable content: two clips with equal keys render to the same frames."""
    return tuple(np.concatenate([self.colour, self.shape, self.direction, self.speed,
                                 self.start.ravel()]).tolist())

  def description(self) -> str:
    """Canonical text: "red circle from row 3 column 0 moving right 2 px/frame; ..."."""
    return "; ".join(
        f"{COLOURS[c]} {SHAPES[s]} from row {r} column {k} moving {DIRECTIONS[d]} {v} px/frame"
        for c, s, d, v, (r, k) in zip(self.colour.tolist(), self.shape.tolist(),
                                      self.direction.tolist(), self.speed.tolist(),
                                      self.start.tolist(), strict=True))


def _start_range(step: int, speed: int) -> tuple[int, int]:
  """[low, high] of the frame-0 coordinate along an axis with this per-frame step sign,
  so that every frame's coordinate stays in 0..MAX_POSITION."""
  travel = (NUM_FRAMES - 1) * speed
  if step > 0:
    return 0, MAX_POSITION - travel
  if step < 0:
    return travel, MAX_POSITION
  return 0, MAX_POSITION


def sample_clip(rng: np.random.Generator) -> Clip:
  """A random clip whose objects' boxes do not overlap in any frame (drawn again until so)."""
  while True:
    colour = rng.choice(len(COLOURS), size=NUM_OBJECTS, replace=False).astype(np.int64)
    shape = rng.integers(len(SHAPES), size=NUM_OBJECTS).astype(np.int64)
    direction = rng.choice(len(DIRECTIONS), size=NUM_OBJECTS, replace=False).astype(np.int64)
    speed = np.asarray(SPEEDS, np.int64)[rng.integers(len(SPEEDS), size=NUM_OBJECTS)]
    start = np.array([[rng.integers(low, high + 1) for low, high in
                       (_start_range(step, v) for step in STEPS[d].tolist())]
                      for d, v in zip(direction.tolist(), speed.tolist(), strict=True)],
                     np.int64)
    clip = Clip(colour, shape, direction, speed, start)
    gap = np.abs(clip.corners()[:, 0] - clip.corners()[:, 1])  # [frames, 2]
    if (gap.max(axis=1) >= OBJECT_SIZE).all():  # apart along rows or columns, every frame
      return clip


def position_given_direction(frame: int) -> np.ndarray:
  """float64 [directions, 26, 26]: P(direction, top-left corner in frame `frame`) for an
  object drawn as `sample_clip` draws one (direction and speed uniform, the start uniform
  over its range), leaving out the two objects' coupling (distinct directions, no
  overlap). Positions given a (direction, speed) are uniform over the rectangle of starts
  shifted by frame * speed * step."""
  joint = np.zeros((len(DIRECTIONS), MAX_POSITION + 1, MAX_POSITION + 1))
  for d, step in enumerate(STEPS.tolist()):
    for speed in SPEEDS:
      (row_low, row_high), (col_low, col_high) = (_start_range(s, speed) for s in step)
      starts = np.zeros_like(joint[d])
      starts[row_low:row_high + 1, col_low:col_high + 1] = 1.0
      shift = tuple(frame * speed * s for s in step)  # stays inside: no wrap-around
      joint[d] += np.roll(starts / starts.sum(), shift, axis=(0, 1))
  return joint / (len(DIRECTIONS) * len(SPEEDS))


def single_frame_accuracy(frame: int) -> float:
  """How often the best guess of an object's direction from its position in one frame
  (its index known) is right: the direction most likely at each position
  (`position_given_direction`), right with probability max_d P(d, position), summed."""
  return float(position_given_direction(frame).max(axis=0).sum())


def render(clips: list[Clip]) -> np.ndarray:
  """uint8 [n, NUM_FRAMES, 32, 32, 3]: each object's mask in its colour, on grey."""
  frames = np.full((len(clips), NUM_FRAMES, FRAME_SIZE, FRAME_SIZE, 3), BACKGROUND, np.uint8)
  for i, clip in enumerate(clips):
    for t, corners in enumerate(clip.corners()):
      for (row, column), c, s in zip(corners.tolist(), clip.colour.tolist(),
                                     clip.shape.tolist(), strict=True):
        window = frames[i, t, row:row + OBJECT_SIZE, column:column + OBJECT_SIZE]
        window[MASKS[s]] = COLOUR_RGB[c]
  return frames


# ---- Questions: several wordings per type; {o} names an object ("red circle"), {d} a
# direction.

TEMPLATES = {
    "direction": (
        "Which way does the {o} move?",
        "In which direction is the {o} moving?",
        "Where is the {o} going: left, right, up or down?",
        "Watch the {o}. Which way does it go?",
        "Is the {o} moving left, right, up or down?",
    ),
    "yes_no": (
        "Is the {o} moving {d}?",
        "Does the {o} move {d}?",
        "Is the {o} going {d}?",
        "Watch the {o}. Does it move {d}?",
        "Yes or no: the {o} moves {d}.",
    ),
    "which": (
        "What colour is the shape that moves {d}?",
        "Which colour is the shape moving {d}?",
        "One shape is going {d}. What colour is it?",
        "What is the colour of the shape that goes {d}?",
        "Name the colour of the shape moving {d}.",
    ),
}
# How a direction reads after "moves"/"going" ("to the left" and "left" both occur).
DIRECTION_WORDS = {"left": ("left", "to the left"), "right": ("right", "to the right"),
                   "up": ("up", "upwards"), "down": ("down", "downwards")}


def _pick(rng: np.random.Generator, options):
  return options[int(rng.random() * len(options))]


def ask(clip: Clip, question_type: str, rng: np.random.Generator
        ) -> tuple[str, str, int, int]:
  """(question, answer (an ANSWERS name), asked object, named direction) about `clip`.

  The asked object is drawn uniformly; `which` names that object's direction (its colour
  is the answer). `yes_no` names the asked object's direction (yes) or, as often, another
  one (no): the other object's direction half the time, else one of the other two.
  """
  obj = int(rng.integers(NUM_OBJECTS))
  other = 1 - obj
  direction = int(clip.direction[obj])
  name = f"{COLOURS[clip.colour[obj]]} {SHAPES[clip.shape[obj]]}"
  template = _pick(rng, TEMPLATES[question_type])
  if question_type == "direction":
    return template.format(o=name), DIRECTIONS[direction], obj, direction
  if question_type == "which":
    text = template.format(d=_pick(rng, DIRECTION_WORDS[DIRECTIONS[direction]]))
    return text, COLOURS[clip.colour[obj]], obj, direction
  if question_type != "yes_no":
    raise ValueError(f"unknown question type '{question_type}'; expected one of "
                     f"{', '.join(QUESTION_TYPES)}")
  if rng.random() < 0.5:
    named, reply = direction, "yes"
  elif rng.random() < 0.5:
    named, reply = int(clip.direction[other]), "no"
  else:
    unused = [d for d in range(len(DIRECTIONS)) if d not in clip.direction.tolist()]
    named, reply = _pick(rng, unused), "no"
  return template.format(o=name, d=_pick(rng, DIRECTION_WORDS[DIRECTIONS[named]])), reply, \
      obj, named


def make_split(num_clips: int, seed: int, *, first_id: int = 0,
               exclude: set[tuple[int, ...]] | None = None) -> dict:
  """`num_clips` distinct clips drawn from `seed`, none of whose keys is in `exclude` (the
  clips of other splits; the new keys are added to it), clip i asked one question of type
  QUESTION_TYPES[i % 3].

  Returns the example columns: `video` uint8 [N, NUM_FRAMES, 32, 32, 3], `question` and
  `clip` (`Clip.description`) strings, `answer` (index into ANSWERS), `question_type`
  (index into QUESTION_TYPES), the asked object's `colour` (COLOURS), `direction`
  (DIRECTIONS) and `speed` (SPEEDS), `named_direction` (the direction the question
  names; the asked object's own for `direction` questions), `clip_id`
  (first_id + clip number) and, for each colour C, `motion_C` (index into MOTIONS:
  how the object of that colour moves, "absent" when the clip has none).
  """
  seen = exclude if exclude is not None else set()
  clip_rng, question_rng = (np.random.default_rng(s)
                            for s in np.random.SeedSequence(seed).spawn(2))
  clips = []
  while len(clips) < num_clips:
    clip = sample_clip(clip_rng)
    if clip.key() not in seen:
      seen.add(clip.key())
      clips.append(clip)
  columns = {name: [] for name in ("question", "clip", "answer", "question_type", "colour",
                                   "direction", "speed", "named_direction", "clip_id",
                                   *(f"motion_{c}" for c in COLOURS))}
  for number, clip in enumerate(clips):
    question_type = QUESTION_TYPES[number % len(QUESTION_TYPES)]
    text, reply, obj, named = ask(clip, question_type, question_rng)
    columns["question"].append(text)
    columns["clip"].append(clip.description())
    columns["answer"].append(ANSWERS.index(reply))
    columns["question_type"].append(QUESTION_TYPES.index(question_type))
    columns["colour"].append(int(clip.colour[obj]))
    columns["direction"].append(int(clip.direction[obj]))
    columns["speed"].append(SPEEDS.index(int(clip.speed[obj])))
    columns["named_direction"].append(named)
    columns["clip_id"].append(first_id + number)
    motion = dict(zip(clip.colour.tolist(), clip.direction.tolist(), strict=True))
    for c, colour in enumerate(COLOURS):
      columns[f"motion_{colour}"].append(MOTIONS.index(DIRECTIONS[motion[c]]) if c in motion
                                         else MOTIONS.index("absent"))
  for name in ("answer", "question_type", "colour", "direction", "speed", "named_direction",
               "clip_id", *(f"motion_{c}" for c in COLOURS)):
    columns[name] = np.asarray(columns[name], np.int64)
  columns["video"] = render(clips)
  return columns
