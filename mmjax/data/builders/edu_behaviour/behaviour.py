"""Learning-behaviour evidence in three modalities, and the Bayes analysis of combining them.

Pure numpy, no tfds: `make_split(num, seed)` draws `num` students' lessons from `seed`
and renders, for each, a written reflection, a photo of the worksheet and a short audio
clip, the same every time for the same arguments.

Generative model. A lesson's `label` (engaged, struggling, disengaged) is drawn
uniformly. Each modality m then independently shows a *cue* c_m, one of engaged,
struggling, disengaged or unclear:

  c_m = label          with probability agree_m
  c_m = unclear        with probability unclear_m   (the modality carries no evidence)
  c_m = another label  with probability wrong_m     (either of the two, equally likely)

and is rendered from its cue alone plus random nuisance (wording, topic, paper
brightness, pencil pressure, layout shift, pitch, loudness, background noise...). The
cues are conditionally independent given the label and each rendering depends on the
label only through its cue, so the Bayes-optimal prediction from any subset of
modalities is the posterior argmax over the cues (`bayes_accuracy` computes its accuracy
exactly). With symmetric hard cues (no `unclear`) two modalities would be no better than
the more reliable one alone (when they disagree, the better one wins); the `unclear`
outcome is what lets a second and a third modality add evidence. With `RATES` the
Bayes-optimal accuracy is about 0.70 for one modality, 0.81 for two and 0.88 for three.

Renderings (what each cue looks like):
- text: a one-to-three sentence reflection. A cue sentence in varied wording ("I
  finished every problem and checked two of them", "I got stuck on fractions and erased a
  lot", "I didn't really do much today"), optionally with a neutral sentence about the
  lesson ("We had a worksheet on decimals.") before or after it and a neutral remark
  ("The classroom was noisy."). `unclear` reflections hold only neutral sentences.
- image: a grey 16x16 photo of a worksheet with a name line and six answer boxes (two
  columns, three rows). engaged: (almost) every box holds written working; struggling:
  boxes scribbled over, grey erasure smudges; disengaged: boxes left blank, doodles on
  the page; unclear: a blurred, badly lit photo in which no worksheet is visible.
- audio: 0.5 s at 8 kHz, int16. engaged: steady voiced speech-like sound (a harmonic
  tone with syllable rhythm) over the whole clip; struggling: one or two short hesitant
  bursts separated by pauses; disengaged: near silence, background noise only; unclear:
  loud static (a rubbed or covered microphone) over the whole clip. Every clip has
  background noise and may have mains hum.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

LABELS = ("engaged", "struggling", "disengaged")
CUES = LABELS + ("unclear",)
UNCLEAR = CUES.index("unclear")
MODALITIES = ("image", "text", "audio")


class CueRates(NamedTuple):
  """How often a modality shows the true label's cue, no evidence, or a wrong label's cue."""

  agree: float
  unclear: float
  wrong: float


RATES = {
    "text": CueRates(agree=0.62, unclear=0.28, wrong=0.10),
    "image": CueRates(agree=0.60, unclear=0.30, wrong=0.10),
    "audio": CueRates(agree=0.58, unclear=0.32, wrong=0.10),
}


# ---- Cues and the Bayes analysis.

def likelihood(rates: CueRates) -> np.ndarray:
  """P(cue | label) as float64 [3 labels, 4 cues] (cue 3: unclear)."""
  table = np.full((len(LABELS), len(CUES)), rates.wrong / (len(LABELS) - 1))
  np.fill_diagonal(table, rates.agree)
  table[:, UNCLEAR] = rates.unclear
  return table


def sample_cues(labels: np.ndarray, rates: CueRates, rng: np.random.Generator) -> np.ndarray:
  """One modality's cue for each of `labels` [n]: int64 [n] in 0..3 (see module doc)."""
  u = rng.random(len(labels))
  other = (labels + 1 + rng.integers(len(LABELS) - 1, size=len(labels))) % len(LABELS)
  return np.where(u < rates.agree, labels,
                  np.where(u < rates.agree + rates.unclear, UNCLEAR, other)).astype(np.int64)


def bayes_predict(cues: dict[str, np.ndarray],
                  rates: dict[str, CueRates] | None = None) -> np.ndarray:
  """The Bayes-optimal label (uniform prior) from the cues of some modalities.

  `cues`: {modality: int [n] cues}. Returns int64 [n], the posterior argmax (ties go to
  the first label in LABELS order, which does not change the expected accuracy).
  """
  rates = RATES if rates is None else rates
  if not cues:
    raise ValueError("bayes_predict needs the cues of at least one modality")
  log_post = sum(np.log(likelihood(rates[m]))[:, np.asarray(c)].T for m, c in cues.items())
  return np.argmax(log_post, axis=-1).astype(np.int64)


def bayes_accuracy(modalities: Sequence[str], rates: dict[str, CueRates] | None = None
                   ) -> float:
  """Exact accuracy of the Bayes-optimal prediction from `modalities`' cues (uniform prior):
  the sum over every combination of cues of max_label P(label, cues)."""
  rates = RATES if rates is None else rates
  if not modalities:
    raise ValueError("bayes_accuracy needs at least one modality")
  tables = [likelihood(rates[m]) for m in modalities]
  total = 0.0
  for combination in itertools.product(range(len(CUES)), repeat=len(tables)):
    joint = np.full(len(LABELS), 1.0 / len(LABELS))
    for table, cue in zip(tables, combination, strict=True):
      joint = joint * table[:, cue]
    total += joint.max()
  return float(total)


def subsets(modalities: Sequence[str] = MODALITIES) -> list[tuple[str, ...]]:
  """Every non-empty subset of `modalities`, smallest first."""
  return [s for k in range(1, len(modalities) + 1)
          for s in itertools.combinations(modalities, k)]


# ---- Text: reflections.

TOPICS = ("fractions", "decimals", "long division", "times tables", "negative numbers",
          "area and perimeter", "percentages", "equations", "word problems", "angles",
          "rounding", "place value", "ratios", "column addition")
COUNTS = ("two", "three", "four", "five", "2", "3", "4", "5")
CUE_SENTENCES = (
    (  # engaged
        "I finished every problem and checked {n} of them.",
        "I got all the questions done and went back over my answers.",
        "I understood {topic} and helped my partner with it.",
        "I answered {n} questions out loud and finished the extension task.",
        "It made sense to me and I did the challenge questions too.",
        "I worked the whole time and got most of them right.",
        "I asked a question about {topic} and then finished the sheet.",
        "I liked {topic} and want to try harder ones next time.",
        "I showed all my working and checked it with a calculator.",
        "I finished early so I made up {n} more problems.",
        "Everything clicked, I could explain {topic} to someone else now.",
    ),
    (  # struggling
        "I got stuck on {topic} and erased a lot.",
        "I tried but I kept getting the wrong answer.",
        "I didn't understand step {n} and had to start over.",
        "I only finished {n} problems because they were really hard.",
        "I was confused about {topic} and asked for help twice.",
        "I kept mixing up the rules and crossed out my work.",
        "I think I made mistakes on most of them.",
        "It was hard and I am still not sure how to do {topic}.",
        "I started each question but could not finish them.",
        "I need more help with {topic}, I got lost halfway.",
        "I rubbed out my answers {n} times and still got them wrong.",
    ),
    (  # disengaged
        "I didn't really do much today.",
        "I was bored so I drew on my sheet.",
        "I talked to my friends most of the lesson.",
        "I don't know, I wasn't paying attention.",
        "I didn't do the worksheet.",
        "I was tired and just waited for the bell.",
        "Nothing really, I forgot my pencil.",
        "I looked out the window most of the time.",
        "I didn't feel like doing maths today.",
        "I just wrote the date and stopped.",
        "Whatever, {topic} is pointless.",
    ),
)
# Neutral sentences, drawn independently of the cue.
CONTEXT_SENTENCES = (
    "Today we did {topic}.",
    "The lesson was about {topic}.",
    "We worked on {topic} in pairs.",
    "Our teacher explained {topic} on the board.",
    "We had a worksheet on {topic}.",
    "This week's topic is {topic}.",
    "In maths we looked at {topic}.",
    "We started a new unit on {topic}.",
)
REMARKS = (
    "Maths was right after lunch.",
    "We sat in new groups.",
    "The classroom was noisy.",
    "We had a substitute teacher.",
    "It was a short lesson.",
    "We used mini whiteboards.",
    "The heating was broken.",
)
P_CONTEXT = 0.6  # a cue reflection also says what the lesson was about
P_CONTEXT_FIRST = 0.5
P_REMARK = 0.3
# WordPiece tokens with [CLS] and [SEP] of the longest possible reflection (the longest
# cue sentence, context sentence and remark, each filled in its longest way).
MAX_REFLECTION_TOKENS = 34


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
  return options[int(rng.integers(len(options)))]


def reflection(cue: int, rng: np.random.Generator) -> str:
  """A student's reflection showing `cue` (an index into CUES)."""
  fill = lambda template: template.format(topic=_pick(rng, TOPICS),  # noqa: E731
                                          n=_pick(rng, COUNTS))
  context = fill(_pick(rng, CONTEXT_SENTENCES))
  if cue == UNCLEAR:
    parts = [context]
  else:
    parts = [fill(_pick(rng, CUE_SENTENCES[cue]))]
    if rng.random() < P_CONTEXT:
      parts.insert(0 if rng.random() < P_CONTEXT_FIRST else 1, context)
  if rng.random() < P_REMARK:
    parts.append(_pick(rng, REMARKS))
  return " ".join(parts)


# ---- Image: worksheet photos.

IMAGE_SIZE = 16
BOX_ROWS, BOX_COLS = 3, 2
BOX_HEIGHT, BOX_WIDTH = 4, 6  # outline included; the inside is 2 x 4 pixels


def _box_origins(dy: int, dx: int) -> list[tuple[int, int]]:
  """Top-left corners of the six answer boxes, row by row, for a layout shift (dy, dx)."""
  return [(3 + dy + BOX_HEIGHT * r, 1 + dx + 8 * c)
          for r in range(BOX_ROWS) for c in range(BOX_COLS)]


def worksheet(cue: int, rng: np.random.Generator) -> np.ndarray:
  """A grey photo of a worksheet showing `cue`: uint8 [16, 16, 1]."""
  size = IMAGE_SIZE
  paper = rng.uniform(190, 245)
  noise = rng.uniform(3, 10)
  if cue == UNCLEAR:  # a blurred, badly lit photo: a smooth gradient, no page visible
    y, x = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    level = rng.uniform(60, 200)
    image = level + rng.uniform(30, 90) * (np.cos(angle) * x + np.sin(angle) * y)
    return _finish(image + rng.normal(0, noise + 4, (size, size)))

  image = np.full((size, size), paper)
  ink = lambda: rng.uniform(20, 80)  # noqa: E731  (pencil pressure varies stroke by stroke)
  dy, dx = int(rng.integers(2)), int(rng.integers(2))
  # The name line at the top.
  image[1 + dy, 1 + dx:1 + dx + int(rng.integers(5, 11))] = ink()
  pencil = paper - rng.uniform(60, 110)  # box outlines
  boxes = _box_origins(dy, dx)
  for y0, x0 in boxes:
    image[y0, x0:x0 + BOX_WIDTH] = image[y0 + BOX_HEIGHT - 1, x0:x0 + BOX_WIDTH] = pencil
    image[y0:y0 + BOX_HEIGHT, x0] = image[y0:y0 + BOX_HEIGHT, x0 + BOX_WIDTH - 1] = pencil

  def write_answer(y0: int, x0: int) -> None:  # strokes inside the box
    strokes = rng.random((2, 4)) < rng.uniform(0.5, 0.8)
    strokes[rng.integers(2), rng.integers(4)] = True
    inside = image[y0 + 1:y0 + 3, x0 + 1:x0 + 5]
    inside[strokes] = ink()

  order = rng.permutation(len(boxes))
  if cue == LABELS.index("engaged"):
    for i in order[:int(rng.integers(5, 7))]:
      write_answer(*boxes[i])
  elif cue == LABELS.index("struggling"):
    crossed = int(rng.integers(2, 5))
    for i in order[:crossed]:  # scribbled over, outline and all
      y0, x0 = boxes[i]
      block = image[y0:y0 + BOX_HEIGHT, x0:x0 + BOX_WIDTH]
      block[rng.random(block.shape) < rng.uniform(0.75, 1.0)] = ink()
    for i in order[crossed:]:
      if rng.random() < 0.4:
        write_answer(*boxes[i])
    for _ in range(int(rng.integers(1, 3))):  # grey erasure smudges
      y, x = int(rng.integers(2, size - 2)), int(rng.integers(0, size - 3))
      image[y:y + 2, x:x + 3] = np.minimum(image[y:y + 2, x:x + 3], paper - rng.uniform(35, 60))
  else:  # disengaged: at most one answer, doodles anywhere on the page
    if rng.random() < 0.3:
      write_answer(*boxes[order[0]])
    for _ in range(int(rng.integers(1, 3))):
      _doodle(image, rng, ink())
  return _finish(image + rng.normal(0, noise, (size, size)))


RING = np.array([[0, 1, 1, 0], [1, 0, 0, 1], [1, 0, 0, 1], [0, 1, 1, 0]], bool)
ZIGZAG = np.array([[1, 0, 0, 0, 1], [0, 1, 0, 1, 0], [0, 0, 1, 0, 0]], bool)
STAR = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]], bool)
DOODLES = (RING, ZIGZAG, ZIGZAG[::-1], STAR)


def _doodle(image: np.ndarray, rng: np.random.Generator, ink: float) -> None:
  """Draws a random doodle (ring, zigzag, star) at a random place, in place."""
  shape = DOODLES[int(rng.integers(len(DOODLES)))]
  y = int(rng.integers(0, image.shape[0] - shape.shape[0] + 1))
  x = int(rng.integers(0, image.shape[1] - shape.shape[1] + 1))
  image[y:y + shape.shape[0], x:x + shape.shape[1]][shape] = ink


def _finish(image: np.ndarray) -> np.ndarray:
  return np.clip(np.round(image), 0, 255).astype(np.uint8)[..., None]


# ---- Audio: short clips of the student during the lesson.

SAMPLE_RATE = 8000
AUDIO_SAMPLES = 4000  # 0.5 s


def _voice(n: int, rng: np.random.Generator) -> np.ndarray:
  """A voiced, speech-like sound of `n` samples: harmonics 1..6 of a wandering pitch.
  float32 [n], peak 1 (float32 sines: a build draws ~10^5 of these)."""
  t = np.arange(n, dtype=np.float32) / SAMPLE_RATE
  f0 = rng.uniform(110, 260) * (1 + 0.04 * np.sin(np.float32(2 * np.pi * rng.uniform(2, 6)) * t
                                                  + np.float32(rng.uniform(0, 2 * np.pi))))
  phase = np.float32(2 * np.pi / SAMPLE_RATE) * np.cumsum(f0, dtype=np.float32)
  tilt = rng.uniform(0.6, 1.4)
  offsets = rng.uniform(0, 2 * np.pi, 6)
  wave = sum(np.sin(k * phase + np.float32(offsets[k - 1])) * np.float32(k ** -tilt)
             for k in range(1, 7))
  return wave / np.abs(wave).max()


def clip(cue: int, rng: np.random.Generator) -> np.ndarray:
  """A 0.5 s clip at 8 kHz showing `cue`: int16 [4000]."""
  n = AUDIO_SAMPLES
  f32 = np.float32
  t = np.arange(n, dtype=f32) / SAMPLE_RATE
  wave = f32(rng.uniform(0.002, 0.008)) * rng.standard_normal(n, dtype=f32)  # background
  if rng.random() < 0.5:  # mains hum
    wave += f32(rng.uniform(0.002, 0.01)) * np.sin(
        f32(2 * np.pi * _pick(rng, (50, 60))) * t + f32(rng.uniform(0, 2 * np.pi)))
  gain = f32(rng.uniform(0.15, 0.45))
  if cue == LABELS.index("engaged"):  # steady speech: syllable rhythm, no pauses
    rate = rng.uniform(3, 6)
    envelope = 0.5 + 0.5 * np.abs(np.sin(f32(np.pi * rate) * t + f32(rng.uniform(0, np.pi))))
    envelope[:int(rng.integers(0, 200))] = 0  # speech may start a moment into the clip
    wave += gain * envelope * _voice(n, rng)
  elif cue == LABELS.index("struggling"):  # hesitant: one or two short bursts, pauses
    for slot in rng.permutation(4)[:int(rng.integers(1, 3))]:  # distinct quarters
      length = int(rng.integers(400, 800))  # 50 to 100 ms
      start = int(slot * n // 4 + rng.integers(0, n // 4 - length + 1))
      wave[start:start + length] += gain * np.sqrt(np.hanning(length)).astype(f32) * _voice(
          length, rng)
  elif cue == LABELS.index("disengaged"):  # near silence: distant, low-passed chatter
    chatter = np.convolve(rng.standard_normal(n, dtype=f32), np.full(8, 1 / 8, f32),
                          mode="same")
    wave += f32(rng.uniform(0.0, 0.01)) * chatter
  else:  # unclear: loud static over the whole clip
    wave += f32(rng.uniform(0.15, 0.35)) * rng.standard_normal(n, dtype=f32)
  return np.round(np.clip(wave, -1, 32767 / 32768) * 32768).astype(np.int16)


# ---- Splits.

def make_split(num: int, seed: int, rates: dict[str, CueRates] | None = None) -> dict:
  """`num` examples drawn from `seed`: the dataset's columns.

  Labels are balanced (each occurs num // 3 or num // 3 + 1 times, in random order).
  Returns `image` uint8 [num, 16, 16, 1], `reflection` (list of str), `audio` int16
  [num, 4000], `label` int64 [num], `<modality>_cue` int64 [num] for each modality and
  `example_id` int32 [num] (0 .. num - 1: tfds stores examples in its own order).
  """
  rates = RATES if rates is None else rates
  label_rng, cue_rng, text_rng, image_rng, audio_rng = (
      np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5))
  labels = label_rng.permutation(np.arange(num) % len(LABELS)).astype(np.int64)
  cues = {m: sample_cues(labels, rates[m], cue_rng) for m in MODALITIES}
  images = np.stack([worksheet(c, image_rng) for c in cues["image"].tolist()]) if num else \
      np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 1), np.uint8)
  audio = np.stack([clip(c, audio_rng) for c in cues["audio"].tolist()]) if num else \
      np.zeros((0, AUDIO_SAMPLES), np.int16)
  return {
      "image": images,
      "reflection": [reflection(c, text_rng) for c in cues["text"].tolist()],
      "audio": audio,
      "label": labels,
      **{f"{m}_cue": cues[m] for m in MODALITIES},
      "example_id": np.arange(num, dtype=np.int32),
  }
