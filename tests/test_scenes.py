"""edu_scenes: the pure scene functions on small counts; one shared build of the dataset."""

import collections

import numpy as np
import pytest

from mmjax.data.builders.edu_grading.edu_grading import EduGrading
from mmjax.data.builders.edu_scenes import scenes as scene_lib
from mmjax.data.builders.edu_scenes.edu_scenes import EduScenes, grading_questions
from mmjax.data.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def digit_data():
  """load_digits images and labels, and edu_grading's image split of them."""
  return EduGrading.digit_images()


def make(digit_data, num, seed, pool="train", **kwargs):
  images, digits, pools = digit_data
  return scene_lib.make_split(num, pools[pool], images, digits, seed, **kwargs)


def parse_scene(scene):
  """{cell index: object name}, and whether the scene is large (its object under cell 0)."""
  if scene.startswith("large:"):
    return {0: scene.removeprefix("large:")}, True
  cells = dict(part.split("=") for part in scene.split(";"))
  return {scene_lib.CELLS.index(cell): name for cell, name in cells.items()}, False


def category_of(name):
  """The category name of an object name: "red circle" -> "circle", "digit 7" -> "seven"."""
  kind, value = name.split()
  return scene_lib.DIGIT_WORDS[int(value)] if kind == "digit" else value


def check_object(patch, name, image_id, images, digits):
  """The 8x8 `patch` shows the object `name` ("red circle", "digit 7")."""
  assert patch.any(), name
  if name.startswith("digit "):
    assert (patch[..., :1] == patch).all(), "digits are grey"
    np.testing.assert_array_equal(patch, np.repeat(images[image_id], 3, axis=-1))
    assert digits[image_id] == int(name.split()[1])
    return
  colour, shape = name.split()
  assert image_id == -1
  rgb = scene_lib.COLOUR_RGB[scene_lib.COLOURS.index(colour)]
  on = patch.any(axis=-1)
  for channel in range(3):
    if rgb[channel]:
      assert (patch[..., channel][on] >= scene_lib.BRIGHTNESS[0]).all(), name
    else:
      assert not patch[..., channel].any(), name
  masks = scene_lib.MASKS[scene_lib.SHAPES.index(shape)]
  assert any((on == mask).all() for mask in masks), name


def test_same_seed_gives_identical_examples(digit_data):
  a, b, c = make(digit_data, 300, 5), make(digit_data, 300, 5), make(digit_data, 300, 6)
  for key in ("image", "category", "num_objects", "image_id"):
    np.testing.assert_array_equal(a[key], b[key])
    assert a[key].dtype == b[key].dtype
  assert a["image"].dtype == np.uint8 and a["image"].shape == (300, 16, 16, 3)
  assert a["caption"] == b["caption"] and a["scene"] == b["scene"]
  assert not np.array_equal(a["image"], c["image"])
  assert a["caption"] != c["caption"] and a["scene"] != c["scene"]


def test_pixels_and_captions_match_the_scene(digit_data):
  images, digits, _ = digit_data
  split = make(digit_data, 600, 7)
  drawn = split["scenes"]
  cell_slices = [(slice(y, y + 8), slice(x, x + 8)) for y in (0, 8) for x in (0, 8)]
  for i, (scene, caption) in enumerate(zip(split["scene"], split["caption"], strict=True)):
    image = split["image"][i]
    objects, large = parse_scene(scene)
    if large:
      patch = image[::2, ::2]
      np.testing.assert_array_equal(image, patch.repeat(2, axis=0).repeat(2, axis=1))
      check_object(patch, objects[0], drawn.image_id[i, 0], images, digits)
      assert " large " in f" {caption} " or " big " in f" {caption} ", caption
    else:
      for cell, (rows, cols) in enumerate(cell_slices):
        if cell in objects:
          check_object(image[rows, cols], objects[cell], drawn.image_id[i, cell], images, digits)
        else:
          assert not image[rows, cols].any(), (scene, cell)
      assert "large" not in caption and "big" not in caption, caption
    # The caption names exactly the occupied cells, and every object's words.
    for cell, phrases in enumerate(scene_lib.CELL_PHRASES):
      named = any(phrase in caption for phrase in phrases)
      assert named == (cell in objects and not large), (caption, scene)
    for name in objects.values():
      if name.startswith("digit "):
        digit = int(name.split()[1])
        assert str(digit) in caption or scene_lib.DIGIT_WORDS[digit] in caption, caption
      else:
        assert all(word in caption for word in name.split()), (caption, name)
    # Features: the first non-empty cell's category, the count, the first digit's image.
    assert scene_lib.CATEGORIES[split["category"][i]] == category_of(objects[min(objects)])
    assert split["num_objects"][i] == len(objects)
    digit_ids = [drawn.image_id[i, c] for c in sorted(objects) if objects[c].startswith("digit")]
    assert split["image_id"][i] == (digit_ids[0] if digit_ids else -1)


def test_scene_mix_and_caption_variety(digit_data):
  split = make(digit_data, 3000, 8)
  counts = collections.Counter(
      "large" if s.startswith("large:") else s.count("=") for s in split["scene"])
  assert counts["large"] / 3000 == pytest.approx(0.15, abs=0.03)
  assert min(counts[k] for k in (1, 2, 3)) > 400
  captions = split["caption"]
  starts = collections.Counter(" ".join(c.split()[:2]) for c in captions)
  assert len(starts) > 30  # several templates and object wordings
  assert sum(c.startswith("there is ") for c in captions) > 100
  assert sum(c.startswith("a picture of ") for c in captions) > 100
  assert sum(": " in c for c in captions) > 300
  for words in (("upper left", "top left"), ("corner",), ("handwritten",), ("written by hand",),
                ("a large ",), ("a big ",), (" seven",), (" 7",), ("an ",)):
    assert any(w in c for w in words for c in captions), words
  assert not any(" a eight" in c or " a 8" in c or "an one" in c for c in captions)
  assert len(set(captions)) > 0.9 * len(captions)
  assert max(scene_lib.pre_token_count(c) for c in captions) <= scene_lib.MAX_CAPTION_TOKENS


def test_held_out_scenes_are_unique(digit_data):
  split = make(digit_data, 1000, 9, pool="validation", unique=True)
  assert len(split["scene"]) == 1000 and len(set(split["scene"])) == 1000
  assert (split["num_objects"] >= 1).all() and (split["num_objects"] == 3).sum() > 300


def test_digit_images_come_only_from_the_allowed_grading_split(digit_data):
  _, _, pools = digit_data
  assert EduScenes.SPLITS["train"].image_split == "train"
  assert {spec.image_split for name, spec in EduScenes.SPLITS.items() if name != "train"} == {
      "validation"}
  train = make(digit_data, 5000, 10)["scenes"].image_id
  held_out = make(digit_data, 2000, 11, pool="validation")["scenes"].image_id
  train_ids, held_out_ids = set(train[train >= 0].tolist()), set(held_out[held_out >= 0].tolist())
  assert train_ids <= set(pools["train"].tolist())
  assert held_out_ids <= set(pools["validation"].tolist())
  assert not (train_ids | held_out_ids) & set(pools["test"].tolist())
  assert len(train_ids) > 0.9 * len(pools["train"])  # the pool is used broadly


def test_classify_has_one_object_and_balanced_categories(digit_data):
  split = make(digit_data, 1000, 12, pool="validation", one_object=True)
  assert (split["num_objects"] == 1).all()
  counts = np.bincount(split["category"], minlength=len(scene_lib.CATEGORIES))
  assert counts.max() - counts.min() <= 1
  large = np.array([s.startswith("large:") for s in split["scene"]])
  assert 0.25 < large.mean() < 0.55
  for scene, category in zip(split["scene"], split["category"], strict=True):
    objects, _ = parse_scene(scene)
    (name,) = objects.values()
    assert scene_lib.CATEGORIES[category] == category_of(name)


def test_built_dataset_splits_match_the_scene_functions(scenes, digit_data):
  assert {name: len(source) for name, source in scenes.sources.items()} == {
      "train": 60_000, "validation": 1_000, "test": 1_000, "classify": 1_000}
  assert scenes.num_classes("category") == 14
  # The stored validation split holds exactly make_split's examples for the builder's seed
  # (in tfds's order, a function of the keys; scenes are unique there, so they match up).
  spec = EduScenes.SPLITS["validation"]
  expected = make(digit_data, spec.num_examples, EduScenes.SEED + 2, pool=spec.image_split,
                  unique=spec.unique)
  stored = scenes.source("validation").__getitems__(list(range(spec.num_examples)))
  index = {scene: i for i, scene in enumerate(expected["scene"])}
  assert sorted(index) == sorted(e["scene"].decode() for e in stored)
  for example in stored:
    i = index[example["scene"].decode()]
    np.testing.assert_array_equal(example["image"], expected["image"][i])
    assert example["caption"].decode() == expected["caption"][i]
    assert example["category"] == expected["category"][i]
    assert example["num_objects"] == expected["num_objects"][i]
    assert example["image_id"] == expected["image_id"][i]
  _, _, pools = digit_data
  for name in ("test", "classify"):
    ids = {int(e["image_id"]) for e in scenes.source(name).__getitems__(list(range(1000)))}
    assert ids - {-1} <= set(pools["validation"].tolist())
  classify = scenes.source("classify").__getitems__(list(range(1000)))
  assert {int(e["num_objects"]) for e in classify} == {1}


def test_built_tokenizer_covers_captions_and_grading_questions(scenes):
  tokenizer = load_tokenizer(scenes.tokenizer_path)
  assert 100 < len(tokenizer) <= EduScenes.VOCAB_SIZE
  captions = [e["caption"].decode() for name in ("validation", "test", "classify")
              for e in scenes.source(name).__getitems__(list(range(1000)))]
  captions += [e["caption"].decode()
               for e in scenes.source("train").__getitems__(list(range(2000)))]
  texts = captions + grading_questions(2000, seed=1)
  ids = tokenizer(texts)["input_ids"]
  unk = tokenizer.convert_tokens_to_ids("[UNK]")
  assert not [text for text, row in zip(texts, ids, strict=True) if unk in row]
  assert max(len(row) for row in ids[:len(captions)]) <= scene_lib.MAX_CAPTION_TOKENS
  assert tokenizer.convert_ids_to_tokens(tokenizer("a handwritten 7")["input_ids"]) == [
      "[CLS]", "a", "handwritten", "7", "[SEP]"]
