"""The `jsonl` dataset: a directory of data.jsonl + files -> a checked, built dataset."""

import json
import os
import shutil
import wave

import ml_collections
import numpy as np
import pytest
from PIL import Image

from mmjax.config import ConfigError
from mmjax.data import pipeline
from mmjax.data.builders.jsonl import reader
from mmjax.data.tokenizer import load_tokenizer
from mmjax.train import loop

from conftest import REPO, load_config

LABELS = ["red", "green", "blue"]
WORDS = ["cherry", "leaf", "sky"]  # the text signal of each class


def write_wav(path, samples, rate, width=2):
  """samples float [N] or [N, C] in [-1, 1) -> integer PCM .wav of `width` bytes."""
  samples = np.asarray(samples, np.float64)
  channels = 1 if samples.ndim == 1 else samples.shape[1]
  if width == 1:
    data = np.clip(np.round(samples * 128 + 128), 0, 255).astype(np.uint8)
  else:
    data = np.clip(np.round(samples * 32768), -32768, 32767).astype("<i2")
  with wave.open(str(path), "wb") as f:
    f.setnchannels(channels)
    f.setsampwidth(width)
    f.setframerate(rate)
    f.writeframes(data.tobytes())


def tone(freq, seconds, rate, amplitude=0.5):
  return amplitude * np.sin(2 * np.pi * freq * np.arange(round(seconds * rate)) / rate)


def write_dir(root, rows, spec=None):
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, "data.jsonl"), "w") as f:
    for row in rows:
      f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
  if spec is not None:
    with open(os.path.join(root, "dataset.json"), "w") as f:
      json.dump(spec, f)
  return str(root)


def toy_classification(root, per_split=(("train", 30), ("validation", 6), ("test", 6)),
                       seed=0):
  """Text + image + audio, 3 classes, every modality carries the class: a colour (12x10
  images, resized to 8x8), a word, and a tone (400/800/1600 Hz; 16 kHz files, resampled
  to 8 kHz)."""
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(root, "media"), exist_ok=True)
  rows = []
  for split, count in per_split:
    for i in range(count):
      c = i % 3
      name = f"media/{split}{i}"
      pixels = rng.integers(0, 60, (12, 10, 3)).astype(np.uint8)
      pixels[..., c] += 180
      Image.fromarray(pixels).save(os.path.join(root, name + ".png"))
      write_wav(os.path.join(root, name + ".wav"),
                tone(400 * 2 ** c, 0.25, 16000) + 0.02 * rng.normal(size=4000), 16000)
      rows.append({"split": split, "text": f"this is {WORDS[c]} number {split} {i}",
                   "image": name + ".png", "audio": name + ".wav", "label": LABELS[c]})
  return write_dir(root, rows, {"labels": LABELS, "image_size": [8, 8],
                                "audio_sample_rate": 8000, "audio_seconds": 0.25})


def open_jsonl(path, data_dir):
  return pipeline.open_dataset(ml_collections.ConfigDict(
      dict(name="jsonl", data_dir=str(data_dir), path=str(path), cache=False)))


def by_text(source):
  examples = [source[i] for i in range(len(source))]
  return {e["text"].decode(): e for e in examples}


def test_classification_features_and_values(tmp_path):
  root = str(tmp_path / "data")
  os.makedirs(os.path.join(root, "files"))
  # Files that exercise the conversions: an RGBA png at another size, a grey jpg, a
  # stereo 8-bit wav at 8 kHz (resampled to 16 kHz), a short 16-bit wav (zero-padded).
  rgba = np.zeros((6, 4, 4), np.uint8)
  rgba[..., 0], rgba[..., 3] = 200, 255
  Image.fromarray(rgba).save(os.path.join(root, "files/a.png"))
  Image.fromarray(np.full((4, 4), 90, np.uint8)).save(os.path.join(root, "files/b.jpg"))
  left = tone(500, 1.0, 8000)  # 500 whole periods: band-limited resampling is exact
  write_wav(os.path.join(root, "files/a.wav"), np.stack([left, left], 1), 8000, width=1)
  write_wav(os.path.join(root, "files/b.wav"), tone(1000, 0.1, 16000), 16000)
  rows = [
      {"split": "train", "text": "a red thing", "image": "files/a.png",
       "audio": "files/a.wav", "label": "red"},
      {"split": "train", "text": "a grey thing", "image": "files/b.jpg",
       "audio": "files/b.wav", "label": "grey"},
      "",  # blank lines are skipped
      {"split": "test", "text": "red again", "image": "files/a.png",
       "audio": "files/a.wav", "label": "red"},
  ]
  write_dir(root, rows, {"labels": ["grey", "red"], "image_size": [4, 4],
                         "audio_sample_rate": 16000, "audio_seconds": 0.5,
                         "description": "a test"})
  dataset = open_jsonl(root, tmp_path / "tfds")
  features = dataset.builder.info.features
  assert set(features) == {"text", "image", "audio", "label"}
  assert features["image"].shape == (4, 4, 3) and features["image"].np_dtype == np.uint8
  assert features["audio"].shape == (8000,) and features["audio"].np_dtype == np.float32
  assert features["label"].names == ["grey", "red"]
  assert {split: len(source) for split, source in dataset.sources.items()} == \
      {"train": 2, "test": 1}
  train = by_text(dataset.sources["train"])
  red, grey = train["a red thing"], train["a grey thing"]
  assert red["label"] == 1 and grey["label"] == 0
  np.testing.assert_array_equal(red["image"][..., 0], 200)  # alpha dropped, resized
  np.testing.assert_array_equal(red["image"][..., 1:], 0)
  np.testing.assert_allclose(grey["image"], 90, atol=2)  # grey jpg -> RGB
  expected = tone(500, 0.5, 16000)  # 8-bit: quantisation error 1/256
  np.testing.assert_allclose(red["audio"], expected, atol=6e-3)
  np.testing.assert_allclose(grey["audio"][:1600], tone(1000, 0.1, 16000), atol=1e-4)
  np.testing.assert_array_equal(grey["audio"][1600:], 0.0)
  tokenizer = load_tokenizer(dataset.tokenizer_path)
  ids = tokenizer("a grey thing")["input_ids"]
  assert tokenizer.unk_token_id not in ids and len(ids) == 5  # [CLS] a grey thing [SEP]
  assert "a test" in dataset.builder.info.description


def test_builds_once_and_rebuilds_when_the_data_changes(tmp_path):
  root = toy_classification(tmp_path / "data", per_split=(("train", 6), ("test", 3)))
  data_dir = tmp_path / "tfds"
  first = open_jsonl(root, data_dir)
  stamp = os.path.getmtime(os.path.join(first.builder.data_dir, "dataset_info.json"))
  again = open_jsonl(root, data_dir)
  assert again.builder.data_dir == first.builder.data_dir
  assert os.path.getmtime(os.path.join(again.builder.data_dir, "dataset_info.json")) == stamp
  # The same files in another directory: a build of their own.
  copy = str(tmp_path / "copy")
  shutil.copytree(root, copy)
  assert open_jsonl(copy, data_dir).builder.data_dir != first.builder.data_dir
  # One more row: a new build with it.
  with open(os.path.join(root, "data.jsonl"), "a") as f:
    f.write(json.dumps({"split": "validation", "text": "sky", "image": "media/train0.png",
                        "audio": "media/train0.wav", "label": "blue"}) + "\n")
  edited = open_jsonl(root, data_dir)
  assert edited.builder.data_dir != first.builder.data_dir
  assert len(edited.sources["validation"]) == 1
  # A referenced file rewritten in place: another build, with the new pixels.
  Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(os.path.join(root, "media/train0.png"))
  os.utime(os.path.join(root, "media/train0.png"), ns=(1, 1))  # a different mtime for sure
  rewritten = open_jsonl(root, data_dir)
  assert rewritten.builder.data_dir != edited.builder.data_dir
  np.testing.assert_array_equal(rewritten.sources["validation"][0]["image"], 7)


def test_text_only_dataset_has_only_text_and_label(tmp_path):
  root = write_dir(tmp_path / "data", [], {"labels": ["neg", "pos"]})
  # As a Windows editor may save it: a byte-order mark and CRLF line ends.
  with open(os.path.join(root, "data.jsonl"), "wb") as f:
    f.write(b"\xef\xbb\xbf" + json.dumps({"split": "train", "text": "good", "label": "pos"})
            .encode() + b"\r\n" + json.dumps({"split": "train", "text": "bad", "label": "neg"})
            .encode() + b"\r\n")
  dataset = open_jsonl(root, tmp_path / "tfds")
  assert set(dataset.builder.info.features) == {"text", "label"}
  assert sorted((e["text"], e["label"]) for e in by_text(dataset.sources["train"]).values()) \
      == [(b"bad", 0), (b"good", 1)]


def test_multiple_choice_rows_give_the_shared_contract(tmp_path):
  root = str(tmp_path / "data")
  os.makedirs(root)
  Image.fromarray(np.full((10, 10, 3), 255, np.uint8)).save(os.path.join(root, "w.png"))
  rows = [
      {"split": "train", "question": "Which colour is the picture?", "image": "w.png",
       "choices": ["black", "white"], "answer": "white"},
      {"split": "train", "question": "2 + 2?", "context": "Count on your fingers.",
       "choices": ["3", "4", "5"], "answer": 1},
  ]
  write_dir(root, rows, {"image_size": [6, 6]})
  dataset = open_jsonl(root, tmp_path / "tfds")
  features = dataset.builder.info.features
  assert set(features) == {"question", "context", "choices", "answer", "image", "has_image"}
  for name in ("question", "context", "choices"):
    assert type(features[name]).__name__ == "Text"
  assert features["answer"].np_dtype == np.int32 and features["answer"].shape == ()
  assert features["has_image"].np_dtype == np.int32 and features["has_image"].shape == ()
  assert features["image"].shape == (6, 6, 3) and features["image"].np_dtype == np.uint8
  source = dataset.sources["train"]
  examples = {source[i]["question"].decode(): source[i] for i in range(len(source))}
  picture, sum_ = examples["Which colour is the picture?"], examples["2 + 2?"]
  assert picture["choices"].decode() == "black\nwhite" and picture["answer"] == 1
  assert picture["context"].decode() == "" and picture["has_image"] == 1
  np.testing.assert_array_equal(picture["image"], 255)
  assert sum_["choices"].decode() == "3\n4\n5" and sum_["answer"] == 1
  assert sum_["context"].decode() == "Count on your fingers."
  assert sum_["has_image"] == 0
  np.testing.assert_array_equal(sum_["image"], 0)  # black when there is none
  assert dataset.tokenizer_path is not None


GOOD = {"split": "train", "text": "hi", "image": "a.png", "label": "x"}


def bad_rows(tmp_path, lines, spec=None, files=("a.png",)):
  root = str(tmp_path / "data")
  os.makedirs(root, exist_ok=True)
  for name in files:
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(os.path.join(root, name))
  return write_dir(root, lines, {"labels": ["x", "y"]} if spec is None else spec)


@pytest.mark.parametrize("line3, field, words", [
    ({**GOOD, "image": "imgs/missing.png"}, "image", "no such file 'imgs/missing.png'"),
    ({**GOOD, "label": "z"}, "label", "unknown label 'z'"),
    ({**GOOD, "label": 1}, "label", "expected a string"),
    ({**GOOD, "text": 5}, "text", "expected a string"),
    ({k: v for k, v in GOOD.items() if k != "split"}, "split", "missing"),
    ({**GOOD, "split": "dev"}, "split", "expected one of train, validation, test"),
    ({k: v for k, v in GOOD.items() if k != "image"}, "image", "missing"),
    ({**GOOD, "audio": "a.png"}, "audio", "unexpected"),
    ({**GOOD, "lable": "x"}, "lable", "unknown"),
    ({**GOOD, "choices": ["a", "b"]}, "choices", "classification dataset"),
])
def test_bad_rows_are_one_line_errors_naming_line_and_field(tmp_path, line3, field, words):
  root = bad_rows(tmp_path, [GOOD, GOOD, line3])
  with pytest.raises(ConfigError) as error:
    open_jsonl(root, tmp_path / "tfds")
  message = str(error.value)
  assert "\n" not in message
  assert f"data.jsonl line 3, field '{field}'" in message and words in message, message
  assert not os.path.exists(tmp_path / "tfds" / "jsonl")  # nothing written


def test_malformed_json_line_names_the_line(tmp_path):
  root = bad_rows(tmp_path, [GOOD, '{"split": "train", "text": "hi",', GOOD])
  with pytest.raises(ConfigError, match=r"data\.jsonl line 2: not valid JSON") as error:
    open_jsonl(root, tmp_path / "tfds")
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("field, content", [
    ("image", b"this is not a png"),
    ("audio", b"RIFF....not a wav"),
])
def test_unreadable_files_fail_before_anything_is_written(tmp_path, field, content):
  root = bad_rows(tmp_path, [], spec={"labels": ["x"]})
  with open(os.path.join(root, "broken"), "wb") as f:
    f.write(content)
  write_wav(os.path.join(root, "ok.wav"), tone(440, 0.1, 8000), 8000)
  good = {**GOOD, "audio": "ok.wav"}
  write_dir(root, [good, good, good, {**good, field: "broken"}, good])
  data_dir = tmp_path / "tfds"
  with pytest.raises(ConfigError) as error:
    open_jsonl(root, data_dir)
  message = str(error.value)
  assert "\n" not in message
  assert f"data.jsonl line 4, field '{field}': cannot read 'broken'" in message, message
  # tfds's temporary build directory is gone too: no half-written dataset.
  leftovers = [f for _, _, files in os.walk(data_dir) for f in files]
  assert leftovers == [], leftovers


def test_missing_files_and_settings_are_named(tmp_path):
  with pytest.raises(ConfigError, match=r"^config\.data\.path: not set"):
    pipeline.open_dataset(ml_collections.ConfigDict(
        dict(name="jsonl", data_dir=str(tmp_path / "tfds"), cache=False)))
  with pytest.raises(ConfigError, match=r"config\.data\.path: no such directory"):
    open_jsonl(tmp_path / "nowhere", tmp_path / "tfds")
  os.makedirs(tmp_path / "empty")
  with pytest.raises(ConfigError, match=r"config\.data\.path: .*empty has no data\.jsonl"):
    open_jsonl(tmp_path / "empty", tmp_path / "tfds")
  root = bad_rows(tmp_path, [GOOD], spec={})
  os.remove(os.path.join(root, "dataset.json"))
  with pytest.raises(ConfigError, match=r"dataset\.json, field 'labels': missing"):
    open_jsonl(root, tmp_path / "tfds")
  write_dir(root, [GOOD], {"labels": ["x"], "image_size": [0, 8]})
  with pytest.raises(ConfigError, match=r"dataset\.json, field 'image_size': expected a "
                                        r"positive integer"):
    open_jsonl(root, tmp_path / "tfds")
  write_dir(root, [{**GOOD, "split": "test"}], {"labels": ["x"]})
  with pytest.raises(ConfigError, match=r"no row is in 'train'"):
    open_jsonl(root, tmp_path / "tfds")


@pytest.mark.parametrize("row, field, words", [
    ({"split": "train", "question": "q", "choices": ["a", "b"], "answer": "c"}, "answer",
     "'c' is not one of the choices"),
    ({"split": "train", "question": "q", "choices": ["a", "b"], "answer": 2}, "answer",
     "expected an index 0..1"),
    ({"split": "train", "question": "q", "choices": ["a"], "answer": 0}, "choices",
     "at least 2 strings"),
    ({"split": "train", "question": "q", "choices": ["a\nb", "c"], "answer": 0}, "choices",
     "line break"),
    ({"split": "train", "choices": ["a", "b"], "answer": 0}, "question", "missing"),
    ({"split": "train", "question": "q", "choices": ["a", "b"], "answer": 0, "audio": "x"},
     "audio", "unknown in a multiple_choice row"),
    ({"split": "train", "question": "q", "label": "x"}, "label", "multiple-choice dataset"),
])
def test_bad_multiple_choice_rows(tmp_path, row, field, words):
  first = {"split": "train", "question": "q", "choices": ["a", "b"], "answer": 0}
  root = write_dir(tmp_path / "data", [first, row])
  with pytest.raises(ConfigError) as error:
    open_jsonl(root, tmp_path / "tfds")
  message = str(error.value)
  assert "\n" not in message
  assert f"data.jsonl line 2, field '{field}'" in message and words in message, message


def test_resample_matches_band_limited_interpolation():
  scipy_signal = pytest.importorskip("scipy.signal")
  rng = np.random.default_rng(0)
  for n, rate, new_rate in ((100, 16000, 8000), (101, 16000, 8000), (99, 8000, 16000),
                            (1000, 44100, 16000), (64, 22050, 16000)):
    x = rng.normal(size=n).astype(np.float32)
    expected = scipy_signal.resample(x.astype(np.float64), round(n * new_rate / rate))
    np.testing.assert_allclose(reader.resample(x, rate, new_rate), expected, atol=1e-5)


def test_demo_directory_builds(tmp_path):
  demo = REPO / "examples" / "jsonl_demo"
  size = sum(f.stat().st_size for f in demo.rglob("*") if f.is_file())
  assert size < 100_000, size
  dataset = open_jsonl(demo, tmp_path / "tfds")
  assert {split: len(source) for split, source in dataset.sources.items()} == \
      {"train": 42, "validation": 9, "test": 9}
  assert dataset.builder.info.features["label"].names == ["circle", "square", "triangle"]
  example = dataset.sources["test"][0]
  assert example["image"].shape == (16, 16, 3) and example["audio"].shape == (2000,)


def train_losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r["train/loss"] for r in map(json.loads, f) if "train/loss" in r]


def test_runlocal_config_trains_on_a_jsonl_directory(data_dir, tmp_path):
  root = toy_classification(tmp_path / "data")
  config = load_config("configs/edu/jsonl.py", "runlocal,sample_rate=8000",  # dataset.json's
                       **{"data.data_dir": data_dir, "data.path": root})
  workdir = str(tmp_path / "run")
  loop.train(config, workdir)
  with open(os.path.join(workdir, "eval.json")) as f:
    results = json.load(f)
  assert results["step"] == config.total_steps
  assert results["test"]["num_examples"] == 6 and results["validation"]["num_examples"] == 6
  losses = train_losses(workdir)
  assert len(losses) == 3 and all(np.isfinite(losses))
  assert losses[-1] < 0.8 * losses[0], losses  # 0.96 -> 0.30 when measured
  assert results["validation"]["accuracy"] > 0.5  # chance: 1/3; measured 1.0


def test_config_names_a_modality_the_data_lacks(data_dir, tmp_path):
  root = write_dir(tmp_path / "data", [{"split": "train", "text": "a", "label": "x"}],
                   {"labels": ["x", "y"]})
  config = load_config("configs/edu/jsonl.py", "runlocal",
                       **{"data.data_dir": data_dir, "data.path": root})
  with pytest.raises(ConfigError, match=r"config\.data\.fields\.image: dataset 'jsonl' has "
                                        r"no feature 'image'; it has text, label"):
    loop.train(config, str(tmp_path / "run"))


def toy_multiple_choice(root, count=48, seed=0):
  """"Which colour is the picture?" with the picture's colour among 3 shuffled choices;
  half the rows ask it with words only ("The ball is red. ..."), with no image."""
  rng = np.random.default_rng(seed)
  os.makedirs(root, exist_ok=True)
  rows = []
  for i in range(count):
    split = "train" if i < count - 12 else ("validation" if i < count - 6 else "test")
    colour = int(rng.integers(3))
    choices = [LABELS[j] for j in rng.permutation(3)]
    row = {"split": split, "choices": choices, "answer": LABELS[colour]}
    if i % 2:
      pixels = np.zeros((8, 8, 3), np.uint8)
      pixels[..., colour] = 255
      Image.fromarray(pixels).save(os.path.join(root, f"{i}.png"))
      row.update(question="Which colour is the picture?", image=f"{i}.png")
    else:
      row.update(question="Which colour is the ball?", context=f"The ball is {LABELS[colour]}.")
    rows.append(row)
  return write_dir(root, rows, {"image_size": [8, 8]})


def test_multiple_choice_trains_on_a_jsonl_directory(data_dir, tmp_path):
  root = toy_multiple_choice(tmp_path / "data")
  config = load_config("configs/edu/jsonl.py", "runlocal,task=multiple_choice,max_choices=3",
                       **{"data.data_dir": data_dir, "data.path": root,
                          "input.max_text_len": 24})
  assert config.task.name == "multiple_choice" and config.model.modalities == "text,image"
  workdir = str(tmp_path / "run")
  loop.train(config, workdir)
  with open(os.path.join(workdir, "eval.json")) as f:
    results = json.load(f)
  assert results["test"]["num_examples"] == 6
  losses = train_losses(workdir)
  assert all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0], losses  # 1.05 -> 0.34
  assert results["validation"]["accuracy"] > 0.5  # chance: 1/3; measured 1.0
