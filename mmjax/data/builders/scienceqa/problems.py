"""Reading and checking ScienceQA's own files (the official release's layout).

Pure functions, no tfds. A ScienceQA directory holds

  problems.json    {pid: {"question", "choices" (list of str), "answer" (int index),
                    "hint" (the text context, "" when none), "image" ("image.png" or
                    null), "subject" ("natural science" | "social science" |
                    "language science"), "grade" ("grade1" .. "grade12"), and fields
                    mmjax does not read: task, topic, category, skill, lecture, solution,
                    split}}
  pid_splits.json  {"train": [pid, ...], "val": [...], "test": [...], and others
                    (trainval, minival, ...) that mmjax does not read}
  images/          <pid>/image.png, or <split>/<pid>/image.png as the release's
                   train.zip / val.zip / test.zip unpack (split: train, val, test)

Every problem is a one-line ConfigError naming the file (and the pid and field).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import numpy as np

from mmjax.config import ConfigError

PROBLEMS_FILE = "problems.json"
SPLITS_FILE = "pid_splits.json"
IMAGES_DIR = "images"
# tfds split -> its key in pid_splits.json.
SPLITS = {"train": "train", "validation": "val", "test": "test"}
SUBJECTS = ("natural science", "social science", "language science")
FIELDS = ("question", "choices", "answer", "hint", "image", "subject", "grade")


@dataclasses.dataclass(frozen=True)
class Problem:
  """One checked problem: `context` is the hint, `grade` 1..12, `image` the image file's
  path (None when the problem has none)."""

  pid: str
  question: str
  context: str
  choices: tuple[str, ...]
  answer: int
  subject: str
  grade: int
  image: str | None


def read_json(directory: str, name: str) -> Any:
  """The parsed JSON file `directory/name`."""
  path = os.path.join(directory, name)
  if not os.path.isfile(path):
    raise ConfigError(f"config.data.manual_dir: no {name} in '{directory}' (expected "
                      f"ScienceQA's {PROBLEMS_FILE}, {SPLITS_FILE} and {IMAGES_DIR}/)")
  with open(path, encoding="utf-8") as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ConfigError(f"{path}: not valid JSON ({e})") from None


def check_directory(directory: str | None) -> str:
  """`config.data.manual_dir`, absolute, after checking it holds both JSON files."""
  if not directory:
    raise ConfigError("config.data.manual_dir: not set; the scienceqa dataset reads "
                      f"ScienceQA's {PROBLEMS_FILE}, {SPLITS_FILE} and {IMAGES_DIR}/ from a "
                      "directory you download (--config.data.manual_dir=DIR)")
  if not os.path.isdir(directory):
    raise ConfigError(f"config.data.manual_dir: no such directory '{directory}'")
  for name in (PROBLEMS_FILE, SPLITS_FILE):
    if not os.path.isfile(os.path.join(directory, name)):
      read_json(directory, name)  # raises naming the file
  return os.path.abspath(directory)


def fingerprint(directory: str, splits: dict[str, list[Problem]]) -> str:
  """A hex digest naming a build of `directory`: its absolute path, problems.json,
  pid_splits.json, and the size and modification time of every image the splits use."""
  digest = hashlib.sha256(os.path.abspath(directory).encode())
  for name in (PROBLEMS_FILE, SPLITS_FILE):
    with open(os.path.join(directory, name), "rb") as f:
      digest.update(hashlib.sha256(f.read()).digest())
  for problems in splits.values():
    for problem in problems:
      if problem.image is not None:
        stat = os.stat(problem.image)
        digest.update(f"{problem.image}:{stat.st_size}:{stat.st_mtime_ns}".encode())
  return digest.hexdigest()[:16]


def parse_problem(pid: str, raw: Any) -> Problem:
  """The checked Problem of problems.json's entry `pid` (its image not yet located)."""
  where = f"{PROBLEMS_FILE}: problem '{pid}'"
  if not isinstance(raw, dict):
    raise ConfigError(f"{where}: expected an object, got {type(raw).__name__}")
  for field in FIELDS:
    if field not in raw:
      raise ConfigError(f"{where} lacks field '{field}'")
  for field in ("question", "subject", "grade"):
    if not isinstance(raw[field], str):
      raise ConfigError(f"{where}, field '{field}': expected a string, got {raw[field]!r}")
  choices = raw["choices"]
  if not isinstance(choices, list) or len(choices) < 2 or \
      not all(isinstance(c, str) for c in choices):
    raise ConfigError(f"{where}, field 'choices': expected a list of at least 2 strings, "
                      f"got {choices!r}")
  answer = raw["answer"]
  if isinstance(answer, bool) or not isinstance(answer, int) or \
      not 0 <= answer < len(choices):
    raise ConfigError(f"{where}, field 'answer': expected an index into its {len(choices)} "
                      f"choices, got {answer!r}")
  if raw["subject"] not in SUBJECTS:
    raise ConfigError(f"{where}, field 'subject': expected one of {', '.join(SUBJECTS)}, got "
                      f"{raw['subject']!r}")
  grade = raw["grade"]
  if not (grade.startswith("grade") and grade[5:].isdigit() and 1 <= int(grade[5:]) <= 12):
    raise ConfigError(f"{where}, field 'grade': expected 'grade1' .. 'grade12', got {grade!r}")
  hint = raw["hint"]
  if hint is not None and not isinstance(hint, str):
    raise ConfigError(f"{where}, field 'hint': expected a string, got {hint!r}")
  image = raw["image"]
  if image is not None and not (isinstance(image, str) and image):
    raise ConfigError(f"{where}, field 'image': expected a file name or null, got {image!r}")
  # Choices are stored joined by "\n": any line break inside one becomes a space.
  return Problem(pid, raw["question"], (hint or "").strip(),
                 tuple(" ".join(c.split()) for c in choices), answer, raw["subject"],
                 int(grade[5:]), image)


def image_path(directory: str, split_key: str, pid: str, name: str) -> str:
  """The file of problem `pid`'s image `name`: images/<pid>/<name> or, as the release's
  zips unpack, images/<split_key>/<pid>/<name>."""
  candidates = [os.path.join(directory, IMAGES_DIR, pid, name),
                os.path.join(directory, IMAGES_DIR, split_key, pid, name)]
  for path in candidates:
    if os.path.isfile(path):
      return path
  raise ConfigError(f"{PROBLEMS_FILE}: problem '{pid}' names image '{name}', but neither "
                    f"{candidates[0]} nor {candidates[1]} exists")


def read_splits(directory: str) -> dict[str, list[Problem]]:
  """{tfds split: its checked problems in pid_splits.json order}, images located."""
  problems = read_json(directory, PROBLEMS_FILE)
  if not isinstance(problems, dict):
    raise ConfigError(f"{PROBLEMS_FILE}: expected an object {{pid: problem}}")
  pid_splits = read_json(directory, SPLITS_FILE)
  if not isinstance(pid_splits, dict):
    raise ConfigError(f"{SPLITS_FILE}: expected an object {{split: [pid, ...]}}")
  splits = {}
  for split, key in SPLITS.items():
    pids = pid_splits.get(key, None)
    if not isinstance(pids, list) or not pids:
      raise ConfigError(f"{SPLITS_FILE}: expected a non-empty list of pids under '{key}'")
    splits[split] = []
    for pid in map(str, pids):
      if pid not in problems:
        raise ConfigError(f"{SPLITS_FILE}: '{key}' lists pid '{pid}', which {PROBLEMS_FILE} "
                          "lacks")
      problem = parse_problem(pid, problems[pid])
      if problem.image is not None:
        problem = dataclasses.replace(
            problem, image=image_path(directory, key, pid, problem.image))
      splits[split].append(problem)
  return splits


def load_image(path: str, size: int) -> np.ndarray:
  """The image file at `path` as uint8 [size, size, 3]: transparency over white, resized
  (bilinear) to a square."""
  from PIL import Image

  try:
    with Image.open(path) as image:
      image = image.convert("RGBA")
      white = Image.new("RGBA", image.size, (255, 255, 255, 255))
      image = Image.alpha_composite(white, image).convert("RGB")
      image = image.resize((size, size), Image.Resampling.BILINEAR)
      return np.asarray(image, np.uint8)
  except OSError as e:
    raise ConfigError(f"{path}: not an image PIL can read ({e})") from None
