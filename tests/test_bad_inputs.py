"""Bad inputs -> one line naming the field, file or line, before anything is written.

One test per row of the README's "Bad inputs" table that no other test file covers (the
table names the test of every row). Each error is a ConfigError whose message is one
line; a run stops before it writes to its workdir, a dataset build before it writes to
the data dir.
"""

import logging
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image
from test_jsonl import open_jsonl, tone, write_dir, write_wav
from test_main import mmjax

from mmjax.config import ConfigError
from mmjax.data import pipeline
from mmjax.train import loop

from conftest import load_config


def files_under(path):
  return [name for _, _, names in os.walk(path) for name in names]


def one_line_error(call, *args):
  """The message of the ConfigError `call(*args)` raises, checked to be one line."""
  with pytest.raises(ConfigError) as error:
    call(*args)
  message = str(error.value)
  assert "\n" not in message, message
  return message


def test_missing_data_directory_names_the_field(tmp_path):
  workdir, nowhere = tmp_path / "run", tmp_path / "nowhere"
  done = mmjax("--config", "configs/edu/jsonl.py:runlocal", "--workdir", str(workdir),
               f"--config.data.path={nowhere}", timeout=300)
  assert done.returncode == 2
  assert done.stderr.strip() == (f"mmjax: error: config.data.path: no such directory "
                                 f"'{nowhere}'")
  assert not os.path.exists(workdir)
  # A file where the data dir (or a folder above it) should be: named before any build.
  (tmp_path / "a_file").write_text("")
  message = one_line_error(pipeline.open_dataset, ml_collections.ConfigDict(
      dict(name="edu_grading", data_dir=str(tmp_path / "a_file" / "tfds"), cache=False)))
  assert message == (f"config.data.data_dir: '{tmp_path / 'a_file'}' is a file; expected a "
                     f"directory to build datasets into (created when missing), got "
                     f"'{tmp_path / 'a_file' / 'tfds'}'")


@pytest.mark.parametrize("rows, words", [
    ([{"split": "train", "text": "cat", "label": "x"},
      {"split": "train", "text": " \t", "label": "x"}],
     "line 2, field 'text': empty; expected some text, got \" \\t\""),
    ([{"split": "train", "question": "q", "choices": ["a", "b"], "answer": 0},
      {"split": "train", "question": "", "choices": ["a", "b"], "answer": 0}],
     "line 2, field 'question': empty; expected some text, got \"\""),
    ([{"split": "train", "question": "q", "choices": ["a", " "], "answer": 0}],
     "line 1, field 'choices': choice 1 is empty; expected some text in every choice"),
])
def test_empty_text_is_a_one_line_error(tmp_path, rows, words):
  root = write_dir(tmp_path / "data", rows, {"labels": ["x"]} if "label" in rows[0] else {})
  message = one_line_error(open_jsonl, root, tmp_path / "tfds")
  assert message == f"{os.path.join(root, 'data.jsonl')} {words}"
  assert not os.path.exists(tmp_path / "tfds" / "jsonl")


def test_images_of_another_size_are_resized_with_one_warning(tmp_path, caplog):
  root = str(tmp_path / "data")
  os.makedirs(root)
  Image.new("RGB", (8, 8), (255, 0, 0)).save(os.path.join(root, "fits.png"))
  Image.new("RGB", (10, 12), (0, 255, 0)).save(os.path.join(root, "tall.png"))
  Image.new("RGB", (40, 20), (0, 0, 255)).save(os.path.join(root, "wide.png"))
  rows = [{"split": "train", "image": name, "label": "x"}
          for name in ("fits.png", "tall.png", "wide.png")]
  write_dir(root, rows, {"labels": ["x"], "image_size": [8, 8]})
  with caplog.at_level(logging.WARNING):
    dataset = open_jsonl(root, tmp_path / "tfds")
  images = [dataset.sources["train"][i]["image"] for i in range(3)]
  assert all(image.shape == (8, 8, 3) for image in images)
  # Each keeps its single colour (examples are stored in an order of their own).
  assert sorted(tuple(image.reshape(-1, 3).max(0) // 255) for image in images) == [
      (0, 0, 1), (0, 1, 0), (1, 0, 0)]
  assert all((image == image[0, 0]).all() for image in images)
  notes = [r.getMessage() for r in caplog.records if "resized" in r.getMessage()]
  assert notes == [f"{os.path.join(root, 'data.jsonl')}: 2 of 3 images are not 8x8 "
                   "(dataset.json image_size [8, 8]) and were resized (bilinear), first: "
                   "line 2 'tall.png' 10x12"], notes


def test_images_whose_channels_do_not_convert_are_one_line_errors(tmp_path):
  root = str(tmp_path / "data")
  os.makedirs(root)
  # 16-bit grey converts (scaled to 8 bits, not clipped to white); 32-bit float does not.
  Image.fromarray(np.full((8, 8), 60000, np.uint16)).save(os.path.join(root, "deep.png"))
  Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(os.path.join(root, "float.tiff"))
  rows = [{"split": "train", "image": "deep.png", "label": "x"}]
  write_dir(root, rows, {"labels": ["x"], "image_size": [8, 8]})
  image = open_jsonl(root, tmp_path / "tfds").sources["train"][0]["image"]
  np.testing.assert_array_equal(image, 60000 >> 8)
  write_dir(root, [*rows, {"split": "train", "image": "float.tiff", "label": "x"}],
            {"labels": ["x"], "image_size": [8, 8]})
  data_dir = tmp_path / "tfds2"
  message = one_line_error(open_jsonl, root, data_dir)
  assert message == (f"{os.path.join(root, 'data.jsonl')} line 2, field 'image': 'float.tiff' "
                     "has 32-bit float pixels (mode F), which do not convert to 8-bit RGB; "
                     "expected an 8-bit or 16-bit grey, palette or colour image")
  assert files_under(data_dir) == []
  # The model's channels (config.input.image_channels): grey repeats into RGB; no other
  # conversion is guessed.
  assert pipeline.convert_image(np.zeros((4, 4, 1), np.uint8), None, 3).shape == (4, 4, 3)
  message = one_line_error(pipeline.convert_image, np.zeros((4, 4, 3), np.uint8), None, 1)
  assert message == ("config.input.image_channels=1: images have 3 channels; only 1-channel "
                     "(grey) images convert")


def audio_dir(root, rates, spec_rate):
  os.makedirs(root, exist_ok=True)
  rows = []
  for i, rate in enumerate(rates):
    write_wav(os.path.join(root, f"{i}.wav"), tone(440, 0.25, rate), rate)
    rows.append({"split": "train", "audio": f"{i}.wav", "label": "x"})
  return write_dir(root, rows, {"labels": ["x"], "audio_sample_rate": spec_rate,
                                "audio_seconds": 0.25})


def test_audio_files_at_another_rate_are_resampled_with_one_warning(tmp_path, caplog):
  root = audio_dir(tmp_path / "data", (8000, 16000, 22050), 8000)
  with caplog.at_level(logging.WARNING):
    dataset = open_jsonl(root, tmp_path / "tfds")
  source = dataset.sources["train"]
  waves = [source[i]["audio"] for i in range(3)]
  assert all(w.shape == (2000,) for w in waves)
  for wave in waves:  # the same tone at 8 kHz, whatever the file's rate (edges aside)
    np.testing.assert_allclose(wave[200:-200], waves[0][200:-200], atol=0.05)
  notes = [r.getMessage() for r in caplog.records if "resampled" in r.getMessage()]
  assert notes == [f"{os.path.join(root, 'data.jsonl')}: 2 of 3 audio files are not at "
                   "8000 Hz (dataset.json audio_sample_rate) and were resampled, first: "
                   "line 2 '1.wav' 16000 Hz"], notes


def test_model_sample_rate_other_than_the_data_is_a_one_line_error(tmp_path):
  root = audio_dir(tmp_path / "data", (8000, 8000, 8000), 8000)
  config = load_config("configs/edu/jsonl.py", "runlocal,modalities=audio",
                       **{"data.data_dir": str(tmp_path / "tfds"), "data.path": root})
  assert config.model.audio.sample_rate == 16000
  workdir = tmp_path / "run"
  message = one_line_error(loop.train, config, str(workdir))
  assert message == (f"config.model.audio.sample_rate=16000: the audio is stored at 8000 Hz "
                     f"({os.path.join(root, 'dataset.json')} audio_sample_rate); set "
                     "--config.model.audio.sample_rate=8000 so the audio tower's spectrogram "
                     "reads it at its rate")
  assert not os.path.exists(workdir)
