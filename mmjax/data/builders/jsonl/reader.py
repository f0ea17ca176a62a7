"""Reading and checking a `jsonl` dataset directory (format: see `jsonl.py`).

Pure functions, no tfds: `read_spec` parses DIR/dataset.json, `read_rows` parses and checks
every line of DIR/data.jsonl (fields, types, labels, that referenced files exist),
`fingerprint` names a build of the directory, and `load_image` / `load_audio` decode one
row's files. Every problem is a one-line ConfigError naming the file, the line and the
field, so a user fixes their data without reading a traceback.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import wave

import numpy as np

from mmjax.config import ConfigError

DATA_FILE = "data.jsonl"
SPEC_FILE = "dataset.json"
SPLITS = ("train", "validation", "test")
CLASSIFICATION = "classification"
MULTIPLE_CHOICE = "multiple_choice"
INPUTS = ("text", "image", "audio")  # classification inputs, in feature order
ROW_FIELDS = {
    CLASSIFICATION: ("split", "text", "image", "audio", "label"),
    MULTIPLE_CHOICE: ("split", "question", "context", "image", "choices", "answer"),
}

DEFAULT_IMAGE_SIZE = (32, 32)
DEFAULT_SAMPLE_RATE = 16000
DEFAULT_SECONDS = 1.0
DEFAULT_VOCAB_SIZE = 4096
SPEC_FIELDS = ("labels", "image_size", "audio_sample_rate", "audio_seconds", "vocab_size",
               "description")


@dataclasses.dataclass(frozen=True)
class Spec:
  """DIR/dataset.json: class names (classification), the fixed image size (H, W), audio
  sample rate and length, the WordPiece vocabulary size and a free-text description."""

  labels: tuple[str, ...] | None = None
  image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE
  audio_sample_rate: int = DEFAULT_SAMPLE_RATE
  audio_seconds: float = DEFAULT_SECONDS
  vocab_size: int = DEFAULT_VOCAB_SIZE
  description: str = ""

  @property
  def audio_samples(self) -> int:
    """Samples per stored waveform: round(audio_sample_rate * audio_seconds)."""
    return max(1, round(self.audio_sample_rate * self.audio_seconds))


@dataclasses.dataclass(frozen=True)
class Row:
  """One line of data.jsonl, checked. `line` is 1-based; `label` is the class id
  (classification) and `answer` the index into `choices` (multiple choice)."""

  line: int
  split: str
  text: str | None = None
  question: str | None = None
  context: str = ""
  image: str | None = None  # path relative to the directory
  audio: str | None = None
  label: int | None = None
  choices: tuple[str, ...] | None = None
  answer: int | None = None


@dataclasses.dataclass(frozen=True)
class Table:
  """Every row of data.jsonl; `kind` is CLASSIFICATION or MULTIPLE_CHOICE and `inputs`
  the classification inputs every row has (sorted as INPUTS; multiple choice: the
  modalities any row has)."""

  kind: str
  rows: tuple[Row, ...]
  inputs: tuple[str, ...]

  def split_names(self) -> tuple[str, ...]:
    present = {row.split for row in self.rows}
    return tuple(split for split in SPLITS if split in present)


def _one_line(text: str) -> str:
  return " ".join(str(text).split())


def _positive_int(value, where: str, name: str) -> int:
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise ConfigError(f"{where}, field '{name}': expected a positive integer, got "
                      f"{json.dumps(value)}")
  return value


def read_spec(directory: str) -> tuple[Spec, bytes | None]:
  """(Spec, the file's bytes) from DIR/dataset.json; the defaults (and None) without one."""
  path = os.path.join(directory, SPEC_FILE)
  if not os.path.exists(path):
    return Spec(), None
  with open(path, "rb") as f:
    raw = f.read()
  try:
    spec = json.loads(raw.decode("utf-8-sig"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ConfigError(f"{path}: not valid JSON ({_one_line(e)})") from None
  if not isinstance(spec, dict):
    raise ConfigError(f"{path}: expected a JSON object like {{\"labels\": [...]}}, got "
                      f"{type(spec).__name__}")
  unknown = sorted(set(spec) - set(SPEC_FIELDS))
  if unknown:
    raise ConfigError(f"{path}, field '{unknown[0]}': unknown; expected some of "
                      f"{', '.join(SPEC_FIELDS)}")
  values = {}
  if "labels" in spec:
    labels = spec["labels"]
    if (not isinstance(labels, list) or not labels or
        not all(isinstance(name, str) and name for name in labels) or
        len(set(labels)) != len(labels)):
      raise ConfigError(f"{path}, field 'labels': expected a non-empty list of distinct, "
                        f"non-empty class names, got {_one_line(json.dumps(labels))[:200]}")
    values["labels"] = tuple(labels)
  if "image_size" in spec:
    size = spec["image_size"]
    if not isinstance(size, list) or len(size) != 2:
      raise ConfigError(f"{path}, field 'image_size': expected [height, width], got "
                        f"{json.dumps(size)}")
    values["image_size"] = tuple(_positive_int(v, path, "image_size") for v in size)
  if "audio_sample_rate" in spec:
    values["audio_sample_rate"] = _positive_int(spec["audio_sample_rate"], path,
                                                "audio_sample_rate")
  if "audio_seconds" in spec:
    seconds = spec["audio_seconds"]
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds <= 0:
      raise ConfigError(f"{path}, field 'audio_seconds': expected a positive number, got "
                        f"{json.dumps(seconds)}")
    values["audio_seconds"] = float(seconds)
  if "vocab_size" in spec:
    values["vocab_size"] = _positive_int(spec["vocab_size"], path, "vocab_size")
  if "description" in spec:
    if not isinstance(spec["description"], str):
      raise ConfigError(f"{path}, field 'description': expected a string")
    values["description"] = spec["description"]
  return Spec(**values), raw


def _string(record: dict, field: str, where: str, required: bool) -> str | None:
  if field not in record:
    if required:
      raise ConfigError(f"{where}, field '{field}': missing")
    return None
  value = record[field]
  if not isinstance(value, str):
    raise ConfigError(f"{where}, field '{field}': expected a string, got "
                      f"{_one_line(json.dumps(value))[:80]}")
  return value


def _words(record: dict, field: str, where: str, required: bool) -> str | None:
  """A string field that must hold some text (not empty or only whitespace)."""
  value = _string(record, field, where, required)
  if value is not None and not value.strip():
    raise ConfigError(f"{where}, field '{field}': empty; expected some text, got "
                      f"{json.dumps(value)}")
  return value


def _file(directory: str, record: dict, field: str, where: str) -> str | None:
  path = _string(record, field, where, required=False)
  if path is None:
    return None
  if not path or os.path.isabs(path):
    raise ConfigError(f"{where}, field '{field}': expected a path relative to {directory}, "
                      f"got '{path}'")
  if not os.path.isfile(os.path.join(directory, path)):
    raise ConfigError(f"{where}, field '{field}': no such file '{path}'")
  return path


def _row(directory: str, record: dict, line: int, where: str, kind: str,
         spec: Spec, spec_path: str) -> Row:
  """Checks one parsed line of the dataset of `kind`."""
  unknown = [field for field in record if field not in ROW_FIELDS[kind]]
  if unknown:
    raise ConfigError(f"{where}, field '{unknown[0]}': unknown in a {kind} row; expected "
                      f"some of {', '.join(ROW_FIELDS[kind])}")
  split = _string(record, "split", where, required=True)
  if split not in SPLITS:
    raise ConfigError(f"{where}, field 'split': expected one of {', '.join(SPLITS)}, got "
                      f"'{split}'")
  image = _file(directory, record, "image", where)
  if kind == CLASSIFICATION:
    if "label" not in record:
      raise ConfigError(f"{where}, field 'label': missing")
    name = _string(record, "label", where, required=True)
    if spec.labels is None:
      raise ConfigError(f"{spec_path}, field 'labels': missing; a classification dataset "
                        "declares its class names there (their order gives the class ids)")
    if name not in spec.labels:
      raise ConfigError(f"{where}, field 'label': unknown label '{name}'; {SPEC_FILE} "
                        f"declares {', '.join(spec.labels)}")
    return Row(line, split, text=_words(record, "text", where, required=False), image=image,
               audio=_file(directory, record, "audio", where), label=spec.labels.index(name))
  question = _words(record, "question", where, required=True)
  context = _string(record, "context", where, required=False) or ""
  if "choices" not in record:
    raise ConfigError(f"{where}, field 'choices': missing")
  choices = record["choices"]
  if (not isinstance(choices, list) or len(choices) < 2 or
      not all(isinstance(c, str) for c in choices)):
    raise ConfigError(f"{where}, field 'choices': expected a list of at least 2 strings, got "
                      f"{_one_line(json.dumps(choices))[:80]}")
  empty = [i for i, choice in enumerate(choices) if not choice.strip()]
  if empty:
    raise ConfigError(f"{where}, field 'choices': choice {empty[0]} is empty; expected some "
                      "text in every choice")
  if any("\n" in choice for choice in choices):
    raise ConfigError(f"{where}, field 'choices': a choice contains a line break (choices "
                      "are stored joined by line breaks)")
  if "answer" not in record:
    raise ConfigError(f"{where}, field 'answer': missing")
  answer = record["answer"]
  if isinstance(answer, str):
    matches = [i for i, choice in enumerate(choices) if choice == answer]
    if len(matches) != 1:
      raise ConfigError(f"{where}, field 'answer': '{answer}' is "
                        f"{'not one of' if not matches else 'several of'} the choices")
    answer = matches[0]
  elif not isinstance(answer, int) or isinstance(answer, bool) or \
      not 0 <= answer < len(choices):
    raise ConfigError(f"{where}, field 'answer': expected an index 0..{len(choices) - 1} or "
                      f"the text of a choice, got {_one_line(json.dumps(answer))[:80]}")
  return Row(line, split, question=question, context=context, image=image,
             choices=tuple(choices), answer=answer)


def read_rows(directory: str, spec: Spec) -> tuple[Table, bytes]:
  """(Table, the file's bytes) from DIR/data.jsonl, every line checked (blank lines are
  skipped). The first row's target fixes the kind: `label` -> classification, `choices`
  -> multiple choice. Classification rows all have the inputs the first row has."""
  path = os.path.join(directory, DATA_FILE)
  if not os.path.isfile(path):
    raise ConfigError(f"config.data.path: {directory} has no {DATA_FILE} (one JSON object per "
                      "line; the format is described in mmjax/data/builders/jsonl/jsonl.py)")
  spec_path = os.path.join(directory, SPEC_FILE)
  with open(path, "rb") as f:
    raw = f.read()
  kind, inputs, rows = None, None, []
  body = raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw  # a UTF-8 byte-order mark
  for line, text in enumerate(body.split(b"\n"), start=1):
    where = f"{path} line {line}"
    if not text.strip():
      continue
    try:
      record = json.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
      raise ConfigError(f"{where}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
      raise ConfigError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict):
      raise ConfigError(f"{where}: expected a JSON object {{\"split\": ..., ...}}, got "
                        f"{type(record).__name__}")
    if kind is None:
      if "choices" in record or "answer" in record:
        kind = MULTIPLE_CHOICE
      elif "label" in record:
        kind = CLASSIFICATION
      else:
        raise ConfigError(f"{where}, field 'label': missing; every row has a target: 'label' "
                          "(classification) or 'choices' and 'answer' (multiple choice)")
    elif kind == CLASSIFICATION and ("choices" in record or "answer" in record):
      field = "choices" if "choices" in record else "answer"
      raise ConfigError(f"{where}, field '{field}': this is a classification dataset (the "
                        "first row has a 'label'); all rows have the same kind of target")
    elif kind == MULTIPLE_CHOICE and "label" in record:
      raise ConfigError(f"{where}, field 'label': this is a multiple-choice dataset (the "
                        "first row has 'choices'); all rows have the same kind of target")
    row = _row(directory, record, line, where, kind, spec, spec_path)
    if kind == CLASSIFICATION:
      has = tuple(m for m in INPUTS if getattr(row, m) is not None)
      if inputs is None:
        if not has:
          raise ConfigError(f"{where}, field 'text': missing; a row needs at least one input: "
                            f"{', '.join(INPUTS)}")
        inputs, first = has, line
      elif has != inputs:
        field = next(m for m in INPUTS if (m in has) != (m in inputs))
        state = "missing" if field in inputs else "unexpected"
        raise ConfigError(f"{where}, field '{field}': {state}; every row has the inputs line "
                          f"{first} has ({', '.join(inputs)})")
    rows.append(row)
  if not rows:
    raise ConfigError(f"{path}: no rows; expected one JSON object per line")
  if not any(row.split == "train" for row in rows):
    raise ConfigError(f"{path}, field 'split': no row is in 'train'; the training split "
                      "also gives the text vocabulary")
  if kind == MULTIPLE_CHOICE:
    inputs = ("text",) + (("image",) if any(row.image for row in rows) else ())
  return Table(kind, tuple(rows), inputs), raw


def fingerprint(directory: str, table: Table, data: bytes, spec: bytes | None) -> str:
  """16 hex digits naming one build: the directory's absolute path, data.jsonl and
  dataset.json as bytes, and the size and modification time of every file the rows name,
  so editing any of them gives a new build and two directories never share one."""
  digest = hashlib.sha256()
  directory = os.path.realpath(directory)
  digest.update(directory.encode() + b"\0")
  digest.update(hashlib.sha256(data).digest())
  digest.update(b"\0" if spec is None else hashlib.sha256(spec).digest())
  files = sorted({f for row in table.rows for f in (row.image, row.audio) if f})
  for name in files:
    stat = os.stat(os.path.join(directory, name))
    digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
  return digest.hexdigest()[:16]


# Pillow modes of more than 8 bits per pixel that convert("RGB") would clip, not scale.
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_NO_RANGE = {"I": "32-bit integer", "F": "32-bit float"}


def load_image(directory: str, row: Row, size: tuple[int, int],
               notes: list[str] | None = None) -> np.ndarray:
  """The row's image as uint8 [H, W, 3] (RGB; grey, palette, CMYK, ... converted, alpha
  dropped, 16-bit grey scaled to 8 bits), resized to `size` = (H, W) with bilinear
  filtering when it differs; then "line N 'file' WxH" is appended to `notes`.

  A 32-bit integer or float image (Pillow mode I or F) has no fixed range to map to 8
  bits: a ConfigError naming the file, line and mode."""
  from PIL import Image

  where = f"{os.path.join(directory, DATA_FILE)} line {row.line}, field 'image'"
  try:
    with Image.open(os.path.join(directory, row.image)) as image:
      image.load()
      if image.mode in _NO_RANGE:
        raise ConfigError(f"{where}: '{row.image}' has {_NO_RANGE[image.mode]} pixels "
                          f"(mode {image.mode}), which do not convert to 8-bit RGB; expected "
                          "an 8-bit or 16-bit grey, palette or colour image")
      if image.mode in _SIXTEEN_BIT:
        high = (np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8)
        image = Image.fromarray(high, mode="L")
      original = image.size
      image = image.convert("RGB")
      if image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        if notes is not None:
          notes.append(f"line {row.line} '{row.image}' {original[0]}x{original[1]}")
      return np.asarray(image, dtype=np.uint8)
  except (OSError, ValueError, SyntaxError) as e:
    if isinstance(e, ConfigError):
      raise
    raise ConfigError(f"{where}: cannot read '{row.image}' as an image ({_one_line(e)})"
                      ) from None


_PCM_SCALE = {1: 128.0, 2: 32768.0, 3: 8388608.0, 4: 2147483648.0}


def decode_wav(path: str) -> tuple[np.ndarray, int]:
  """(mono float32 waveform [N] in [-1, 1), sample rate) of an integer PCM .wav file
  (8, 16, 24 or 32 bit; channels averaged). Raises wave.Error / EOFError / OSError."""
  with wave.open(path, "rb") as f:
    channels, width, rate = f.getnchannels(), f.getsampwidth(), f.getframerate()
    frames = f.readframes(f.getnframes())
  if width not in _PCM_SCALE:
    raise wave.Error(f"{8 * width}-bit samples; expected 8, 16, 24 or 32-bit PCM")
  data = np.frombuffer(frames, np.uint8)
  data = data[:len(data) // (width * channels) * width * channels]
  if width == 1:  # 8-bit WAV is unsigned, centred on 128
    samples = data.astype(np.float32) - 128.0
  elif width == 3:  # little-endian 24-bit: widen to 32 bits, sign from the top byte
    triples = data.reshape(-1, 3).astype(np.int32)
    samples = (triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)).astype(np.int32)
    samples = np.where(samples >= 1 << 23, samples - (1 << 24), samples).astype(np.float32)
  else:
    samples = data.view("<i2" if width == 2 else "<i4").astype(np.float32)
  samples = samples.reshape(-1, channels).mean(axis=1) / _PCM_SCALE[width]
  return samples.astype(np.float32), rate


def resample(waveform: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
  """`waveform` [N] at `rate` Hz -> [round(N * new_rate / rate)] at `new_rate` Hz by
  band-limited (FFT) interpolation, as `scipy.signal.resample` does: frequencies above
  the lower Nyquist limit are dropped, so downsampling does not alias."""
  if rate == new_rate or len(waveform) == 0:
    return waveform.astype(np.float32)
  length = max(1, round(len(waveform) * new_rate / rate))
  spectrum = np.fft.rfft(waveform.astype(np.float64))
  shared = min(length, len(waveform))  # the frequencies both lengths represent
  kept = np.zeros(length // 2 + 1, np.complex128)
  kept[:shared // 2 + 1] = spectrum[:shared // 2 + 1]
  # The Nyquist bin of the shorter length stands for both +/- that frequency.
  if shared % 2 == 0 and length != len(waveform):
    kept[shared // 2] *= 2.0 if length < len(waveform) else 0.5
  return (np.fft.irfft(kept, length) * (length / len(waveform))).astype(np.float32)


def load_audio(directory: str, row: Row, rate: int, samples: int,
               notes: list[str] | None = None) -> np.ndarray:
  """The row's .wav as mono float32 [samples] at `rate` Hz: resampled (then "line N
  'file' R Hz" is appended to `notes`), then cut or padded with zeros at its end."""
  try:
    waveform, file_rate = decode_wav(os.path.join(directory, row.audio))
  except (wave.Error, EOFError, OSError, ValueError) as e:
    raise ConfigError(f"{os.path.join(directory, DATA_FILE)} line {row.line}, field 'audio': "
                      f"cannot read '{row.audio}' as PCM .wav audio ({_one_line(e)})") from None
  if file_rate != rate and notes is not None:
    notes.append(f"line {row.line} '{row.audio}' {file_rate} Hz")
  waveform = resample(waveform, file_rate, rate)[:samples]
  return np.pad(waveform, (0, samples - len(waveform)))
