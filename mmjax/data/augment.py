r"""Data augmentation as registered preprocessing ops, drawn from the seed and the position.

`config.augment` names the ops, big_vision style: one "|"-joined string or a tuple of
strings, each `name` or `name(arg, key=value)` with Python literal arguments. Empty (the
default) is off; only the training iterator augments (`pipeline.train_iterator`),
evaluation never does.

  c.augment = "random_resized_crop(scale=(0.6, 1.0))|color_jitter(0.2)|token_dropout(0.1)"
  --config.augment='translate(0.125)|randaugment(n=2, m=5)'

The ops (`OPS`, name -> factory; the factories' docstrings give their arguments):

  image  random_resized_crop, translate, flip_lr, color_jitter, randaugment: one example's
         image float32 [..., H, W, C] in [-1, 1], any number of channels.
         mixup, cutmix: mix the example with a partner drawn from the training split, and
         the targets of the named heads (classification only): the batch then carries
         `mix_lambda` float32 [B] and `mix_<head>` int32 [B], the partner's targets, and the
         loss is lam CE(<head>) + (1 - lam) CE(mix_<head>) (tasks/classification.py).
  text   token_dropout, span_mask: a row of `text_ids` / `text_mask` after tokenisation;
         [CLS], [SEP] and [PAD] are never dropped or masked.
  audio  gain: one example's waveform float32 [S].
         SpecAugment's time and frequency masks act on the log-mel features, which exist
         only inside the audio tower: `config.model.audio.spec_augment` (models/audio.py).

Determinism: every draw comes from a `np.random.Generator` seeded by (config.seed, the
example's position in the global training stream, the op's index in the list). The
data iterator checkpoints that position, so a resumed run, any number of processes and
any number of reading threads see the same augmented examples; a new epoch (new
positions) draws afresh. Mixing partners are read from the split by index, not from the
batch, for the same reason: a batch's rows are spread over processes.

Label safety: `flip_lr` changes the label of tasks that read handwriting or directions
(handwritten digits, "left of" questions), so it raises a ConfigError unless the config
declares `config.data.flip_safe = True`.

Video: the image ops act on the last three axes and draw once per example, so a clip
[T, H, W, C] would get the same crop, flip and jitter on every frame; add its role to
`IMAGE_ROLES` when the pipeline carries one.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
import numpy as np

from mmjax.config import ConfigError

log = logging.getLogger(__name__)

FIELD = "config.augment"
IMAGE_ROLES = ("image",)  # the roles image ops change (a `video` role [T, H, W, C] fits too)
# Seeds the augmentation streams apart from every other use of config.seed.
_SALT = 0x61756720


@dataclasses.dataclass(frozen=True)
class Op:
  """One parsed op. `stage`: "example" (apply(array, rng) -> array, on each of `roles`
  of one example), "mix" (apply(example, partner, rng) -> example) or "tokens" (apply(ids [T],
  mask [T], rng, special) -> (ids, mask), on one row of the batch after tokenisation)."""

  name: str
  text: str
  roles: tuple[str, ...]  # the inputs it changes
  stage: str
  apply: Callable[..., Any]
  options: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class _Entry:
  factory: Callable[..., Any]
  roles: tuple[str, ...]
  stage: str


OPS: dict[str, _Entry] = {}


def register(name: str, roles: tuple[str, ...], stage: str = "example"):
  """Decorator: `factory(**arguments) -> apply` becomes the op `name` of `config.augment`,
  changing the inputs `roles`."""

  def wrap(factory):
    OPS[name] = _Entry(factory, roles, stage)
    return factory

  return wrap


def _check(condition: bool, message: str) -> None:
  if not condition:
    raise ValueError(message)


def _pair(value: Any, name: str, low: float = -math.inf) -> tuple[float, float]:
  """A (low, high) pair of numbers, low <= high, both >= `low`."""
  _check(isinstance(value, (tuple, list)) and len(value) == 2
         and all(isinstance(v, (int, float)) for v in value),
         f"{name} must be a pair (low, high), got {value!r}")
  _check(low <= value[0] <= value[1], f"{name} must satisfy {low} <= low <= high, got {value!r}")
  return float(value[0]), float(value[1])


def _fraction(value: Any, name: str) -> float:
  _check(isinstance(value, (int, float)) and 0.0 <= value <= 1.0,
         f"{name} must be a number in [0, 1], got {value!r}")
  return float(value)


# ----------------------------------------------------------------------- image helpers


def bilinear(image: np.ndarray, ys: np.ndarray, xs: np.ndarray,
             fill: np.ndarray | None = None) -> np.ndarray:
  """Samples `image` [..., H, W, C] at source coordinates ys, xs [H', W'] (pixel centres at
  integers) -> [..., H', W', C]. Neighbours outside the image read `fill` [..., C], or with
  `fill` None the nearest edge pixel (coordinates clamped)."""
  height, width = image.shape[-3:-1]
  y0, x0 = np.floor(ys), np.floor(xs)
  wy, wx = ys - y0, xs - x0
  out = np.zeros(image.shape[:-3] + ys.shape + image.shape[-1:], np.float64)
  for dy, weight_y in ((0, 1.0 - wy), (1, wy)):
    for dx, weight_x in ((0, 1.0 - wx), (1, wx)):
      yi, xi = (y0 + dy).astype(int), (x0 + dx).astype(int)
      values = image[..., np.clip(yi, 0, height - 1), np.clip(xi, 0, width - 1), :]
      if fill is not None:
        inside = (yi >= 0) & (yi < height) & (xi >= 0) & (xi < width)
        values = np.where(inside[..., None], values, fill[..., None, None, :])
      out += (weight_y * weight_x)[..., None] * values
  return out.astype(np.float32)


def border_mean(image: np.ndarray) -> np.ndarray:
  """Mean of the outermost pixels per channel, [..., C]: the background that geometric ops
  fill uncovered pixels with (black for the digits, the canvas for scenes)."""
  edges = [image[..., 0, :, :], image[..., -1, :, :], image[..., 1:-1, 0, :],
           image[..., 1:-1, -1, :]]
  return np.concatenate(edges, axis=-2).mean(axis=-2)


def affine(image: np.ndarray, matrix: np.ndarray, shift: tuple[float, float] = (0.0, 0.0)
           ) -> np.ndarray:
  """Output pixel p (row, col) reads input `matrix @ (p - centre) + centre - shift`: the
  inverse map of a rotation/shear about the centre followed by a translation by `shift`
  (pixels); uncovered pixels get the border's mean."""
  height, width = image.shape[-3:-1]
  centre = np.array([(height - 1) / 2.0, (width - 1) / 2.0])
  rows, cols = np.meshgrid(np.arange(height, dtype=np.float64),
                           np.arange(width, dtype=np.float64), indexing="ij")
  points = np.stack([rows - centre[0] - shift[0], cols - centre[1] - shift[1]])
  source = np.tensordot(matrix, points, axes=1) + centre[:, None, None]
  return bilinear(image, source[0], source[1], border_mean(image))


def _to_unit(image: np.ndarray) -> np.ndarray:
  return (image + 1.0) * 0.5


def _from_unit(unit: np.ndarray) -> np.ndarray:
  return (np.clip(unit, 0.0, 1.0) * 2.0 - 1.0).astype(np.float32)


def _grey(unit: np.ndarray) -> np.ndarray:
  """Luma [..., H, W, 1] of RGB (ITU-R 601 weights), the image itself with one channel, the
  channel mean otherwise."""
  if unit.shape[-1] == 3:
    return unit @ np.array([0.299, 0.587, 0.114])[:, None]
  return unit.mean(axis=-1, keepdims=True)


def adjust_brightness(image: np.ndarray, factor: float) -> np.ndarray:
  """Intensities (in [0, 1] units) times `factor`."""
  return _from_unit(_to_unit(image) * factor)


def adjust_contrast(image: np.ndarray, factor: float) -> np.ndarray:
  """Distances from the image's mean grey level times `factor`."""
  unit = _to_unit(image)
  mean = _grey(unit).mean(axis=(-3, -2, -1), keepdims=True)
  return _from_unit((unit - mean) * factor + mean)


def adjust_saturation(image: np.ndarray, factor: float) -> np.ndarray:
  """Distances from each pixel's grey level times `factor` (no change to grey images)."""
  unit = _to_unit(image)
  grey = _grey(unit)
  return _from_unit((unit - grey) * factor + grey)


def posterize(image: np.ndarray, bits: int) -> np.ndarray:
  """Keeps the top `bits` of each 8-bit intensity."""
  levels = np.round(_to_unit(image) * 255.0).astype(np.int64)
  return _from_unit((levels & ~((1 << (8 - bits)) - 1)) / 255.0)


def crop_window(rng: np.random.Generator, height: int, width: int,
                scale: tuple[float, float], ratio: tuple[float, float]
                ) -> tuple[float, float, float, float]:
  """(top, left, h, w) in pixel-edge units (the image spans [0, H] x [0, W]): area a
  fraction in `scale` of the image's, aspect w/h log-uniform in `ratio`, position uniform;
  sub-pixel, so small images get every scale. The whole image if 10 draws do not fit."""
  for _ in range(10):
    area = height * width * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    h, w = math.sqrt(area / aspect), math.sqrt(area * aspect)
    if h <= height and w <= width:
      return rng.uniform(0.0, height - h), rng.uniform(0.0, width - w), h, w
  return 0.0, 0.0, float(height), float(width)


def resized_crop(image: np.ndarray, window: tuple[float, float, float, float]) -> np.ndarray:
  """The window (top, left, h, w) (`crop_window`) resized bilinearly to the image's size."""
  height, width = image.shape[-3:-1]
  top, left, h, w = window
  ys = top + (np.arange(height) + 0.5) * (h / height) - 0.5
  xs = left + (np.arange(width) + 0.5) * (w / width) - 0.5
  grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
  return bilinear(image, grid_y, grid_x)


# ------------------------------------------------------------------------- image ops


@register("random_resized_crop", IMAGE_ROLES)
def random_resized_crop(scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3)):
  """A random window (area fraction in `scale`, aspect w/h in `ratio`) resized back to the
  image's size (bilinear, sub-pixel windows)."""
  scale = _pair(scale, "scale", 0.0)
  ratio = _pair(ratio, "ratio", 0.0)
  _check(0.0 < scale[0] and scale[1] <= 1.0, f"scale must lie in (0, 1], got {scale}")
  _check(ratio[0] > 0.0, f"ratio must be positive, got {ratio}")

  def apply(image, rng):
    height, width = image.shape[-3:-1]
    return resized_crop(image, crop_window(rng, height, width, scale, ratio))

  return apply


@register("translate", IMAGE_ROLES)
def translate(max_fraction=0.125):
  """A shift by up to `max_fraction` of the height / width along each axis (uniform,
  sub-pixel); uncovered pixels get the border's mean."""
  max_fraction = _fraction(max_fraction, "max_fraction")

  def apply(image, rng):
    height, width = image.shape[-3:-1]
    shift = rng.uniform(-max_fraction, max_fraction, 2) * (height, width)
    return affine(image, np.eye(2), tuple(shift))

  return apply


@register("flip_lr", IMAGE_ROLES)
def flip_lr(p=0.5):
  """A left-right mirror with probability `p`. Needs `config.data.flip_safe=True`."""
  p = _fraction(p, "p")

  def apply(image, rng):
    return np.ascontiguousarray(image[..., ::-1, :]) if rng.random() < p else image

  return apply


@register("color_jitter", IMAGE_ROLES)
def color_jitter(strength=None, brightness=None, contrast=None, saturation=None):
  """Brightness, contrast, saturation factors uniform in [1 - s, 1 + s] each, applied in
  that order (saturation only on RGB); `strength` is the default s of all three, e.g.
  color_jitter(0.2) or color_jitter(brightness=0.3, contrast=0.3)."""
  default = 0.0 if strength is None else _fraction(strength, "strength")
  amounts = {name: default if value is None else value for name, value in
             (("brightness", brightness), ("contrast", contrast), ("saturation", saturation))}
  for name, value in amounts.items():
    _fraction(value, name)
  _check(any(amounts.values()), "give a strength or one of brightness, contrast, saturation "
         "above 0, e.g. color_jitter(0.2)")
  adjust = {"brightness": adjust_brightness, "contrast": adjust_contrast,
            "saturation": adjust_saturation}

  def apply(image, rng):
    for name, amount in amounts.items():
      factor = rng.uniform(1.0 - amount, 1.0 + amount)
      if amount and not (name == "saturation" and image.shape[-1] != 3):
        image = adjust[name](image, factor)
    return image

  return apply


def _shear(axis: int):
  def apply(image, level, sign):
    matrix = np.eye(2)
    matrix[axis, 1 - axis] = sign * 0.3 * level
    return affine(image, matrix)
  return apply


def _translate(axis: int):
  def apply(image, level, sign):
    shift = [0.0, 0.0]
    shift[axis] = sign * 0.3 * level * image.shape[-3 + axis]
    return affine(image, np.eye(2), tuple(shift))
  return apply


def _rotate(image, level, sign):
  angle = math.radians(sign * 30.0 * level)
  # The inverse map of a rotation by `angle` (row, col coordinates).
  return affine(image, np.array([[math.cos(angle), math.sin(angle)],
                                 [-math.sin(angle), math.cos(angle)]]))


# RandAugment-lite: name -> transform(image, level in [0, 1], sign +-1). Levels at m=10:
# brightness / contrast factor 1 +- 0.9, translation 30 % of the size, rotation 30
# degrees, shear 0.3, posterize to 4 bits.
RANDAUGMENT_OPS: dict[str, Callable[[np.ndarray, float, float], np.ndarray]] = {
    "identity": lambda image, level, sign: image,
    "brightness": lambda image, level, sign: adjust_brightness(image, 1.0 + sign * 0.9 * level),
    "contrast": lambda image, level, sign: adjust_contrast(image, 1.0 + sign * 0.9 * level),
    "translate_x": _translate(1),
    "translate_y": _translate(0),
    "rotate": _rotate,
    "shear_x": _shear(1),
    "shear_y": _shear(0),
    "posterize": lambda image, level, sign: posterize(image, 8 - round(4 * level)),
}


@register("randaugment", IMAGE_ROLES)
def randaugment(n=2, m=5.0):
  """RandAugment-lite: `n` transforms drawn uniformly (with replacement) from
  RANDAUGMENT_OPS, each at magnitude `m` in [0, 10] with a random sign."""
  _check(isinstance(n, int) and n >= 1, f"n must be a positive integer, got {n!r}")
  _check(isinstance(m, (int, float)) and 0 <= m <= 10, f"m must be in [0, 10], got {m!r}")
  names = list(RANDAUGMENT_OPS)

  def apply(image, rng):
    for _ in range(n):
      name = names[rng.integers(len(names))]
      sign = 1.0 if rng.random() < 0.5 else -1.0
      image = RANDAUGMENT_OPS[name](image, m / 10.0, sign)
    return image

  return apply


# --------------------------------------------------------------------------- mixing


def _mix_heads(heads):
  _check(heads is None or (isinstance(heads, (tuple, list)) and heads
                           and all(isinstance(h, str) for h in heads)),
         f"heads must be a non-empty tuple of head names, got {heads!r}")
  return None if heads is None else tuple(heads)


def _dominant(lam: float) -> float:
  # The example itself keeps the larger share, so heads that are not mixed (their target
  # stays the example's own) read mostly their own input.
  return max(lam, 1.0 - lam)


def _set_mixed_targets(example: dict, partner: dict, lam: float, heads: Sequence[str]) -> dict:
  example["mix_lambda"] = np.float32(lam)
  for head in heads:
    example[f"mix_{head}"] = np.int32(partner[head])
  return example


@register("mixup", IMAGE_ROLES + ("audio",), "mix")
def mixup(alpha=0.2, heads=None):
  """Mixup: inputs lam x + (1 - lam) x' (image, and audio when both have it), lam ~
  Beta(alpha, alpha) folded to >= 0.5, with a partner drawn from the training split; the
  targets of `heads` (default: the task's main head) are mixed alike. Text stays the
  example's own."""
  _check(isinstance(alpha, (int, float)) and alpha > 0, f"alpha must be > 0, got {alpha!r}")
  heads = _mix_heads(heads)

  def apply(example, partner, rng, heads):
    lam = _dominant(float(rng.beta(alpha, alpha)))
    for role in IMAGE_ROLES + ("audio",):
      if role in example:
        example[role] = (lam * example[role] + (1.0 - lam) * partner[role]).astype(np.float32)
    return _set_mixed_targets(example, partner, lam, heads)

  return apply, dict(heads=heads)


@register("cutmix", ("image",), "mix")
def cutmix(alpha=1.0, heads=None):
  """CutMix: a box of the partner's image (sides sqrt(1 - lam) of the image's, rounded
  down, lam ~ Beta(alpha, alpha) folded to >= 0.5) pasted into the example's; the targets
  of `heads` (default: the main head) mix with lam = the example's remaining area
  fraction."""
  _check(isinstance(alpha, (int, float)) and alpha > 0, f"alpha must be > 0, got {alpha!r}")
  heads = _mix_heads(heads)

  def apply(example, partner, rng, heads):
    image = example["image"]
    height, width = image.shape[-3:-1]
    cut = math.sqrt(1.0 - _dominant(float(rng.beta(alpha, alpha))))
    box_h, box_w = int(height * cut), int(width * cut)  # rounded down: the example keeps >= half
    top = int(rng.integers(0, height - box_h + 1))
    left = int(rng.integers(0, width - box_w + 1))
    image = image.copy()
    image[..., top:top + box_h, left:left + box_w, :] = \
        partner["image"][..., top:top + box_h, left:left + box_w, :]
    example["image"] = image
    return _set_mixed_targets(example, partner, 1.0 - box_h * box_w / (height * width), heads)

  return apply, dict(heads=heads)


# ----------------------------------------------------------------------------- text


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
  """Token ids text ops must know: `keep` ([CLS], [SEP], [PAD]) are never changed."""

  keep: tuple[int, ...]
  pad: int
  mask: int

  @classmethod
  def of(cls, tokenizer: Any) -> SpecialTokens:
    return cls(keep=(tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id),
               pad=tokenizer.pad_token_id, mask=tokenizer.mask_token_id)


def _content(ids: np.ndarray, mask: np.ndarray, special: SpecialTokens) -> np.ndarray:
  """True on real tokens that are not [CLS], [SEP] or [PAD]."""
  return mask & ~np.isin(ids, special.keep)


@register("token_dropout", ("text",), "tokens")
def token_dropout(rate=0.1):
  """Deletes each word piece (not [CLS], [SEP], [PAD]) with probability `rate`; the rest
  close up, the row is padded at its end."""
  rate = _fraction(rate, "rate")

  def apply(ids, mask, rng, special):
    drop = _content(ids, mask, special) & (rng.random(ids.shape) < rate)
    kept = ids[mask & ~drop]
    new_ids = np.full_like(ids, special.pad)
    new_ids[:len(kept)] = kept
    return new_ids, np.arange(len(ids)) < len(kept)

  return apply


@register("span_mask", ("text",), "tokens")
def span_mask(rate=0.15, span=3):
  """Replaces round(rate * n) of a row's n word pieces with [MASK], in contiguous spans of
  1..`span` tokens that never cover [CLS], [SEP] or [PAD]."""
  rate = _fraction(rate, "rate")
  _check(isinstance(span, int) and span >= 1, f"span must be a positive integer, got {span!r}")

  def apply(ids, mask, rng, special):
    free = _content(ids, mask, special)
    remaining = int(round(rate * free.sum()))
    ids = ids.copy()
    while remaining > 0:
      start = int(rng.choice(np.flatnonzero(free)))
      length = min(int(rng.integers(1, span + 1)), remaining)
      stop = start
      while stop < len(ids) and stop - start < length and free[stop]:
        stop += 1
      ids[start:stop] = special.mask
      free[start:stop] = False
      remaining -= stop - start
    return ids, mask

  return apply


# ---------------------------------------------------------------------------- audio


@register("gain", ("audio",))
def gain(db=6.0):
  """Scales the waveform by 10^(g / 20), g uniform in [-db, db] decibels (or in the pair
  `db` = (low, high)). Not clipped: the audio tower's log-mel reads any amplitude."""
  low, high = (-float(db), float(db)) if isinstance(db, (int, float)) else _pair(db, "db")
  _check(low <= high, f"db must be >= 0, got {db!r}")

  def apply(waveform, rng):
    return (waveform * 10.0 ** (rng.uniform(low, high) / 20.0)).astype(np.float32)

  return apply


# ------------------------------------------------------------------------ parsing


def _known() -> str:
  return ", ".join(OPS)


def split_ops(spec: Any) -> list[str]:
  """`config.augment` as a list of op strings: a "|"-joined string or a sequence."""
  if spec is None:
    return []
  if isinstance(spec, str):
    if not spec.strip():
      return []
    items = spec.split("|")
  elif isinstance(spec, (tuple, list)) and all(isinstance(s, str) for s in spec):
    items = list(spec)
  else:
    raise ConfigError(f"{FIELD}: expected a '|'-joined string or a tuple of op strings, got "
                      f"{spec!r}")
  for item in items:
    if not item.strip():
      raise ConfigError(f"{FIELD}: an empty op in {spec!r}; known ops: {_known()}")
  return [item.strip() for item in items]


def parse_op(text: str) -> Op:
  """'name' or 'name(args)' -> Op; ConfigError naming config.augment for anything else."""
  try:
    node = ast.parse(text, mode="eval").body
  except SyntaxError:
    node = None
  if isinstance(node, ast.Name):
    name, call = node.id, None
  elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
    name, call = node.func.id, node
  else:
    raise ConfigError(f"{FIELD}: cannot parse '{text}'; expected name or name(arguments), e.g. "
                      f"color_jitter(0.2); known ops: {_known()}")
  if name == "spec_augment":
    raise ConfigError(f"{FIELD}: spec_augment masks the log-mel features inside the audio "
                      "tower; set config.model.audio.spec_augment=dict(time_masks=2, "
                      "time_width=10, freq_masks=2, freq_width=8) instead")
  if name not in OPS:
    raise ConfigError(f"{FIELD}: unknown op '{name}' in '{text}'; known ops: {_known()}")
  entry = OPS[name]
  signature = f"{name}{inspect.signature(entry.factory)}"
  try:
    args = [ast.literal_eval(a) for a in call.args] if call else []
    if call and any(k.arg is None for k in call.keywords):
      raise ValueError("**kwargs")
    kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords} if call else {}
  except ValueError:
    raise ConfigError(f"{FIELD}: '{text}': arguments must be Python literals; expected "
                      f"{signature}") from None
  try:
    inspect.signature(entry.factory).bind(*args, **kwargs)
  except TypeError as error:
    raise ConfigError(f"{FIELD}: '{text}': {error}; expected {signature}") from None
  try:
    made = entry.factory(*args, **kwargs)
  except ValueError as error:
    raise ConfigError(f"{FIELD}: '{text}': {error}; expected {signature}") from None
  apply, options = made if isinstance(made, tuple) else (made, {})
  return Op(name, text, entry.roles, entry.stage, apply, options)


def parse(spec: Any) -> list[Op]:
  """Every op of `config.augment`, in order."""
  return [parse_op(text) for text in split_ops(spec)]


def op_rng(seed: int, position: int, op_index: int, stream: int = 0) -> np.random.Generator:
  """The generator of op `op_index` for the example at global stream `position`; `stream`
  1 is the mixing partner's."""
  return np.random.default_rng([_SALT, int(seed) % 2**63, int(position), op_index, stream])


class Augmenter:
  """A Preprocessor's examples and batches, augmented by `ops` (see the module docstring).

  `example(raw, position, source)` preprocesses and augments the example at global stream
  `position` (the partner of a mix op is read from `source`); `collate(examples)` batches
  them and applies the token ops to each row.
  """

  def __init__(self, ops: Sequence[Op], preprocessor: Any, seed: int,
               special: SpecialTokens | None = None, mix_heads: Sequence[str] = ()):
    self.ops = list(ops)
    self.preprocessor = preprocessor
    self.seed = seed
    self.special = special
    self.mix_heads = tuple(mix_heads)
    self.mixes = any(op.stage == "mix" for op in self.ops)

  def _apply(self, index: int, example: dict, position: int, stream: int) -> dict:
    """Example-stage op `index` on every input of `example` it changes."""
    op = self.ops[index]
    for role in op.roles:
      if role in example:
        example[role] = op.apply(example[role], op_rng(self.seed, position, index, stream))
    return example

  def example(self, raw: dict, position: int, source: Sequence) -> dict:
    example = self.preprocessor.example(raw)
    for index, op in enumerate(self.ops):
      if op.stage == "example":
        example = self._apply(index, example, position, 0)
      elif op.stage == "mix":
        rng = op_rng(self.seed, position, index)
        partner = self.preprocessor.example(source[int(rng.integers(len(source)))])
        for earlier in range(index):  # the partner gets the ops before the mix, drawn apart
          if self.ops[earlier].stage == "example":
            partner = self._apply(earlier, partner, position, 1)
        example = op.apply(example, partner, rng, self.mix_heads)
    example["augment_position"] = position  # seeds the token ops in `collate`
    return example

  def collate(self, examples: Sequence[dict]) -> dict[str, np.ndarray]:
    batch = self.preprocessor.collate(examples)
    if self.mixes:
      for key in ("mix_lambda",) + tuple(f"mix_{head}" for head in self.mix_heads):
        batch[key] = np.stack([e[key] for e in examples])
    for index, op in enumerate(self.ops):
      if op.stage != "tokens" or "text_ids" not in batch:
        continue
      for row, example in enumerate(examples):
        rng = op_rng(self.seed, example["augment_position"], index)
        batch["text_ids"][row], batch["text_mask"][row] = op.apply(
            batch["text_ids"][row], batch["text_mask"][row], rng, self.special)
    return batch


def from_config(config: ml_collections.ConfigDict, preprocessor: Any) -> Augmenter | None:
  """The Augmenter of `config.augment` for the training batches of `preprocessor`, or None
  when the field is empty or absent. ConfigErrors for unknown ops, bad arguments, a flip
  the task has not declared label-safe, and mixing outside classification."""
  ops = parse(config.get("augment", None))
  if not ops:
    return None
  task = (config.get("task", None) or {}).get("name", "classification")
  fields = getattr(preprocessor, "fields", None)
  if fields is None:
    raise ConfigError(f"{FIELD}: the task '{task}' reads inputs that the augmentation ops "
                      "do not apply to; leave config.augment empty")
  for op in ops:
    if op.name == "flip_lr" and not config.data.get("flip_safe", False):
      raise ConfigError(f"{FIELD}: '{op.text}' mirrors images, which changes the label of "
                        "tasks that read handwriting or directions (handwritten digits, "
                        "'left of' questions); set config.data.flip_safe=True only for a "
                        "task whose labels survive a mirror")
    if not any(role in fields for role in op.roles):
      log.warning("%s: '%s' changes the %s input, which this run does not read; skipped",
                  FIELD, op.text, " / ".join(op.roles))
  ops = [op for op in ops if any(role in fields for role in op.roles)]
  mixes = [op for op in ops if op.stage == "mix"]
  heads: tuple[str, ...] = ()
  if mixes:
    if task != "classification":
      raise ConfigError(f"{FIELD}: '{mixes[0].text}' mixes the targets of classification "
                        f"heads; config.task.name is '{task}'")
    if len(mixes) > 1:
      raise ConfigError(f"{FIELD}: at most one of mixup, cutmix (the loss mixes two targets), "
                        f"got {', '.join(op.text for op in mixes)}")
    losses = tuple(config.get("losses", None) or ())
    heads = mixes[0].options["heads"] or (config.task.get("main", "label"),)
    for head in heads:
      if head not in losses or head not in preprocessor.targets:
        trained = [h for h in losses if h in preprocessor.targets]
        raise ConfigError(f"{FIELD}: '{mixes[0].text}': '{head}' is not a head this run "
                          f"trains; expected some of {', '.join(trained)}")
  special = None
  if any(op.stage == "tokens" for op in ops):
    special = SpecialTokens.of(preprocessor.text_encoder.tokenizer)
  return Augmenter(ops, preprocessor, config.seed, special, heads)
