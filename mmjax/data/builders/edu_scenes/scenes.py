"""Scenes of coloured shapes and handwritten digits on a 2x2 grid, and their captions.

Pure numpy, no tfds: `make_split(num, pool, images, digits, seed)` draws `num` scenes
from `seed`, renders them as uint8 [16, 16, 3] images and describes each one in varied
English, the same every time for the same arguments.

A scene is either one "large" object scaled x2 to fill the canvas, or 1 to 3 objects in
distinct 8x8 cells (top left, top right, bottom left, bottom right). An object is a
shape (circle, square, triangle, cross; filled or outlined) in one of six colours, or a
real handwritten digit from `load_digits` drawn grey. Captions name every object and
its cell (never the empty cells) in one of several wordings, listing the objects in a
random order; the canonical `scene` string names the same content in one fixed form.
"""

from __future__ import annotations

import dataclasses
import itertools
import re

import numpy as np

from mmjax.data.builders.edu_grading.questions import NUMBER_WORDS

IMAGE_SIZE = 16
CELL_SIZE = 8
CELLS = ("top left", "top right", "bottom left", "bottom right")  # fixed cell order
CELL_PHRASES = (
    ("top left", "upper left", "top-left corner", "top left corner", "upper-left corner"),
    ("top right", "upper right", "top-right corner", "top right corner", "upper-right corner"),
    ("bottom left", "lower left", "bottom-left corner", "bottom left corner",
     "lower-left corner"),
    ("bottom right", "lower right", "bottom-right corner", "bottom right corner",
     "lower-right corner"),
)

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = ("red", "green", "blue", "yellow", "purple", "cyan")  # purple: magenta (1, 0, 1)
COLOUR_RGB = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]],
                      np.uint8)
DIGIT_WORDS = tuple(NUMBER_WORDS[:10])
CATEGORIES = SHAPES + DIGIT_WORDS  # category i < 4: a shape; i >= 4: the digit i - 4
NUM_SHAPES = len(SHAPES)

# Scene types: large (one object over the whole canvas), then 1, 2 or 3 objects in cells.
SCENE_TYPE_P = (0.15, 0.20, 0.30, 0.35)
P_LARGE_ONE_OBJECT = 0.4  # share of large scenes in one-object splits (`one_object=True`)
P_DIGIT = 0.5  # an object is a handwritten digit, else a shape
BRIGHTNESS = (192, 256)  # a shape's colour channels are drawn in [192, 256)
MAX_OBJECTS = 3
MAX_CAPTION_TOKENS = 40  # WordPiece tokens, [CLS] and [SEP] included


def _shape_masks() -> np.ndarray:
  """bool [4 shapes, 2 styles (filled, outlined), 8, 8]."""
  y, x = np.mgrid[0:CELL_SIZE, 0:CELL_SIZE] + 0.5 - CELL_SIZE / 2
  ay, ax = np.abs(y), np.abs(x)
  plus = lambda half_width, half_length: (  # noqa: E731
      ((ax < half_width) & (ay < half_length)) | ((ay < half_width) & (ax < half_length)))
  disc = np.hypot(y, x) <= 3.6
  square = (ay < 3.5) & (ax < 3.5)
  row = y + CELL_SIZE / 2  # 0.5 .. 7.5 from the top
  triangle = (row > 1) & (row < 7.5) & (ax <= (row - 0.5) * 0.6)
  triangle_inside = (row > 3) & (row < 6.5) & (ax <= (row - 2.5) * 0.6)
  wide_plus = plus(2, 4)
  return np.array([
      [disc, disc & (np.hypot(y, x) > 2.4)],
      [square, square & ~((ay < 2.5) & (ax < 2.5))],
      [triangle, triangle & ~triangle_inside],
      [plus(1, 3.5), wide_plus & ~plus(1, 3)],
  ])


MASKS = _shape_masks()


@dataclasses.dataclass(frozen=True)
class Scenes:
  """`n` scenes as arrays; axis 1 of the [n, 4] arrays is the cell, in CELLS order.

  `kind` is the object's category (-1: empty cell); a shape has a `colour`, a `style`
  (0 filled, 1 outlined) and a `brightness`, a digit an `image_id` into `load_digits`
  (-1 for shapes and empty cells; the other fields are 0 where they do not apply). A
  large scene keeps its one object in cell 0 and draws it over the whole canvas.
  """

  large: np.ndarray  # bool [n]
  kind: np.ndarray  # int64 [n, 4]
  colour: np.ndarray  # int64 [n, 4]
  style: np.ndarray  # int64 [n, 4]
  brightness: np.ndarray  # int64 [n, 4]
  image_id: np.ndarray  # int64 [n, 4]

  def __len__(self) -> int:
    return len(self.large)

  def take(self, indices) -> Scenes:
    return Scenes(**{f.name: getattr(self, f.name)[indices] for f in dataclasses.fields(self)})

  @staticmethod
  def concatenate(parts: list[Scenes]) -> Scenes:
    return Scenes(**{f.name: np.concatenate([getattr(p, f.name) for p in parts])
                     for f in dataclasses.fields(Scenes)})

  @property
  def num_objects(self) -> np.ndarray:
    return (self.kind >= 0).sum(axis=1)

  @property
  def category(self) -> np.ndarray:
    """The kind of the object in the first non-empty cell."""
    return self.kind[np.arange(len(self)), np.argmax(self.kind >= 0, axis=1)]

  @property
  def first_image_id(self) -> np.ndarray:
    """`image_id` of the first digit in cell order, -1 if the scene has none."""
    has_digit = self.image_id >= 0
    first = self.image_id[np.arange(len(self)), np.argmax(has_digit, axis=1)]
    return np.where(has_digit.any(axis=1), first, -1)


def sample_scenes(num: int, pool: np.ndarray, digits: np.ndarray, rng: np.random.Generator,
                  *, one_object: bool = False) -> Scenes:
  """`num` random scenes whose digits are images from `pool` (indices into `digits`).

  With `one_object`, every scene has one object (large or in one cell) and the
  categories are balanced (each occurs num // 14 or num // 14 + 1 times).
  """
  scene_type = rng.choice(len(SCENE_TYPE_P), size=num, p=SCENE_TYPE_P)
  large = scene_type == 0
  num_objects = np.maximum(scene_type, 1)
  if one_object:
    large = rng.random(num) < P_LARGE_ONE_OBJECT
    num_objects = np.ones(num, np.int64)
  shape = (num, MAX_OBJECTS)
  kind = np.where(rng.random(shape) < P_DIGIT, NUM_SHAPES + rng.integers(10, size=shape),
                  rng.integers(NUM_SHAPES, size=shape))
  if one_object:
    kind[:, 0] = rng.permutation(np.arange(num) % len(CATEGORIES))
  is_digit = kind >= NUM_SHAPES
  colour = np.where(is_digit, 0, rng.integers(len(COLOURS), size=shape))
  style = np.where(is_digit, 0, rng.integers(2, size=shape))
  brightness = np.where(is_digit, 0, rng.integers(*BRIGHTNESS, size=shape))
  image_id = np.where(is_digit, _pick_images(kind - NUM_SHAPES, pool, digits, rng.random(shape)),
                      -1)
  # Each scene's objects go to distinct random cells; a large scene's to cell 0.
  cell = np.where(large[:, None], 0, np.argsort(rng.random((num, 4)), axis=1)[:, :MAX_OBJECTS])
  rows, slots = np.nonzero(np.arange(MAX_OBJECTS) < num_objects[:, None])
  cells = cell[rows, slots]

  def scatter(values: np.ndarray, empty: int) -> np.ndarray:
    out = np.full((num, 4), empty, np.int64)
    out[rows, cells] = values[rows, slots]
    return out

  return Scenes(large=large, kind=scatter(kind, -1), colour=scatter(colour, 0),
                style=scatter(style, 0), brightness=scatter(brightness, 0),
                image_id=scatter(image_id, -1))


def _pick_images(digit: np.ndarray, pool: np.ndarray, digits: np.ndarray,
                 uniform: np.ndarray) -> np.ndarray:
  """For each `digit` (an array; entries outside 0..9 give -1), an image of that digit
  from `pool`, chosen by `uniform` in [0, 1)."""
  by_digit = [pool[digits[pool] == d] for d in range(10)]
  if any(len(ids) == 0 for ids in by_digit):
    raise ValueError("the image pool needs at least one image of every digit")
  counts = np.array([len(ids) for ids in by_digit])
  table = np.full((10, counts.max()), -1, np.int64)
  for d, ids in enumerate(by_digit):
    table[d, :len(ids)] = ids
  valid = (digit >= 0) & (digit < 10)
  d = np.where(valid, digit, 0)
  return np.where(valid, table[d, (uniform * counts[d]).astype(np.int64)], -1)


def render(scenes: Scenes, images: np.ndarray) -> np.ndarray:
  """uint8 [n, 16, 16, 3] images of `scenes`; `images` are `load_digit_images()`'s."""
  num = len(scenes)
  is_shape = (scenes.kind >= 0) & (scenes.kind < NUM_SHAPES)
  is_digit = scenes.kind >= NUM_SHAPES
  cells = np.zeros((num, 4, CELL_SIZE, CELL_SIZE, 3), np.uint8)
  mask = MASKS[scenes.kind[is_shape], scenes.style[is_shape]]  # [m, 8, 8]
  colour = COLOUR_RGB[scenes.colour[is_shape]] * scenes.brightness[is_shape, None].astype(
      np.uint8)  # [m, 3]; brightness < 256
  cells[is_shape] = mask[..., None] * colour[:, None, None, :]
  cells[is_digit] = images[scenes.image_id[is_digit]]  # grey: [m, 8, 8, 1] on 3 channels
  canvas = cells.reshape(num, 2, 2, CELL_SIZE, CELL_SIZE, 3).transpose(0, 1, 3, 2, 4, 5)
  canvas = canvas.reshape(num, IMAGE_SIZE, IMAGE_SIZE, 3)
  canvas[scenes.large] = cells[scenes.large, 0].repeat(2, axis=1).repeat(2, axis=2)
  return canvas


def object_name(kind: int, colour: int) -> str:
  """Canonical name of an object: "red circle" or "digit 7"."""
  if kind >= NUM_SHAPES:
    return f"digit {kind - NUM_SHAPES}"
  return f"{COLOURS[colour]} {SHAPES[kind]}"


def scene_strings(scenes: Scenes) -> list[str]:
  """Canonical descriptions: "large:digit 7", "top left=red circle;bottom right=digit 7"."""
  names = []
  for large, kinds, colours in zip(scenes.large.tolist(), scenes.kind.tolist(),
                                   scenes.colour.tolist(), strict=True):
    if large:
      names.append("large:" + object_name(kinds[0], colours[0]))
    else:
      names.append(";".join(f"{CELLS[c]}={object_name(k, colours[c])}"
                            for c, k in enumerate(kinds) if k >= 0))
  return names


# ---- Captions. {size} is "" or "large "/"big " (large scenes only); {n} a digit as a
# numeral or a word, {w} always a word. "a" becomes "an" where English wants it.

SIZE_WORDS = ("large", "big")
STYLE_WORDS = (("filled", "solid"), ("outlined", "hollow"))
P_STYLE_WORD = 0.25  # a shape (not a cross) is said to be filled / outlined
P_NUMERAL = 0.5
DIGIT_PHRASES = (
    "a {size}handwritten {n}",
    "a {size}handwritten digit {n}",
    "the {size}digit {n}",
    "a {size}written {w}",
    "the {size}number {w} written by hand",
    "a {size}{w} written by hand",
    "a {size}hand-written number {n}",
)
# Scenes with objects in cells: (prefix, one object's part, separator, suffix). The parts
# are joined as a list ("x, y and z") where the separator is None.
PLACED_TEMPLATES = (
    ("", "{o} in the {p}", None, ""),
    ("", "{p}: {o}.", " ", ""),
    ("there is ", "{o} at the {p}", None, "."),
    ("a picture of ", "{o} in the {p}", None, ""),
    ("an image showing ", "{o} at the {p}", None, ""),
    ("", "in the {p}, {o}", "; ", "."),
    ("{count}: ", "{o} ({p})", None, ""),
    ("", "the {p} shows {o}", None, "."),
    ("on a black background, ", "{o} in the {p}", None, "."),
)
COUNT_PHRASES = ("one object", "two objects", "three objects")
LARGE_TEMPLATES = (
    "{o}",
    "{o}.",
    "there is {o}.",
    "a picture of {o}",
    "an image showing {o}",
    "{o} filling the whole image",
    "{o} covering the picture",
    "whole image: {o}.",
    "one object: {o}, drawn across the whole image",
)
PERMUTATIONS = [list(itertools.permutations(range(k))) for k in range(MAX_OBJECTS + 1)]
MAX_CAPTION_TRIES = 20

_ARTICLE = re.compile(r"\b([Aa]) (?=[aeiu]|o(?!ne\b)|8\b)")  # "a eight" -> "an eight"
_PRE_TOKEN = re.compile(r"\w+|[^\w\s]")  # BERT pre-tokenisation: words and punctuation


def _pick(rng: np.random.Generator, options):
  return options[int(rng.random() * len(options))]


def pre_token_count(text: str) -> int:
  """WordPiece tokens of `text` with [CLS] and [SEP], if every word is in the vocabulary."""
  return len(_PRE_TOKEN.findall(text)) + 2


def object_phrase(kind: int, colour: int, style: int, rng: np.random.Generator,
                  size: str = "") -> str:
  """One wording of an object, e.g. "a red circle", "the number seven written by hand"."""
  size = size and size + " "
  if kind >= NUM_SHAPES:
    digit = kind - NUM_SHAPES
    number = str(digit) if rng.random() < P_NUMERAL else DIGIT_WORDS[digit]
    return _pick(rng, DIGIT_PHRASES).format(size=size, n=number, w=DIGIT_WORDS[digit])
  style_word = ""
  if SHAPES[kind] != "cross" and rng.random() < P_STYLE_WORD:
    style_word = _pick(rng, STYLE_WORDS[style]) + " "
  return f"a {size}{style_word}{COLOURS[colour]} {SHAPES[kind]}"


def describe(large: bool, objects: list[tuple[int, int, int, int]],
             rng: np.random.Generator) -> str:
  """A caption of one scene; `objects` are (cell, kind, colour, style) in cell order.

  Redraws the wording (at most MAX_CAPTION_TRIES times, then falls back to a short
  plain one) until the caption fits MAX_CAPTION_TOKENS.
  """
  for _ in range(MAX_CAPTION_TRIES):
    caption = _ARTICLE.sub(r"\1n ", _wording(large, objects, rng))
    if pre_token_count(caption) <= MAX_CAPTION_TOKENS:
      return caption
  if large:
    (_, kind, colour, _), = objects
    return f"a large {object_name(kind, colour)}"
  return _join([f"a {object_name(k, c)} in the {CELLS[cell]}" for cell, k, c, _ in objects])


def _wording(large: bool, objects: list[tuple[int, int, int, int]],
             rng: np.random.Generator) -> str:
  if large:
    (_, kind, colour, style), = objects
    phrase = object_phrase(kind, colour, style, rng, size=_pick(rng, SIZE_WORDS))
    return _pick(rng, LARGE_TEMPLATES).format(o=phrase)
  prefix, part, separator, suffix = _pick(rng, PLACED_TEMPLATES)
  order = _pick(rng, PERMUTATIONS[len(objects)])
  parts = []
  for i in order:
    cell, kind, colour, style = objects[i]
    parts.append(part.format(o=object_phrase(kind, colour, style, rng),
                             p=_pick(rng, CELL_PHRASES[cell])))
  body = _join(parts) if separator is None else separator.join(parts)
  return prefix.format(count=COUNT_PHRASES[len(objects) - 1]) + body + suffix


def _join(items: list[str]) -> str:
  """"x", "x and y", "x, y and z"."""
  return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def captions(scenes: Scenes, rng: np.random.Generator) -> list[str]:
  out = []
  for large, kinds, colours, styles in zip(scenes.large.tolist(), scenes.kind.tolist(),
                                           scenes.colour.tolist(), scenes.style.tolist(),
                                           strict=True):
    objects = [(c, k, colours[c], styles[c]) for c, k in enumerate(kinds) if k >= 0]
    out.append(describe(large, objects, rng))
  return out


def make_split(num: int, pool: np.ndarray, images: np.ndarray, digits: np.ndarray, seed: int,
               *, unique: bool = False, one_object: bool = False) -> dict:
  """`num` examples drawn from `seed`, with digit images from `pool` only.

  `images`, `digits`: `load_digit_images()`. With `unique`, no two examples share a
  `scene` string (duplicates are rejected while drawing, so the few distinct large and
  one-object scenes are rarer than in SCENE_TYPE_P). Returns the example columns (`image`,
  `caption`, `scene`, `category`, `num_objects`, `image_id`) and the `scenes` drawn.
  """
  layout_rng, caption_rng = (np.random.default_rng(s)
                             for s in np.random.SeedSequence(seed).spawn(2))
  if unique:
    parts, names, seen = [], [], set()
    while len(names) < num:
      candidates = sample_scenes(num, pool, digits, layout_rng, one_object=one_object)
      keep = []
      for i, name in enumerate(scene_strings(candidates)):
        if name not in seen and len(names) < num:
          seen.add(name)
          names.append(name)
          keep.append(i)
      if not keep:
        raise ValueError(f"only {len(names)} distinct scenes found; {num} were asked for")
      parts.append(candidates.take(np.asarray(keep, np.int64)))
    drawn = Scenes.concatenate(parts)
  else:
    drawn = sample_scenes(num, pool, digits, layout_rng, one_object=one_object)
    names = scene_strings(drawn)
  return {
      "image": render(drawn, images),
      "caption": captions(drawn, caption_rng),
      "scene": names,
      "category": drawn.category,
      "num_objects": drawn.num_objects.astype(np.int32),
      "image_id": drawn.first_image_id.astype(np.int32),
      "scenes": drawn,
  }
