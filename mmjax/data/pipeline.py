"""Input pipelines: tfds array_record data sources read with grain, no TensorFlow.

Batches are dicts of numpy arrays with these keys (the names users see in configs,
models and notebooks):

  image         float32 [B, H, W, C] in [-1, 1]
  text_ids      int32   [B, T]  WordPiece ids, [CLS] first, [PAD]=0 after the text
  text_mask     bool    [B, T]  True on real tokens
  audio         float32 [B, S]  waveform samples (datasets store them as float32 or int16
                                PCM, which is scaled to [-1, 1))
  video         float32 [B, F, H, W, C] in [-1, 1]: F frames in time order (datasets
                                store them as uint8 [F, H, W, C])
  label         int32   [B]     the main target; other targets (e.g. `written_digit`)
                                are int32 [B] under their own names
  target_ids    int32   [B, T]  generation (mmjax/tasks/generation.py): the text to write,
  target_mask   bool    [B, T]  [CLS] (BOS) first and [SEP] (EOS) last; True on real tokens
  example_mask  bool    [B]     False on padding examples that fill the last eval batch
  mix_lambda    float32 [B]     training batches with mixup / cutmix (`config.augment`,
  mix_<head>    int32   [B]     mmjax/data/augment.py): the example's share of the mix and
                                the partner's target of each mixed head

Training order is a function of the seed, the step and the global batch size only:
grain shuffles each epoch afresh from the seed, every process reads its own rows of
each global batch (the rows its devices hold), and the iterator state (a position) is
saved with every checkpoint, so a resumed run reads exactly the batches an
uninterrupted run would, and 1 device, 8 devices or 2 processes train on the same data.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils

from mmjax.config import ConfigError
from mmjax.data.builders import BUILDERS
from mmjax.data.tokenizer import TOKENIZER_FILE, TextEncoder, load_tokenizer

log = logging.getLogger(__name__)

INPUT_ROLES = ("image", "text", "audio", "video")


@dataclasses.dataclass
class Dataset:
  """A prepared dataset: its tfds builder, per-split data sources and tokenizer file."""

  name: str
  builder: tfds.core.DatasetBuilder
  sources: dict[str, Sequence]
  tokenizer_path: str | None
  cache: bool = False

  def num_classes(self, feature: str) -> int:
    """Number of classes of a ClassLabel feature."""
    spec = self.builder.info.features[feature]
    if not hasattr(spec, "num_classes"):
      raise ConfigError(f"feature '{feature}' of dataset '{self.name}' is not a class label")
    return spec.num_classes

  def source(self, split: str) -> Sequence:
    """The examples of `split`, or of a slice of it: "train[:1000]", "train[1000:2000]",
    "train[:10%]" (the first examples in the split's stored order, as tfds slices)."""
    match = _SLICE.fullmatch(split)
    name = match.group(1) if match else split
    if name not in self.sources:
      raise ConfigError(f"dataset '{self.name}' has no split '{name}'; it has "
                        f"{', '.join(self.sources)}")
    if self.cache and not isinstance(self.sources[name], InMemorySource):
      self.sources[name] = InMemorySource(self.sources[name])
    if not match:
      return self.sources[name]
    whole = self.sources[name]
    bounds = [_slice_bound(b, len(whole)) for b in match.group(2, 3)]
    start, stop = bounds[0] or 0, len(whole) if bounds[1] is None else bounds[1]
    if not 0 <= start < stop <= len(whole):
      raise ConfigError(f"split '{split}': expected 0 <= start < stop <= {len(whole)} "
                        f"(the examples of '{name}'), got [{start}:{stop}]")
    return SliceSource(whole, start, stop)


_SLICE = re.compile(r"(\w+)\[(\d*%?):(\d*%?)\]")


def _slice_bound(text: str, size: int) -> int | None:
  if not text:
    return None
  return size * int(text[:-1]) // 100 if text.endswith("%") else int(text)


def train_source(dataset: Dataset, data_config: ml_collections.ConfigDict) -> Sequence:
  """The training examples: `data_config.train_split`, reduced by `train_groups` when set.

  `train_groups = dict(feature=NAME, count=N)` keeps the examples whose integer feature
  NAME takes one of the first N distinct values met in the split's stored order (off
  while NAME is ""): e.g.
  dict(feature="image_id", count=200) trains on every question about 200 images (a
  few-images regime), where a slice `train[:200]` would keep 200 questions.
  """
  source = dataset.source(data_config.train_split)
  groups = dict(data_config.get("train_groups", None) or {})
  if not groups.get("feature", ""):  # off while the feature is ""
    return source
  field = "config.data.train_groups"
  if set(groups) != {"feature", "count"}:
    raise ConfigError(f"{field}: expected dict(feature=NAME, count=N), got fields "
                      f"{', '.join(sorted(groups))}")
  feature, count = groups["feature"], groups["count"]
  if feature not in dataset.builder.info.features:
    raise ConfigError(f"{field}.feature: dataset '{dataset.name}' has no feature '{feature}'; "
                      f"it has {', '.join(dataset.builder.info.features)}")
  if isinstance(count, bool) or not isinstance(count, int) or count < 1:
    raise ConfigError(f"{field}.count: expected a positive integer, got {count!r}")
  values = [int(np.asarray(source[i][feature])) for i in range(len(source))]
  kept = set(list(dict.fromkeys(values))[:count])  # the first `count` distinct values
  if len(kept) < count:
    raise ConfigError(f"{field}.count: {count} values of '{feature}' asked for; split "
                      f"'{data_config.train_split}' has {len(kept)}")
  return SubsetSource(source, [i for i, value in enumerate(values) if value in kept])


class SubsetSource:
  """The examples of a data source at `indices`, in that order; itself a data source."""

  def __init__(self, source: Sequence, indices: Sequence[int]):
    self._source, self._indices = source, list(indices)

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, index: int) -> dict:
    return self._source[self._indices[index]]


class SliceSource:
  """Examples [start, stop) of a data source, itself a data source (`Dataset.source`)."""

  def __init__(self, source: Sequence, start: int, stop: int):
    self._source, self._start, self._stop = source, start, stop

  def __len__(self) -> int:
    return self._stop - self._start

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} outside a slice of {len(self)} examples")
    return self._source[self._start + index]

  def __getitems__(self, indices: Sequence[int]) -> list[dict]:
    if any(not 0 <= i < len(self) for i in indices):
      raise IndexError(f"an index outside a slice of {len(self)} examples")
    shifted = [self._start + i for i in indices]
    many = getattr(self._source, "__getitems__", None)
    return list(many(shifted)) if many else [self._source[i] for i in shifted]


def open_dataset(data_config: ml_collections.ConfigDict) -> Dataset:
  """Returns `config.data.name`, building it into `config.data.data_dir` on first use."""
  if data_config.name not in BUILDERS:
    raise ConfigError(f"config.data.name: unknown dataset '{data_config.name}'; expected one of "
                      f"{', '.join(BUILDERS)}")
  _check_data_dir(data_config.get("data_dir", None))
  builder_class = BUILDERS[data_config.name]
  # A builder reading users' files (jsonl, scienceqa) turns `config.data` into its own
  # constructor arguments (a BuilderConfig naming the files' version) here.
  extra = (builder_class.builder_kwargs(data_config)
           if hasattr(builder_class, "builder_kwargs") else {})
  make_builder = lambda: builder_class(  # noqa: E731
      data_dir=data_config.data_dir, file_format="array_record", **extra)
  manual_dir = data_config.get("manual_dir", None)
  builder = make_builder()
  # Process 0 builds first, alone; the others wait, then reuse its files (shared data_dir)
  # or, on a disk of their own, build the same deterministic data themselves.
  if jax.process_index() == 0 and not _prepared(builder):
    # Independent runs sharing a data dir (a parallel sweep) take turns: the first builds,
    # the others find the files when they get the lock, and read them with a new builder.
    # The lock file lives in the temp dir, so a failed build leaves nothing in the data dir.
    key = hashlib.sha1(os.path.abspath(builder.data_dir).encode()).hexdigest()[:16]
    with open(os.path.join(tempfile.gettempdir(), f"mmjax-build-{key}.lock"), "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      builder = make_builder()
      _prepare(builder, manual_dir)
      fcntl.flock(lock, fcntl.LOCK_UN)
    builder = make_builder()
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"mmjax: dataset {data_config.name} prepared")
    builder = make_builder()
    _prepare(builder, manual_dir)
  tokenizer_path = os.path.join(builder.data_dir, TOKENIZER_FILE)
  return Dataset(data_config.name, builder, dict(builder.as_data_source()),
                 tokenizer_path if os.path.exists(tokenizer_path) else None, data_config.cache)


def _check_data_dir(data_dir: str | None) -> None:
  """ConfigError naming `config.data.data_dir` when datasets cannot be built into it: a
  file stands where it, or a folder above it, should be (a missing directory is created)."""
  if not data_dir or "://" in data_dir:  # unset (tfds's default), or a remote store
    return
  existing = os.path.abspath(data_dir)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ConfigError(f"config.data.data_dir: '{existing}' is a file; expected a directory to "
                      f"build datasets into (created when missing), got '{data_dir}'")


def _prepared(builder: tfds.core.DatasetBuilder) -> bool:
  return (os.path.exists(os.path.join(builder.data_dir, "dataset_info.json"))
          and builder.is_prepared())


def _prepare(builder: tfds.core.DatasetBuilder, manual_dir: str | None = None) -> None:
  """Generates the dataset into its data dir unless it is already there (offline);
  `manual_dir` (`config.data.manual_dir`) holds files a builder reads as given."""
  if _prepared(builder):
    return
  log.info("building dataset %s into %s (first use, offline)", builder.name, builder.data_dir)
  tfds.disable_progress_bar()  # a few seconds of work; the log line above says it
  # try_download_gcs=False: tfds would otherwise look for a prebuilt copy online.
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      try_download_gcs=False, manual_dir=manual_dir))


class InMemorySource:
  """A data source read once into memory (`config.data.cache=True`).

  Decoding a tfds record costs ~0.3 ms of Python; for datasets that fit in memory,
  paying it once instead of every epoch keeps a CPU run from waiting on input.
  """

  def __init__(self, source: Sequence, chunk: int = 4096):
    self._examples = []
    for start in range(0, len(source), chunk):
      stop = min(start + chunk, len(source))
      self._examples.extend(source.__getitems__(list(range(start, stop))))

  def __len__(self) -> int:
    return len(self._examples)

  def __getitem__(self, index: int) -> dict:
    return self._examples[index]


class Preprocessor:
  """Turns dataset examples into model batches (see the module docstring for keys).

  `fields` maps batch roles to the dataset's feature names, e.g. {"image": "image",
  "text": "question", "label": "label", "written_digit": "written_digit"}. The roles
  `image`, `text`, `audio` and `video` are inputs; every other role is an int32 target of
  that name.
  """

  def __init__(self, fields: dict[str, str], text_encoder: TextEncoder | None, *,
               image_size: Sequence[int] | None = None, image_channels: int | None = None):
    self.fields = dict(fields)
    self.targets = tuple(role for role in fields if role not in INPUT_ROLES)
    self.text_encoder = text_encoder
    self.image_size = tuple(image_size) if image_size else None
    self.image_channels = image_channels
    if "text" in fields and text_encoder is None:
      raise ValueError("a text field needs a tokenizer; the dataset has no tokenizer.json")

  @property
  def batch_keys(self) -> tuple[str, ...]:
    """Keys of the arrays that go to the device."""
    inputs = (("image",) if "image" in self.fields else ()) + (
        ("text_ids", "text_mask") if "text" in self.fields else ()) + (
        ("audio",) if "audio" in self.fields else ()) + (
        ("video",) if "video" in self.fields else ())
    return inputs + self.targets + ("example_mask",)

  @property
  def image_options(self) -> dict:
    return dict(image_size=self.image_size, image_channels=self.image_channels)

  def example(self, raw: dict) -> dict:
    out = {role: np.int32(raw[self.fields[role]]) for role in self.targets}
    if "image" in self.fields:
      image = convert_image(raw[self.fields["image"]], self.image_size, self.image_channels)
      out["image"] = image.astype(np.float32) * (2.0 / 255.0) - 1.0
    if "text" in self.fields:
      text = raw[self.fields["text"]]
      out["text"] = text.decode("utf-8") if isinstance(text, bytes) else str(text)
    if "audio" in self.fields:
      audio = np.asarray(raw[self.fields["audio"]])
      out["audio"] = (audio.astype(np.float32) / 32768.0 if audio.dtype == np.int16
                      else audio.astype(np.float32))
    if "video" in self.fields:  # uint8 frames, scaled like images
      out["video"] = np.asarray(raw[self.fields["video"]]).astype(np.float32) * (
          2.0 / 255.0) - 1.0
    return out

  def collate(self, examples: Sequence[dict]) -> dict[str, np.ndarray]:
    batch = {role: np.stack([e[role] for e in examples]) for role in self.targets}
    batch["example_mask"] = np.ones(len(examples), bool)
    if "image" in self.fields:
      batch["image"] = np.stack([e["image"] for e in examples])
    if "text" in self.fields:
      batch.update(self.text_encoder([e["text"] for e in examples]))
    if "audio" in self.fields:
      batch["audio"] = np.stack([e["audio"] for e in examples])
    if "video" in self.fields:
      batch["video"] = np.stack([e["video"] for e in examples])
    return batch


def convert_image(image: np.ndarray, size: Sequence[int] | None, channels: int | None
                  ) -> np.ndarray:
  """An image [H, W, C] resized to `size` (H', W') by nearest neighbour (an exact repeat
  for integer factors) and, for `channels` = 3 from 1, grey repeated into RGB."""
  if size is not None and tuple(image.shape[:2]) != tuple(size):
    rows = np.arange(size[0]) * image.shape[0] // size[0]
    cols = np.arange(size[1]) * image.shape[1] // size[1]
    image = image[rows][:, cols]
  if channels is not None and image.shape[-1] != channels:
    if image.shape[-1] != 1:
      raise ConfigError(f"config.input.image_channels={channels}: images have "
                        f"{image.shape[-1]} channels; only 1-channel (grey) images convert")
    image = np.repeat(image, channels, axis=-1)
  return image


def make_preprocessor(dataset: Dataset, config: ml_collections.ConfigDict,
                      modalities: Sequence[str], targets: Sequence[str],
                      features: Sequence[str] = ()) -> Preprocessor:
  """Reads the inputs of `modalities` and the given targets, as `config.data.fields` names
  them, and the int `features` under their own names (e.g. groups for evaluation)."""
  wanted = [m for m in modalities] + list(targets)
  missing = [role for role in wanted if role not in config.data.fields]
  if missing:
    raise ConfigError(f"config.data.fields names no dataset feature for {', '.join(missing)}")
  fields = {role: config.data.fields[role] for role in wanted}
  fields.update({name: name for name in features if name not in fields})
  known = dataset.builder.info.features
  for role, feature in fields.items():
    if feature not in known:  # e.g. a modality a user's jsonl dataset does not have
      raise ConfigError(f"config.data.fields.{role}: dataset '{dataset.name}' has no feature "
                        f"'{feature}'; it has {', '.join(known)}")
  if "audio" in modalities:
    check_sample_rate(dataset, config)
  text_encoder = make_text_encoder(dataset, config) if "text" in modalities else None
  # Optional: the image size and channels a pretrained image tower expects.
  return Preprocessor(fields, text_encoder, image_size=config.input.get("image_size", None),
                      image_channels=config.input.get("image_channels", None))


def check_sample_rate(dataset: Dataset, config: ml_collections.ConfigDict) -> None:
  """ConfigError when the dataset declares the sample rate of its audio (a builder's
  `audio_sample_rate`) and `config.model.audio.sample_rate` (the rate the audio tower's
  spectrogram assumes; AudioEncoder's default when unset) differs from it."""
  stored = getattr(dataset.builder, "audio_sample_rate", None)
  if stored is None:
    return
  from mmjax.models.audio import AudioEncoder

  audio = config.model.get("audio", None) or {}
  expected = audio.get("sample_rate", None) or AudioEncoder.sample_rate
  if expected != stored:
    where = (f"{os.path.join(dataset.builder.builder_config.path, 'dataset.json')} "
             "audio_sample_rate" if dataset.name == "jsonl" else f"dataset '{dataset.name}'")
    raise ConfigError(f"config.model.audio.sample_rate={expected}: the audio is stored at "
                      f"{stored} Hz ({where}); set --config.model.audio.sample_rate={stored} "
                      "so the audio tower's spectrogram reads it at its rate")


def make_text_encoder(dataset: Dataset, config: ml_collections.ConfigDict) -> TextEncoder:
  """The TextEncoder of `config.input` (`max_text_len` tokens): `config.input.tokenizer`,
  a pretrained text tower's own tokenizer (file or directory with tokenizer.json), or by
  default the vocabulary the dataset was built with."""
  path = config.input.get("tokenizer", None)
  if path:
    if not os.path.exists(path):
      raise ConfigError(f"config.input.tokenizer: '{path}' does not exist; expected a "
                        "tokenizer.json file or a directory holding one")
    tokenizer = load_tokenizer(path, standard_ids=False)
  elif dataset.tokenizer_path is None:
    raise ConfigError(f"dataset '{dataset.name}' ships no tokenizer.json for its text")
  else:
    tokenizer = load_tokenizer(dataset.tokenizer_path)
  return TextEncoder(tokenizer, config.input.max_text_len)


def _rows_or_equal_share(global_batch_size: int, rows: tuple[int, int] | None
                         ) -> tuple[int, int]:
  """`rows`, or by default this process's equal share [p B / P, (p + 1) B / P)."""
  if rows is not None:
    return rows
  count = jax.process_count()
  if global_batch_size % count:
    raise ConfigError(f"batch size {global_batch_size} is not divisible by the number of "
                      f"processes ({count})")
  share = global_batch_size // count
  return jax.process_index() * share, (jax.process_index() + 1) * share


def _rows_of_global_batches(global_batch_size: int, rows: tuple[int, int]):
  """Local index j -> the index in the global stream of batches of `global_batch_size`
  of row `rows[0] + j % width` of batch `j // width`."""
  start, stop = rows
  width = stop - start
  return lambda j: j // width * global_batch_size + start + j % width


def train_iterator(source: Sequence, preprocessor: Preprocessor, *, global_batch_size: int,
                   seed: int, num_threads: int = 2, rows: tuple[int, int] | None = None,
                   augmenter: Any = None) -> grain.DatasetIterator:
  """An endless iterator of this process's rows `rows` (default: an equal share per process) of the
  shuffled global training batches.

  The global stream (every epoch shuffled afresh from `seed`) does not depend on the
  number of processes or devices, so any topology trains on the same batches; each
  process reads and preprocesses only its own rows. `iterator.get_state()` /
  `set_state()` give its position for checkpoints.

  `augmenter` (`augment.from_config`, None: off) augments each example with draws seeded
  by its position in the global stream, so augmentation keeps all of the above.
  """
  start, stop = _rows_or_equal_share(global_batch_size, rows)
  stream = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
  index = _rows_of_global_batches(global_batch_size, (start, stop))
  examples = grain.MapDataset.range(len(stream) // global_batch_size * (stop - start))
  if augmenter is None:
    dataset = (examples.map(lambda j: stream[index(j)])
               .map(preprocessor.example)
               .batch(stop - start, drop_remainder=True, batch_fn=preprocessor.collate))
  else:
    dataset = (examples.map(lambda j: augmenter.example(stream[index(j)], index(j), source))
               .batch(stop - start, drop_remainder=True, batch_fn=augmenter.collate))
  read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=8)
  return iter(dataset.to_iter_dataset(read_options))


def eval_batches(source: Sequence, preprocessor: Preprocessor, *, global_batch_size: int,
                 rows: tuple[int, int] | None = None) -> Iterator[dict[str, np.ndarray]]:
  """This process's rows `rows` (default: an equal share per process) of the split's global batches,
  in order.

  The last global batch is filled up with copies of an example marked
  `example_mask=False`, so every batch has the same shape (one compilation) and every
  process yields the same number of batches, as collective steps require.
  """
  if len(source) == 0:
    raise ConfigError("an evaluation split is empty")
  start, stop = _rows_or_equal_share(global_batch_size, rows)
  num_batches = -(-len(source) // global_batch_size)
  filler = preprocessor.example(source[0])
  for batch in range(num_batches):
    indices = range(batch * global_batch_size + start, batch * global_batch_size + stop)
    examples = [preprocessor.example(source[i]) for i in indices if i < len(source)]
    real = len(examples)
    collated = preprocessor.collate(examples + [filler] * (stop - start - real))
    collated["example_mask"][real:] = False
    yield collated


def pad_batch(batch: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
  """Pads every array to `batch_size` rows by repeating row 0; padding rows get
  example_mask=False."""
  size = len(batch["example_mask"])
  if size == batch_size:
    return batch
  pad = batch_size - size
  padded = {k: np.concatenate([v, np.repeat(v[:1], pad, axis=0)]) for k, v in batch.items()}
  padded["example_mask"][size:] = False
  return padded
