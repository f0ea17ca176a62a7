"""Arithmetic questions whose answer is one digit, in varied wording.

`make_question(answer, rng)` draws an operation, operands that give `answer`, and one
of several phrasings (symbols, words, word problems; numbers sometimes spelt out).
The wording never depends on anything but the answer, so a text-only model learns
nothing about whether a particular handwritten answer is right.
"""

from __future__ import annotations

import re

import numpy as np

NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
                "fourteen fifteen sixteen seventeen eighteen nineteen twenty").split()

NAMES = ("Ana", "Ben", "Chloe", "David", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jonas",
         "Kemi", "Leo", "Maya", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sami", "Tara")
OBJECTS = ("apples", "pencils", "stickers", "marbles", "books", "cookies", "stamps", "coins",
           "shells", "cards")

TEMPLATES = {
    "add": (
        "What is {a} + {b}?",
        "Compute {a} + {b}.",
        "What is {a} plus {b}?",
        "Add {a} and {b}.",
        "Find the sum of {a} and {b}.",
        "{a} + {b} = ?",
        "Calculate {a} plus {b}.",
        "{name} has {a} {obj} and gets {b} more. How many {obj} does {name} have now?",
        "There are {a} {obj} in a red box and {b} in a blue box. How many {obj} are there in all?",
    ),
    "sub": (
        "What is {a} - {b}?",
        "Compute {a} - {b}.",
        "What is {a} minus {b}?",
        "Subtract {b} from {a}.",
        "What is the difference between {a} and {b}?",
        "{a} - {b} = ?",
        "Take {b} away from {a}. What is left?",
        "{name} had {a} {obj} and gave away {b}. How many {obj} are left?",
        "A jar holds {a} {obj}. {name} removes {b}. How many {obj} remain in the jar?",
    ),
    "mul": (
        "What is {a} x {b}?",
        "Compute {a} * {b}.",
        "What is {a} times {b}?",
        "Multiply {a} by {b}.",
        "Find the product of {a} and {b}.",
        "{a} x {b} = ?",
        "{name} has {a} bags with {b} {obj} in each bag. How many {obj} is that?",
    ),
    "div": (
        "What is {a} / {b}?",
        "Compute {a} / {b}.",
        "What is {a} divided by {b}?",
        "Divide {a} by {b}.",
        "{a} / {b} = ?",
        "How many times does {b} go into {a}?",
        "{name} shares {a} {obj} equally among {b} friends. How many {obj} does each friend get?",
    ),
}
OPERATIONS = tuple(TEMPLATES)


def operands(operation: str, answer: int, rng: np.random.Generator) -> tuple[int, int]:
  """Two operands a, b with `a <operation> b == answer` (answer in 0..9)."""
  if operation == "add":
    a = int(rng.integers(0, answer + 1))
    return a, answer - a
  if operation == "sub":
    b = int(rng.integers(0, 11))
    return answer + b, b
  if operation == "mul":
    pairs = [(a, b) for a in range(10) for b in range(10) if a * b == answer]
    if answer == 0:  # Keep 0 x n from swamping the other answers' variety.
      pairs = [(0, b) for b in range(1, 10)] + [(a, 0) for a in range(1, 10)]
    return pairs[int(rng.integers(len(pairs)))]
  if operation == "div":
    b = int(rng.integers(1, 10))
    return answer * b, b
  raise ValueError(f"unknown operation '{operation}'")


def spell(number: int, rng: np.random.Generator, p_words: float) -> str:
  if number < len(NUMBER_WORDS) and rng.random() < p_words:
    return NUMBER_WORDS[number]
  return str(number)


def make_question(answer: int, rng: np.random.Generator, p_words: float = 0.2) -> str:
  """A question whose correct answer is the digit `answer`."""
  if not 0 <= answer <= 9:
    raise ValueError(f"answer must be a single digit, got {answer}")
  operation = OPERATIONS[int(rng.integers(len(OPERATIONS)))]
  a, b = operands(operation, answer, rng)
  templates = TEMPLATES[operation]
  template = templates[int(rng.integers(len(templates)))]
  return template.format(a=spell(a, rng, p_words), b=spell(b, rng, p_words),
                         name=NAMES[int(rng.integers(len(NAMES)))],
                         obj=OBJECTS[int(rng.integers(len(OBJECTS)))])


def evaluate_question(question: str) -> int:
  """The answer of a question made by `make_question` (used by tests to check labels)."""
  words = {w: i for i, w in enumerate(NUMBER_WORDS)}
  text = question.replace("?", " ").replace(".", " ")
  numbers = [int(t) if t.isdigit() else words[t] for t in text.split()
             if t.isdigit() or t in words]
  for operation, templates in TEMPLATES.items():
    for template in templates:
      if _matches(template, question):
        a, b = numbers[:2]
        if "{b} from {a}" in template or "{b} away from {a}" in template:
          a, b = numbers[1], numbers[0]
        elif "does {b} go into {a}" in template:
          a, b = numbers[1], numbers[0]
        return {"add": a + b, "sub": a - b, "mul": a * b,
                "div": a // b if b else -1}[operation]
  raise ValueError(f"not a generated question: {question!r}")


def _matches(template: str, question: str) -> bool:
  pattern = re.escape(template)
  for field in ("a", "b", "name", "obj"):
    pattern = pattern.replace(re.escape("{" + field + "}"), r"[A-Za-z0-9]+")
  return re.fullmatch(pattern, question) is not None
