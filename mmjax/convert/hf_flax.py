"""HF Flax parameter trees -> HF PyTorch-style names and layouts.

`transformers` names a Flax parameter by its module path, which equals the PyTorch name up to
the leaf: Dense `kernel` [in, out] is PyTorch `weight` [out, in], Conv `kernel` [kh, kw, in,
out] is `weight` [out, in, kh, kw], LayerNorm `scale` and Embed `embedding` are `weight`.
So HF Flax models (random or from msgpack) feed the same converter as safetensors files.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flax import traverse_util


def hf_flax_to_state_dict(params: Any) -> dict[str, np.ndarray]:
  """HF Flax params (nested dict) -> {PyTorch name: numpy array in PyTorch layout}."""
  state = {}
  for path, value in traverse_util.flatten_dict(params).items():
    value = np.asarray(value)
    *module, leaf = path
    if leaf == "kernel" and value.ndim == 2:
      leaf, value = "weight", value.T
    elif leaf == "kernel" and value.ndim == 4:
      leaf, value = "weight", value.transpose(3, 2, 0, 1)
    elif leaf in ("scale", "embedding"):
      leaf = "weight"
    state[".".join([*module, leaf])] = np.ascontiguousarray(value)
  return state
