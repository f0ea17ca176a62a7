"""The `easy_vqa` builder against the easy-vqa package's own files, and its config."""

import collections
import json
import os

import easy_vqa
import ml_collections
import numpy as np
import pytest
from PIL import Image, ImageDraw

from mmjax.config import ConfigError
from mmjax.data import pipeline
from mmjax.data.builders.easy_vqa import easy_vqa as builder_module
from mmjax.data.builders.easy_vqa import objects
from mmjax.data.tokenizer import load_tokenizer
from mmjax.train import loop

from conftest import load_config

FIELDS = ("question", "answer", "answer_type", "shape", "color", "named_shape", "named_color",
          "negated", "image_id")


@pytest.fixture(scope="module")
def dataset(data_dir):
  return pipeline.open_dataset(ml_collections.ConfigDict(
      dict(name="easy_vqa", data_dir=data_dir, cache=False)))


@pytest.fixture(scope="module")
def columns(dataset):
  """{split: {field: list}} of every example's non-image fields, in stored order."""
  out = {}
  for split in ("train", "validation", "test"):
    source = dataset.source(split)
    rows = []
    for start in range(0, len(source), 4096):
      rows.extend(source.__getitems__(list(range(start, min(start + 4096, len(source))))))
    out[split] = {name: [row[name] for row in rows] for name in FIELDS}
    out[split]["question"] = [q.decode("utf-8") for q in out[split]["question"]]
  return out


def triples(questions, answers, image_ids):
  return collections.Counter(zip(questions, answers, [int(i) for i in image_ids], strict=True))


def test_features_and_answer_vocabulary_are_the_packages(dataset):
  features = dataset.builder.info.features
  assert features["image"].shape == (64, 64, 3) and features["image"].np_dtype == np.uint8
  assert features["answer"].names == easy_vqa.get_answers()
  assert len(features["answer"].names) == 13
  assert features["answer_type"].names == ["shape", "color", "yes_no"]
  assert features["shape"].names == ["circle", "rectangle", "triangle"]
  assert sorted(features["color"].names) == sorted(
      set(easy_vqa.get_answers()) - {"circle", "rectangle", "triangle", "yes", "no"})
  assert features["named_shape"].names == ["none", "circle", "rectangle", "triangle"]
  assert features["named_color"].names == ["none", *objects.PALETTE]
  assert features["negated"].names == ["no", "yes"]
  assert str(dataset.builder.info.version) == "1.1.0"
  assert "MIT" in dataset.builder.info.redistribution_info.license
  assert dataset.builder.info.homepage == "https://github.com/vzhou842/easy-VQA"


def test_splits_hold_exactly_the_packages_questions(dataset, columns):
  names = dataset.builder.info.features["answer"].names
  sizes = {split: len(dataset.source(split)) for split in columns}
  assert sizes == {"train": 34676, "validation": 3899, "test": 9673}  # 38,575 package train
  # Train and validation together are the package's train questions, each exactly once.
  stored = collections.Counter()
  for split in ("train", "validation"):
    c = columns[split]
    stored += triples(c["question"], [names[a] for a in c["answer"]], c["image_id"])
  assert stored == triples(*easy_vqa.get_train_questions())
  c = columns["test"]
  assert triples(c["question"], [names[a] for a in c["answer"]], c["image_id"]) == triples(
      *easy_vqa.get_test_questions())


def test_validation_images_are_held_out_whole(columns):
  train_images = set(columns["train"]["image_id"])
  validation_images = set(columns["validation"]["image_id"])
  assert not train_images & validation_images
  assert len(validation_images) == builder_module.EasyVqa.NUM_VALIDATION_IMAGES == 400
  assert train_images | validation_images == set(range(4000))
  # The held-out images are a function of the seed alone.
  ids, seed = easy_vqa.get_train_questions()[2], builder_module.EasyVqa.SEED
  assert builder_module.validation_images(ids, 400, seed) == validation_images
  assert builder_module.validation_images(ids, 400, seed + 1) != validation_images


def test_images_and_answer_types_match_the_package(dataset, columns):
  names = dataset.builder.info.features["answer"].names
  types = dataset.builder.info.features["answer_type"].names
  for split, paths in (("train", easy_vqa.get_train_image_paths()),
                       ("test", easy_vqa.get_test_image_paths())):
    source = dataset.source(split)
    for index in (0, 1, len(source) // 2, len(source) - 1):
      example = source[index]
      expected = np.asarray(Image.open(paths[int(example["image_id"])]).convert("RGB"))
      np.testing.assert_array_equal(example["image"], expected)
  counts = collections.Counter()
  for c in columns.values():
    for answer, kind in zip(c["answer"], c["answer_type"], strict=True):
      counts[(names[answer], types[kind])] += 1
  assert {answer for answer, kind in counts if kind == "shape"} == {
      "circle", "rectangle", "triangle"}
  assert {answer for answer, kind in counts if kind == "yes_no"} == {"yes", "no"}
  assert {answer for answer, kind in counts if kind == "color"} == {
      "red", "green", "blue", "black", "gray", "teal", "brown", "yellow"}
  # The package's README: 28,407 train and 7,136 test questions are yes/no.
  yes_no_train = sum(n for (_, kind), n in counts.items() if kind == "yes_no")
  assert yes_no_train == 28407 + 7136


def test_shape_and_colour_imply_every_answer(dataset, columns):
  features = dataset.builder.info.features
  for split, c in columns.items():
    shapes = [features["shape"].names[i] for i in c["shape"]]
    colours = [features["color"].names[i] for i in c["color"]]
    answers = [features["answer"].names[i] for i in c["answer"]]
    implied = [objects.implied_answer(q, s, k)
               for q, s, k in zip(c["question"], shapes, colours, strict=True)]
    assert implied == answers, split
    # What each question says, by a reading of its own: the words it names.
    for i, question in enumerate(c["question"]):
      words = question.rstrip("?").split()
      named = [w for w in words if w in objects.SHAPES] or ["none"]
      assert features["named_shape"].names[c["named_shape"][i]] == named[0], question
      named = [w for w in words if w in objects.PALETTE] or ["none"]
      assert features["named_color"].names[c["named_color"][i]] == named[0], question
      negated = "not" in words or "no" in words
      assert c["negated"][i] == int(negated), question
    # One object per image: its questions all see the same shape and colour.
    per_image = {(i, s, k) for i, s, k in zip(c["image_id"], shapes, colours, strict=True)}
    assert len(per_image) == len(set(c["image_id"]))
  counts = collections.Counter(columns["test"]["shape"])
  assert len(counts) == 3 and min(counts.values()) > 0.25 * len(columns["test"]["shape"])


def draw(shape: str, colour: str, box=(10, 14, 41, 45), background=(236, 241, 250)):
  image = Image.new("RGB", (64, 64), background)
  draw = ImageDraw.Draw(image)
  x0, y0, x1, y1 = box
  fill = objects.PALETTE[colour]
  if shape == "circle":
    draw.ellipse(box, fill=fill)
  elif shape == "rectangle":
    draw.rectangle(box, fill=fill)
  else:
    draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)
  return np.asarray(image)


@pytest.mark.parametrize("shape", objects.SHAPES)
@pytest.mark.parametrize("colour", ["red", "gray", "yellow", "black", "teal"])
def test_describe_object_reads_drawn_shapes(shape, colour):
  assert objects.describe_object(draw(shape, colour)) == (shape, colour)
  # Position and size do not matter.
  assert objects.describe_object(draw(shape, colour, box=(30, 2, 49, 21))) == (shape, colour)


def test_implied_answer_follows_the_templates():
  cases = [
      ("what color is the triangle?", "teal"),
      ("what is the color of the shape?", "teal"),
      ("what is the teal shape?", "triangle"),
      ("what shape does the image contain?", "triangle"),
      ("is there a teal shape?", "yes"),
      ("is there not a teal shape in the image?", "no"),
      ("is no red shape present?", "yes"),
      ("does the image contain a circle?", "no"),
      ("does the image not contain a circle?", "yes"),
      ("is a triangle present?", "yes"),
  ]
  for question, answer in cases:
    assert objects.implied_answer(question, "triangle", "teal") == answer, question
  assert objects.parse_question("is no red circle present?") == ("circle", "red", True)
  assert objects.parse_question("what shape is in the image?") == ("none", "none", False)
  with pytest.raises(ValueError, match="names more than one shape or colour"):
    objects.parse_question("is there a red or blue shape?")


def test_an_answer_the_picture_contradicts_stops_the_build(tmp_path):
  path = str(tmp_path / "0.png")
  Image.fromarray(draw("circle", "blue")).save(path)
  builder = builder_module.EasyVqa(data_dir=str(tmp_path / "tfds"))
  data = (["what color is the circle?", "is there a red shape?"], ["blue", "yes"], [0, 0],
          {0: path})
  examples = builder._generate_examples(data, None)
  key, first = next(examples)
  assert key == 0 and (first["shape"], first["color"], first["answer_type"]) == (
      "circle", "blue", "color")
  with pytest.raises(ConfigError, match=r"0.png looks like a blue circle, but question 1 "
                                        r"\('is there a red shape\?'\) is answered 'yes'"):
    next(examples)


def test_vocabulary_covers_every_question(dataset, columns):
  tokenizer = load_tokenizer(dataset.tokenizer_path)
  unk = tokenizer.convert_tokens_to_ids("[UNK]")
  lengths = []
  for split in ("validation", "test"):
    for question in columns[split]["question"]:
      ids = tokenizer(question)["input_ids"]
      assert unk not in ids, question
      lengths.append(len(ids))
  assert max(lengths) <= load_config("configs/edu/easy_vqa.py").input.max_text_len


def test_a_wrong_image_is_a_one_line_error(tmp_path):
  path = str(tmp_path / "7.png")
  Image.new("RGB", (32, 32)).save(path)
  with pytest.raises(ConfigError, match=r"7.png: shape \(32, 32, 3\), expected \(64, 64, 3\)"):
    builder_module.load_image(path)
  grey = str(tmp_path / "8.png")
  Image.new("L", (64, 64), color=200).save(grey)
  assert builder_module.load_image(grey).shape == (64, 64, 3)


def test_runlocal_config_trains(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  loop.train(load_config("configs/edu/easy_vqa.py", "runlocal", **{"data.data_dir": data_dir}),
             workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    losses = [r["train/loss"] for r in map(json.loads, f) if "train/loss" in r]
  assert len(losses) == 6 and np.all(np.isfinite(losses))
  assert losses[-1] < 0.6 * losses[0], losses
  with open(os.path.join(workdir, "eval.json")) as f:
    test = json.load(f)["test"]
  assert test["num_examples"] == 9673
  assert set(test) >= {"accuracy", "accuracy/shape", "accuracy/color", "accuracy/yes_no"}
  # Answering "yes"/"no" by the question's form alone already beats the majority class.
  assert test["accuracy/yes_no"] > 0.45 and test["accuracy"] > 0.3
