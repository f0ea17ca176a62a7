"""`mmjax export`: a trained classifier as a `jax.export` artifact that serves without mmjax.

`export(workdir)` reads the newest checkpoint of `workdir` (and the config that trained
it, `<workdir>/config.json`), traces the inference function

  (params {path: array}, inputs {"image", "text_ids", "text_mask"}) -> {head:
      {"probabilities" [B, C], "prediction" [B]}}

with a symbolic batch size and serializes it (StableHLO) into `<workdir>/export/`,
beside the weights (safetensors), the tokenizer and `preprocess.json`; `mmjax.serving`
loads the directory (see its docstring for the files). The weights are an argument of
the function, not constants in it, so the artifact stays small and they can be swapped.

`quantize="int8"`: weight-only int8. Every float kernel (Dense, attention, patch
embedding) is stored as int8 with a float32 scale per output channel (its last axis),
every embedding table with a scale per row; the function dequantizes them (w = q * s)
before the float32 forward pass. Biases, norms and position embeddings stay float32.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmjax import serving
from mmjax.config import ConfigError

log = logging.getLogger(__name__)

QUANTIZE = ("int8",)
MODEL_INPUTS = ("image", "text_ids", "text_mask")
SCALE = ".scale"


def workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was trained with, rebuilt from `<workdir>/config.json`."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise ConfigError(f"--workdir {workdir}: no config.json (training writes it); train "
                      "there first or pass --config")
  with open(path, encoding="utf-8") as f:
    try:
      return ml_collections.ConfigDict(json.load(f))
    except json.JSONDecodeError as e:
      raise ConfigError(f"{path}: not valid JSON ({e})") from None


def quantize_int8(name: str, value: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
  """(int8 values, float32 scales) of a weight matrix, or None for a leaf kept in float.

  Kernels get one scale per output channel (reduced over every axis but the last),
  embedding tables one per row (reduced over the last axis): q = round(w / s) in
  [-127, 127], s = max |w| / 127.
  """
  leaf = name.rsplit("/", 1)[-1]
  if leaf not in ("kernel", "embedding") or value.ndim < 2 or value.dtype.kind != "f":
    return None
  value = value.astype(np.float32)
  axes = tuple(range(value.ndim - 1)) if leaf == "kernel" else (value.ndim - 1,)
  scale = np.abs(value).max(axis=axes, keepdims=True) / 127.0
  scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
  return np.clip(np.round(value / scale), -127, 127).astype(np.int8), scale


def pack_params(params: dict, quantize: str | None) -> tuple[dict[str, np.ndarray], list[str]]:
  """A nested parameter dict -> ({path: array} to store, paths stored as int8)."""
  from flax import traverse_util  # noqa: PLC0415

  flat, quantized = {}, []
  for name, value in traverse_util.flatten_dict(params, sep="/").items():
    value = np.asarray(value)
    packed = quantize_int8(name, value) if quantize == "int8" else None
    if packed is None:
      flat[name] = value
    else:
      flat[name], flat[name + SCALE] = packed
      quantized.append(name)
  return flat, quantized


def unpack_params(flat: dict[str, jax.Array], quantized: Sequence[str]) -> dict:
  """The nested float parameters of `pack_params`' output (traced: dequantizes in-graph)."""
  from flax import traverse_util  # noqa: PLC0415

  quantized = set(quantized)
  tree = {}
  for name, value in flat.items():
    if name.endswith(SCALE) and name[:-len(SCALE)] in quantized:
      continue
    if name in quantized:
      value = value.astype(jnp.float32) * flat[name + SCALE]
    tree[name] = value
  return traverse_util.unflatten_dict(tree, sep="/")


def export(workdir: str, out_dir: str | None = None, *, quantize: str | None = None,
           config: ml_collections.ConfigDict | None = None,
           platforms: Sequence[str] | None = None) -> dict[str, Any]:
  """Writes the export directory (default `<workdir>/export`) of `workdir`'s newest
  checkpoint; returns {"directory", "step", "sizes" {file: bytes}, "total_bytes",
  "quantized" (number of int8 arrays)}.

  Args:
    workdir: a trained run.
    out_dir: where to write (replaced if it exists).
    quantize: None (float32 weights) or "int8" (weight-only, see the module docstring).
    config: the run's config; default `<workdir>/config.json`.
    platforms: lowering platforms, e.g. ("cpu", "cuda"); default the current backend.
  """
  from mmjax.models import lora  # noqa: PLC0415
  from mmjax.tasks.classification import ClassificationTask, class_names  # noqa: PLC0415
  from mmjax.tasks.multiple_choice import MultipleChoiceTask  # noqa: PLC0415
  from mmjax.train import checkpoint as checkpoint_lib  # noqa: PLC0415
  from mmjax.train import loop  # noqa: PLC0415

  if quantize not in (None, *QUANTIZE):
    raise ConfigError(f"--quantize: expected one of none, {', '.join(QUANTIZE)}; got "
                      f"'{quantize}'")
  config = workdir_config(workdir) if config is None else config
  try:
    state_dir = checkpoint_lib.state_directory(workdir)
  except ConfigError:
    raise ConfigError(f"--workdir {workdir}: no checkpoint to export; train first") from None
  exp = loop.build_experiment(config, devices=jax.devices()[:1])
  if not isinstance(exp.task, ClassificationTask) or isinstance(exp.task, MultipleChoiceTask):
    raise ConfigError(f"mmjax export: only classification tasks export, not "
                      f"{type(exp.task).__name__} ({config.task.name})")
  modalities = [m for m in ("image", "text") if m in exp.preprocessor.fields]
  for modality in ("audio", "video"):
    if modality in exp.preprocessor.fields:
      raise ConfigError(f"mmjax export: {modality} inputs are not supported")

  params = checkpoint_lib.read_params(workdir)
  if exp.finetune.mode == "lora":
    params = lora.merge_lora(params, alpha=exp.finetune.lora_alpha)
  flat, quantized = pack_params(params, quantize)

  def infer(flat_params, inputs):
    outputs = exp.model.apply({"params": unpack_params(flat_params, quantized)}, inputs,
                              train=False)
    return exp.task.predict(outputs)

  example = exp.example_batch()
  (batch,) = jax.export.symbolic_shape("b")
  input_specs = {k: jax.ShapeDtypeStruct((batch, *example[k].shape[1:]), example[k].dtype)
                 for k in MODEL_INPUTS if k in example}
  param_specs = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in flat.items()}
  exported = jax.export.export(jax.jit(infer), platforms=platforms)(param_specs, input_specs)
  num_classes = {head: out["probabilities"].shape[-1]
                 for head, out in exported.out_tree.unflatten(exported.out_avals).items()}
  names = class_names(config, exp.dataset, num_classes)

  spec = dict(format=serving.FORMAT, version=serving.FORMAT_VERSION,
              modalities=modalities, inputs=sorted(input_specs), main=exp.task.main,
              class_names={h: list(names.get(h, [str(c) for c in range(n)]))
                           for h, n in num_classes.items()},
              fields={m: exp.preprocessor.fields[m] for m in modalities},
              quantize=quantize, quantized=quantized, platforms=list(exported.platforms),
              source=dict(workdir=os.path.abspath(workdir), checkpoint=state_dir,
                          dataset=config.data.name))
  if "image" in modalities:
    raw = exp.dataset.source(config.data.train_split)[0][exp.preprocessor.fields["image"]]
    spec.update(stored_shape=list(np.asarray(raw).shape),
                image_size=list(exp.preprocessor.image_size or []) or None,
                image_channels=exp.preprocessor.image_channels)
  if "text" in modalities:
    spec["max_text_len"] = exp.preprocessor.text_encoder.max_len

  out_dir = out_dir or os.path.join(workdir, "export")
  tmp = out_dir.rstrip("/") + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  with open(os.path.join(tmp, serving.FILES["function"]), "wb") as f:
    f.write(exported.serialize())
  from safetensors.numpy import save_file  # noqa: PLC0415
  save_file(flat, os.path.join(tmp, serving.FILES["params"]),
            metadata={"format": serving.FORMAT, "quantize": quantize or "none"})
  if "text" in modalities:
    exp.preprocessor.text_encoder.tokenizer.backend_tokenizer.save(
        os.path.join(tmp, serving.FILES["tokenizer"]))
  else:  # a fixed file set; an image-only model reads no text
    with open(os.path.join(tmp, serving.FILES["tokenizer"]), "w", encoding="utf-8") as f:
      f.write("null\n")
  with open(os.path.join(tmp, serving.FILES["preprocess"]), "w", encoding="utf-8") as f:
    json.dump(spec, f, indent=2, sort_keys=True)
  if os.path.exists(out_dir):
    shutil.rmtree(out_dir)
  os.replace(tmp, out_dir)
  sizes = {name: os.path.getsize(os.path.join(out_dir, name))
           for name in sorted(os.listdir(out_dir))}
  step = os.path.basename(os.path.dirname(state_dir))
  return dict(directory=out_dir, step=int(step) if step.isdigit() else None, sizes=sizes,
              total_bytes=sum(sizes.values()), quantized=len(quantized))
