"""Loads an `mmjax export` directory and predicts, without the training code.

An export directory (written by `mmjax.export.export`) holds:

  model.jaxexport     the inference function, serialized by `jax.export` (StableHLO), with a
                      symbolic batch dimension; weights are an argument, not constants
  params.safetensors  the weights, a flat {path: array} (int8 kernels + float32 `.scale`
                      arrays when quantized; the function dequantizes them)
  tokenizer.json      the run's WordPiece tokenizer (`tokenizers` JSON)
  preprocess.json     image shape and channels, text length, class names of every head,
                      which head is the answer, the quantization

This module imports numpy, jax, tokenizers, safetensors (numpy backend), PIL and json only:
no flax, no mmjax.models / mmjax.train, so a server needs none of them. Nothing here
unpickles: the weights are safetensors (a JSON header and raw bytes), the function is a
flatbuffer, the rest JSON; a file that is not what it should be (a pickle put in place of
the weights, say) is an ExportError, and none of its content runs.

  predictor = serving.load("runs/grading/export")
  predictor.predict(images=[pixels], texts=["What is 3 + 4?"])
  -> [{"prediction": "correct", "probabilities": {"incorrect": 0.02, "correct": 0.98},
       "heads": {"written_digit": {...}, ...}}]
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

FORMAT = "mmjax-export"
FORMAT_VERSION = 1
FILES = dict(function="model.jaxexport", params="params.safetensors",
             tokenizer="tokenizer.json", preprocess="preprocess.json")


class ExportError(ValueError):
  """A missing or malformed export directory or input; the message is one line."""


def _read_json(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ExportError(f"{path}: not readable JSON ({type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''})") from None
  if not isinstance(value, dict):
    raise ExportError(f"{path}: expected a JSON object")
  return value


def read_params(path: str) -> dict[str, np.ndarray]:
  """The {name: array} of a safetensors file, read as a JSON header and raw bytes (never
  unpickled); anything else is an ExportError."""
  from safetensors import SafetensorError  # noqa: PLC0415
  from safetensors.numpy import load  # noqa: PLC0415

  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise ExportError(f"{path}: cannot read ({e.strerror})") from None
  # A safetensors file starts with the length (u64 little-endian) of its JSON header.
  header = int.from_bytes(data[:8], "little") if len(data) >= 8 else 0
  if not 2 <= header <= len(data) - 8 or data[8:9] != b"{":
    raise ExportError(f"{path}: not a safetensors file (it is not read; re-run "
                      "`mmjax export` to write it again)")
  try:
    return dict(load(data))
  except (SafetensorError, ValueError) as e:
    raise ExportError(f"{path}: not a valid safetensors file ({str(e).splitlines()[0]})"
                      ) from None


def preprocess_image(image: Any, spec: dict) -> np.ndarray:
  """An image (a path, a PIL image or an array [H, W(, C)] of uint8) as the model reads it:
  float32 [H, W, C] in [-1, 1], at the dataset's stored size and channels, then
  resized / grey-to-RGB as the run's preprocessor does (`config.input.image_size`,
  `image_channels`)."""
  stored = spec["stored_shape"]  # [H, W, C] of the dataset's image feature
  if isinstance(image, (str, os.PathLike)) or hasattr(image, "convert"):
    image = _load_image(image, stored)
  array = np.asarray(image)
  if array.ndim == 2:
    array = array[..., None]
  if array.ndim != 3:
    raise ExportError(f"an image must be [H, W] or [H, W, C], got shape {array.shape}")
  if array.dtype != np.uint8:
    raise ExportError(f"an image array must be uint8 (0..255), got {array.dtype}")
  if list(array.shape) != list(stored):
    raise ExportError(f"an image array must have the dataset's shape {tuple(stored)}, got "
                      f"{array.shape}; pass a file or a PIL image to have it resized")
  size, channels = spec.get("image_size"), spec.get("image_channels")
  # The same steps as mmjax.data.pipeline.convert_image (nearest neighbour, grey -> RGB).
  if size is not None and tuple(array.shape[:2]) != tuple(size):
    rows = np.arange(size[0]) * array.shape[0] // size[0]
    cols = np.arange(size[1]) * array.shape[1] // size[1]
    array = array[rows][:, cols]
  if channels is not None and array.shape[-1] != channels:
    array = np.repeat(array, channels, axis=-1)
  return array.astype(np.float32) * (2.0 / 255.0) - 1.0


def _load_image(image: Any, stored: Sequence[int]) -> np.ndarray:
  from PIL import Image, UnidentifiedImageError  # noqa: PLC0415

  if not hasattr(image, "convert"):
    path = os.fspath(image)
    if not os.path.isfile(path):
      raise ExportError(f"image file not found: {path}")
    try:
      with Image.open(path) as opened:
        image = opened.copy()
    except (UnidentifiedImageError, OSError) as e:
      raise ExportError(f"{path}: not a readable image ({str(e).splitlines()[0]})") from None
  image = image.convert("L" if stored[-1] == 1 else "RGB")
  height, width = stored[0], stored[1]
  if image.size != (width, height):
    image = image.resize((width, height), Image.Resampling.BILINEAR)
  array = np.asarray(image, np.uint8)
  return array[..., None] if array.ndim == 2 else array


class TextEncoder:
  """The run's tokenizer to `text_ids` int32 [B, T] / `text_mask` bool [B, T]: [CLS] text
  [SEP], cut to T tokens (keeping [SEP]), [PAD] after; as training encodes text."""

  def __init__(self, path: str, max_len: int):
    from tokenizers import Tokenizer  # noqa: PLC0415

    try:
      self.tokenizer = Tokenizer.from_file(path)
    except Exception as e:  # noqa: BLE001  (tokenizers raises its own Exception type)
      raise ExportError(f"{path}: not a tokenizer.json ({str(e).splitlines()[0]})") from None
    pad_id = self.tokenizer.token_to_id("[PAD]")
    if pad_id is None:
      raise ExportError(f"{path}: the vocabulary has no [PAD] token")
    self.max_len = max_len
    self.tokenizer.enable_truncation(max_len)
    self.tokenizer.enable_padding(length=max_len, pad_id=pad_id, pad_token="[PAD]")

  def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
    encoded = self.tokenizer.encode_batch([str(t) for t in texts])
    return {"text_ids": np.asarray([e.ids for e in encoded], np.int32).reshape(-1, self.max_len),
            "text_mask": np.asarray([e.attention_mask for e in encoded], bool
                                    ).reshape(-1, self.max_len)}


class Predictor:
  """An export directory, loaded: `predict(images, texts)` and `batch(images, texts)`."""

  def __init__(self, export_dir: str):
    import jax  # noqa: PLC0415
    from jax import export as jax_export  # noqa: PLC0415

    self.directory = export_dir
    if not os.path.isdir(export_dir):
      raise ExportError(f"no export in {export_dir}: run `mmjax export --workdir <workdir>` "
                        "first")
    for name in FILES.values():
      if not os.path.isfile(os.path.join(export_dir, name)):
        raise ExportError(f"{export_dir}: {name} is missing; run `mmjax export` again")
    self.spec = _read_json(os.path.join(export_dir, FILES["preprocess"]))
    if self.spec.get("format") != FORMAT or self.spec.get("version") != FORMAT_VERSION:
      raise ExportError(f"{os.path.join(export_dir, FILES['preprocess'])}: not an "
                        f"{FORMAT} v{FORMAT_VERSION} description")
    self.params = read_params(os.path.join(export_dir, FILES["params"]))
    path = os.path.join(export_dir, FILES["function"])
    with open(path, "rb") as f:
      serialized = f.read()
    try:
      self.exported = jax_export.deserialize(bytearray(serialized))
    except Exception as e:  # noqa: BLE001  (flatbuffers raise assorted errors on garbage)
      raise ExportError(f"{path}: not a jax.export artifact ({type(e).__name__})") from None
    platform = jax.default_backend()
    if platform not in self.exported.platforms and not (
        platform == "gpu" and {"cuda", "rocm"} & set(self.exported.platforms)):
      raise ExportError(f"{path}: exported for {', '.join(self.exported.platforms)}, not "
                        f"{platform}; export again with --platforms")
    self.inputs = tuple(self.spec["inputs"])
    self.text = (TextEncoder(os.path.join(export_dir, FILES["tokenizer"]),
                             self.spec["max_text_len"]) if "text" in self.spec["modalities"]
                 else None)
    self._call = jax.jit(self.exported.call)

  @property
  def heads(self) -> dict[str, list[str]]:
    """{head: class names}."""
    return self.spec["class_names"]

  @property
  def main(self) -> str:
    return self.spec["main"]

  def batch(self, images: Sequence[Any] | None = None, texts: Sequence[str] | None = None
            ) -> dict[str, np.ndarray]:
    """The model inputs of a batch, preprocessed as in training."""
    batch, size = {}, None
    for modality, values in (("image", images), ("text", texts)):
      if modality not in self.spec["modalities"]:
        continue
      if values is None:
        raise ExportError(f"this model reads {' and '.join(self.spec['modalities'])}; "
                          f"no {modality} given")
      if size is not None and len(values) != size:
        raise ExportError(f"{size} images but {len(values)} texts")
      size = len(values)
      if modality == "image":
        batch["image"] = np.stack([preprocess_image(v, self.spec) for v in values])
      else:
        batch.update(self.text(values))
    if not size:
      raise ExportError("nothing to predict: no inputs")
    return batch

  def run(self, batch: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """{head: {"probabilities" [B, C], "prediction" [B]}} of a preprocessed batch."""
    return {head: {k: np.asarray(v) for k, v in out.items()}
            for head, out in self._call(self.params, {k: batch[k] for k in self.inputs}
                                        ).items()}

  def predict(self, images: Sequence[Any] | None = None, texts: Sequence[str] | None = None
              ) -> list[dict]:
    """One dict per example: the answer head's `prediction` (class name) and
    `probabilities` {class name: p}, and every head's under `heads`."""
    outputs = self.run(self.batch(images, texts))
    results = []
    for i in range(len(next(iter(outputs.values()))["prediction"])):
      heads = {}
      for head, out in outputs.items():
        names = self.heads.get(head) or [str(c) for c in range(out["probabilities"].shape[-1])]
        heads[head] = {"prediction": names[int(out["prediction"][i])],
                       "probabilities": {n: float(p) for n, p in
                                         zip(names, out["probabilities"][i], strict=True)}}
      results.append(dict(heads[self.main], heads=heads))
    return results


def load(export_dir: str) -> Predictor:
  """The Predictor of an export directory (see the module docstring)."""
  return Predictor(export_dir)
