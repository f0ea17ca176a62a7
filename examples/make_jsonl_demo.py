"""Writes examples/jsonl_demo/: a tiny `jsonl` dataset (text + image + audio, 3 classes).

A pretend geometry lesson: each row is a pupil's drawing of a shape (16x16 PNG), what the
pupil said about it (text) and a short clap pattern recorded with it (.wav), labelled
with the shape: circle, square or triangle. The drawing shows the shape (random colour,
size and place, on paper of a random light colour); the pattern has one long tone for a
circle, 4 beeps for a square and 3 for a triangle (random pitch); the text names the
shape in varied words, or says nothing about it for one row in five. Every modality
carries the label, the text only most of the time.

Everything is drawn from a fixed seed: running this again writes the same files.

    python examples/make_jsonl_demo.py [OUTPUT_DIR]   (default: examples/jsonl_demo)
"""

from __future__ import annotations

import json
import os
import sys
import wave

import numpy as np
from PIL import Image, ImageDraw

LABELS = ("circle", "square", "triangle")
SPLITS = {"train": 42, "validation": 9, "test": 9}  # rows per split, classes balanced
IMAGE_SIZE = 16
SAMPLE_RATE = 8000
SECONDS = 0.125
SEED = 7

WORDS = {
    "circle": ("I drew a circle.", "It is round like a ball.", "a round shape, no corners",
               "This one is a circle.", "it is round"),
    "square": ("I drew a square.", "Four sides, all the same.", "a box with four corners",
               "This one is a square.", "it has four corners"),
    "triangle": ("I drew a triangle.", "It has three sides.", "a shape with three corners",
                 "This one is a triangle.", "it looks like a roof"),
}
VAGUE = ("I drew a shape.", "Here is my picture.", "I like this one.", "Done!")


def draw(label: str, rng: np.random.Generator) -> Image.Image:
  """A 16x16 RGB drawing of `label` on a light background."""
  paper = tuple(int(v) for v in rng.integers(200, 256, 3))
  image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), paper)
  pen = tuple(int(v) for v in rng.integers(0, 160, 3))
  size = int(rng.integers(9, 14))
  x0, y0 = (int(v) for v in rng.integers(0, IMAGE_SIZE - size + 1, 2))
  box = (x0, y0, x0 + size - 1, y0 + size - 1)
  canvas = ImageDraw.Draw(image)
  if label == "circle":
    canvas.ellipse(box, fill=pen)
  elif label == "square":
    canvas.rectangle(box, fill=pen)
  else:
    canvas.polygon([(x0 + size // 2, y0), (x0, y0 + size - 1), (x0 + size - 1, y0 + size - 1)],
                   fill=pen)
  return image


def clap(label: str, rng: np.random.Generator) -> np.ndarray:
  """The clap pattern of `label` as 8-bit unsigned PCM samples [SAMPLE_RATE * SECONDS]."""
  n = round(SAMPLE_RATE * SECONDS)
  t = np.arange(n) / SAMPLE_RATE
  tone = np.sin(2 * np.pi * rng.uniform(400, 1200) * t)
  beeps = {"circle": 1, "square": 4, "triangle": 3}[label]
  if beeps == 1:
    envelope = ((t > 0.02) & (t < SECONDS - 0.02)).astype(float)
  else:
    period = SECONDS / beeps
    envelope = ((t % period) < 0.45 * period).astype(float)
  signal = 0.6 * tone * envelope + 0.05 * rng.normal(size=n)
  return np.clip(np.round(signal * 127 + 128), 0, 255).astype(np.uint8)


def write(directory: str) -> None:
  rng = np.random.default_rng(SEED)
  os.makedirs(os.path.join(directory, "img"), exist_ok=True)
  os.makedirs(os.path.join(directory, "audio"), exist_ok=True)
  rows = []
  for split, count in SPLITS.items():
    for i in range(count):
      label = LABELS[i % len(LABELS)]
      name = f"{split}_{i:02d}"
      draw(label, rng).save(os.path.join(directory, "img", f"{name}.png"), optimize=True)
      with wave.open(os.path.join(directory, "audio", f"{name}.wav"), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(1)
        f.setframerate(SAMPLE_RATE)
        f.writeframes(clap(label, rng).tobytes())
      vague = rng.random() < 0.2
      text = (VAGUE if vague else WORDS[label])[int(rng.integers(len(VAGUE) if vague else 5))]
      rows.append({"split": split, "text": text, "image": f"img/{name}.png",
                   "audio": f"audio/{name}.wav", "label": label})
  with open(os.path.join(directory, "data.jsonl"), "w") as f:
    f.writelines(json.dumps(row) + "\n" for row in rows)
  spec = {"description": "Demo: pupils' drawings of shapes, what they said and a clap "
                         "pattern (examples/make_jsonl_demo.py).",
          "labels": list(LABELS), "image_size": [IMAGE_SIZE, IMAGE_SIZE],
          "audio_sample_rate": 16000, "audio_seconds": SECONDS}
  with open(os.path.join(directory, "dataset.json"), "w") as f:
    json.dump(spec, f, indent=2)
    f.write("\n")


if __name__ == "__main__":
  write(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__),
                                                           "jsonl_demo"))
