"""Load HF safetensors checkpoints (PyTorch names, numpy backend, no torch) into mmjax trees."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from mmjax.config import ConfigError
from mmjax.convert import names
from mmjax.convert.report import ConversionReport

# Text position tables may be longer than the model's max_len: the first max_len rows load.
_TRUNCATABLE = {("bert", "pos_embedding"), ("clip_text", "pos_embedding")}


def safetensors_files(checkpoint: str) -> list[str]:
  """The `.safetensors` files of a checkpoint: a file, or every one in a directory (sharded
  checkpoints: model-00001-of-00002.safetensors, ...)."""
  if os.path.isfile(checkpoint):
    return [checkpoint]
  if not os.path.isdir(checkpoint):
    raise ConfigError(f"init_from: checkpoint '{checkpoint}' is neither a file nor a directory")
  files = sorted(os.path.join(checkpoint, f) for f in os.listdir(checkpoint)
                 if f.endswith(".safetensors"))
  if not files:
    raise ConfigError(f"init_from: no .safetensors file in '{checkpoint}'")
  return files


def read_safetensors(checkpoint: str) -> dict[str, np.ndarray]:
  """Checkpoint name -> numpy array, from a file or directory (see `safetensors_files`)."""
  from safetensors import safe_open

  state = {}
  for path in safetensors_files(checkpoint):
    with safe_open(path, framework="numpy") as f:
      for name in f.keys():
        state[name] = f.get_tensor(name)
  return state


def convert_state_dict(state: Mapping[str, np.ndarray], kind: str, report: ConversionReport
                       ) -> dict[str, tuple[str, np.ndarray]]:
  """Checkpoint arrays -> {mmjax path: (checkpoint name, array in mmjax layout)}; names that
  map to nothing are recorded in `report.ignored`."""
  if kind not in names.KINDS:
    raise ConfigError(f"convert kind: unknown kind '{kind}'; expected one of "
                      f"{', '.join(names.KINDS)}")
  converted = {}
  for name in sorted(state):
    path, how = names.match(kind, name)
    if path is None:
      report.ignore(name, how)
    else:
      converted[path] = (name, names.transform(how, np.asarray(state[name])))
  return converted


def _subtree(params: Mapping[str, Any], prefix: str) -> tuple[tuple[str, ...], Mapping]:
  """The path (as keys) and the subtree at `prefix`; a top-level "params" collection is
  entered on the way when the prefix does not name it."""
  keys = tuple(k for k in prefix.split("/") if k)
  if keys and keys[0] not in params and "params" in params:
    keys = ("params",) + keys
  node = params
  for i, key in enumerate(keys):
    if not isinstance(node, Mapping) or key not in node:
      raise ConfigError(f"load_pretrained prefix: no subtree '{'/'.join(keys[:i + 1])}' in "
                        f"the parameters; top-level keys are {sorted(params)}")
    node = node[key]
  return keys, node


def _replace(params: Mapping[str, Any], keys: tuple[str, ...], subtree: Any) -> Any:
  """A copy of `params` with the subtree at `keys` replaced (the input is not mutated)."""
  if not keys:
    return subtree
  out = dict(params)
  out[keys[0]] = _replace(params[keys[0]], keys[1:], subtree)
  return out


def cast_like(value: np.ndarray, target: Any) -> Any:
  """`value` in the target's dtype, on the target's devices when it is a jax.Array."""
  value = np.asarray(value, dtype=target.dtype)
  if isinstance(target, jax.Array):
    return jax.device_put(value, target.sharding)
  return value


def load_state_dict(params: Mapping[str, Any], state: Mapping[str, np.ndarray], kind: str,
                    prefix: str = "", *, checkpoint: str = "state dict"
                    ) -> tuple[Any, ConversionReport]:
  """Like `load_pretrained`, from arrays already in memory (HF PyTorch names)."""
  report = ConversionReport(checkpoint=checkpoint, kind=kind, prefix=prefix)
  converted = convert_state_dict(state, kind, report)
  keys, subtree = _subtree(params, prefix)
  flat = traverse_util.flatten_dict(subtree, sep="/")
  where = "/".join(keys)
  full = lambda path: f"{where}/{path}" if where else path  # noqa: E731
  for path, target in sorted(flat.items()):
    if path not in converted:
      report.new.append(path)
      continue
    name, value = converted.pop(path)
    if (kind, path) in _TRUNCATABLE and value.shape[1] > target.shape[1]:
      report.notes.append(f"{name} truncated from {value.shape[1]} to the model's "
                          f"{target.shape[1]} positions")
      value = value[:, :target.shape[1]]
    if value.shape != tuple(target.shape):
      raise ConfigError(f"{full(path)}: checkpoint '{name}' has shape {value.shape} (mmjax "
                        f"layout), the model expects {tuple(target.shape)}")
    flat[path] = cast_like(value, target)
    report.loaded.append(path)
    report.num_values += value.size
  for name, _ in converted.values():
    report.ignore(name, "not in the mmjax tree (its option is off)")
  new_subtree = traverse_util.unflatten_dict(flat, sep="/")
  return _replace(params, keys, new_subtree), report


def load_pretrained(params: Mapping[str, Any], checkpoint_dir: str, kind: str,
                    prefix: str = "") -> tuple[Any, ConversionReport]:
  """Fills the mmjax tower at `prefix` from an HF safetensors checkpoint.

  Args:
    params: a parameter tree (or `{"params": tree}` variables); leaves are arrays or
      jax.ShapeDtypeStruct. Not modified.
    checkpoint_dir: a directory with `*.safetensors` (or one such file), PyTorch names.
    kind: one of "bert", "vit", "clip_text", "clip_vision".
    prefix: the tower's subtree, "/"-separated (e.g. "text_encoder"); "" for the whole tree.

  Returns:
    (new params, ConversionReport). Loaded leaves take the target leaf's dtype (and its
    sharding when the target is a jax.Array); other leaves are returned unchanged.

  Raises:
    ConfigError: unknown kind, missing files or prefix, or a shape mismatch (the message
      names the mmjax parameter and the checkpoint name).
  """
  return load_state_dict(params, read_safetensors(checkpoint_dir), kind, prefix,
                         checkpoint=checkpoint_dir)
