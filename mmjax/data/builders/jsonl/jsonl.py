"""`jsonl`: your own data, no code. A directory of files -> a dataset.

    python -m mmjax.main --config configs/edu/jsonl.py --workdir runs/mine \\
        --config.data.path=DIR

DIR holds `data.jsonl`, optionally `dataset.json`, and the image and audio files the rows
name (see examples/jsonl_demo/). `data.jsonl` has one JSON object per line (blank lines
are skipped; lines are counted from 1, blank ones included, for error messages):

  split      required: "train", "validation" or "test" (the row's split; `train` must
             have rows, and its texts give the WordPiece vocabulary)
  text       a string, not empty: the text input of a classification row
  image      a path relative to DIR: an image PIL reads (png, jpg, ...) of 8 or 16 bits
             per channel, converted to RGB and resized (bilinear) to dataset.json's
             `image_size` (one warning per build counts the images resized)
  audio      a path relative to DIR: an integer PCM .wav (8/16/24/32-bit, read with the
             standard `wave` module), averaged to mono, resampled (band-limited) to
             `audio_sample_rate` (one warning per build counts the files resampled), then
             cut or zero-padded to `audio_seconds`

and one kind of target for the whole file, fixed by the first row:

  classification   `label`: a class name, one of dataset.json's `labels`. Every row has
                   the inputs the first row has (any non-empty subset of text, image,
                   audio).
      {"split": "train", "text": "three corners", "image": "img/t1.png", "label": "triangle"}
  multiple choice  `question` (string, not empty), `context` (string, optional),
                   `choices` (a list of at least 2 non-empty strings, no line breaks), `answer`
                   (the index of the right choice, or its text), `image` optional per
                   row; no `text` or `audio`.
      {"split": "test", "question": "How many corners?", "choices": ["3", "4"], "answer": 0}

`dataset.json` (optional; required for classification, which needs `labels`) is an
object with any of:

  labels             class names, in class-id order (a row's label outside it is an error)
  image_size         [height, width] every image is resized to; default [32, 32]
  audio_sample_rate  Hz; default 16000 (a run's config.model.audio.sample_rate must equal it)
  audio_seconds      stored waveform length; default 1.0
  vocab_size         WordPiece vocabulary size; default 4096
  description        free text, kept as the dataset's description

Features, only those the data has:
  classification   `text` Text, `image` uint8 [H, W, 3], `audio` float32 [S] in [-1, 1)
                   (S = round(audio_sample_rate * audio_seconds)), `label` ClassLabel(labels)
  multiple choice  `question` Text, `context` Text ("" when none), `choices` Text (the
                   choices joined by "\\n"), `answer` int32 index, `image` uint8 [H, W, 3]
                   (black when the row has none), `has_image` int32 (1 when it has one)
A WordPiece `tokenizer.json` is built from the train split's texts (classification:
`text`; multiple choice: question, context and choices).

Checking comes first: `config.data.path` missing, a missing file, malformed JSON, a
missing or unknown field, a wrong type, an empty text, an unknown label, an unreadable
image or audio file, or an image of 32-bit pixels is a one-line ConfigError naming the
file, line and field, e.g.
  .../data.jsonl line 17, field 'image': no such file 'imgs/x.png'
raised before anything is written. Files are checked to exist on every open; images and
audio are decoded (and so checked) when the dataset is built.

Each directory gets its own build, named (tfds config name) by a hash of its absolute
path, data.jsonl, dataset.json, and the size and modification time of every file the
rows name: editing any of them builds afresh on the next run (old builds stay in
`config.data.data_dir`/jsonl/ until deleted).
"""

from __future__ import annotations

import dataclasses
import logging
import os

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from mmjax.config import ConfigError
from mmjax.data.builders.jsonl import reader
from mmjax.data.tokenizer import TOKENIZER_FILE, build_wordpiece

log = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class JsonlConfig(tfds.core.BuilderConfig):
  """One directory's build: `name` is its fingerprint; the checked spec and rows ride
  along so the builder does not parse the files twice."""

  path: str = ""
  spec: reader.Spec = dataclasses.field(default_factory=reader.Spec, repr=False)
  table: reader.Table | None = dataclasses.field(default=None, repr=False)


def directory_config(path: str | None) -> JsonlConfig:
  """The checked JsonlConfig of directory `path` (`config.data.path`)."""
  if not path:
    raise ConfigError("config.data.path: not set; the jsonl dataset reads a directory holding "
                      "data.jsonl (--config.data.path=DIR)")
  if not os.path.isdir(path):
    raise ConfigError(f"config.data.path: no such directory '{path}'")
  path = os.path.abspath(path)
  spec, spec_bytes = reader.read_spec(path)
  table, data_bytes = reader.read_rows(path, spec)
  name = "d" + reader.fingerprint(path, table, data_bytes, spec_bytes)
  return JsonlConfig(name=name, description=f"{path} ({table.kind})", path=path, spec=spec,
                     table=table)


class Jsonl(tfds.core.GeneratorBasedBuilder):
  """A directory of data.jsonl (+ dataset.json and media files) as a dataset."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  @property
  def audio_sample_rate(self) -> int:
    """Hz of the stored `audio` (dataset.json's `audio_sample_rate`), which
    pipeline.make_preprocessor checks against `config.model.audio.sample_rate`."""
    return self.builder_config.spec.audio_sample_rate

  @classmethod
  def builder_kwargs(cls, data_config: ml_collections.ConfigDict) -> dict:
    """{"config": the checked JsonlConfig of `config.data.path`} for the constructor."""
    return {"config": directory_config(data_config.get("path", None))}

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    if not isinstance(config, JsonlConfig) or config.table is None:
      raise ConfigError("the jsonl dataset is opened with a directory: config.data.path "
                        "(pipeline.open_dataset passes it)")
    spec, table = config.spec, config.table
    image = tfds.features.Tensor(shape=(*spec.image_size, 3), dtype=np.uint8)
    if table.kind == reader.MULTIPLE_CHOICE:
      features = {
          "question": tfds.features.Text(),
          "context": tfds.features.Text(),
          "choices": tfds.features.Text(),
          "answer": tfds.features.Scalar(dtype=np.int32),
          "image": image,
          "has_image": tfds.features.Scalar(dtype=np.int32),
      }
    else:
      features = {}
      if "text" in table.inputs:
        features["text"] = tfds.features.Text()
      if "image" in table.inputs:
        features["image"] = image
      if "audio" in table.inputs:
        features["audio"] = tfds.features.Tensor(shape=(spec.audio_samples,),
                                                 dtype=np.float32)
      features["label"] = tfds.features.ClassLabel(names=list(spec.labels))
    return tfds.core.DatasetInfo(
        builder=self,
        description=(spec.description or "A dataset read from data.jsonl.") +
        f" Read from {config.path}.",
        features=tfds.features.FeaturesDict(features),
    )

  def _texts(self, row: reader.Row) -> list[str]:
    if row.text is not None:
      return [row.text]
    return [row.question or "", row.context, *(row.choices or ())]

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded.
    config = self.builder_config
    table = config.table
    # Decode every file once before anything is written, so a bad file anywhere is one
    # clear error and never a half-written dataset.
    resized, resampled = [], []
    for row in table.rows:
      self._media(row, resized, resampled)
    spec, data_file = config.spec, os.path.join(config.path, reader.DATA_FILE)
    if resized:
      log.warning("%s: %d of %d images are not %dx%d (dataset.json image_size [%d, %d]) and "
                  "were resized (bilinear), first: %s", data_file, len(resized),
                  sum(row.image is not None for row in table.rows), spec.image_size[1],
                  spec.image_size[0], *spec.image_size, resized[0])
    if resampled:
      log.warning("%s: %d of %d audio files are not at %d Hz (dataset.json audio_sample_rate) "
                  "and were resampled, first: %s", data_file, len(resampled),
                  sum(row.audio is not None for row in table.rows), spec.audio_sample_rate,
                  resampled[0])
    texts = [text for row in table.rows if row.split == "train" for text in self._texts(row)]
    if "text" in table.inputs:
      try:
        build_wordpiece(texts, config.spec.vocab_size,
                        os.path.join(self.data_dir, TOKENIZER_FILE))
      except ValueError as e:
        raise ConfigError(f"{os.path.join(config.path, reader.SPEC_FILE)}, field "
                          f"'vocab_size': {e}") from None
    return {split: self._generate_examples([r for r in table.rows if r.split == split])
            for split in table.split_names()}

  def _media(self, row: reader.Row, resized: list[str] | None = None,
             resampled: list[str] | None = None) -> dict[str, np.ndarray]:
    """The row's decoded image and audio (those it has); a resized image and a resampled
    audio file are noted in `resized` and `resampled`."""
    spec, path = self.builder_config.spec, self.builder_config.path
    out = {}
    if row.image is not None:
      out["image"] = reader.load_image(path, row, spec.image_size, resized)
    if row.audio is not None:
      out["audio"] = reader.load_audio(path, row, spec.audio_sample_rate, spec.audio_samples,
                                       resampled)
    return out

  def _example(self, row: reader.Row) -> dict:
    media = self._media(row)
    if self.builder_config.table.kind == reader.MULTIPLE_CHOICE:
      size = self.builder_config.spec.image_size
      return {
          "question": row.question,
          "context": row.context,
          "choices": "\n".join(row.choices),
          "answer": row.answer,
          "image": media.get("image", np.zeros((*size, 3), np.uint8)),
          "has_image": int("image" in media),
      }
    example = {"label": row.label, **media}
    if row.text is not None:
      example["text"] = row.text
    return example

  def _generate_examples(self, rows: list[reader.Row]):
    for row in rows:
      yield row.line, self._example(row)  # key: the line number, unique in the file
