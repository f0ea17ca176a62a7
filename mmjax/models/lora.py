"""LoRA (Hu et al. 2021) as a function of the parameter tree, not of the modules.

A targeted Dense kernel W [in, out] (frozen) gets two sibling leaves in its module:
`lora_a` [in, r] and `lora_b` [r, out]. Before `model.apply`, `merge_lora` replaces W by
W + (alpha / r) * lora_a @ lora_b and drops the factors, so the modules never know about
LoRA; the same function merges for export. `lora_b` starts at zero, so adding LoRA leaves
the model's outputs unchanged; `lora_a` starts as N(0, 1/in), so `x @ lora_a` has the
scale of the kernel's input.

Which kernels are targets is decided by the regex rules of `mmjax.train.param_rules`
(label "lora"); the factors' paths are `<module path>/lora_a` and `<module path>/lora_b`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

from mmjax.config import ConfigError

LORA_A, LORA_B = "lora_a", "lora_b"
FIELD = "config.finetune.lora.targets"


def check_targets(params: Any, targets: Sequence[str]) -> None:
  """Each regex of `targets` must match at least one parameter path, and only 2-D
  `kernel` leaves ([in, out] Dense kernels); otherwise a ConfigError naming the field."""
  flat = traverse_util.flatten_dict(params, sep="/")
  for target in targets:
    matched = [path for path in flat if re.fullmatch(target, path)]
    if not matched:
      raise ConfigError(f"{FIELD}: {target!r} matches no parameter (paths look like "
                        f"'{next(iter(sorted(flat)), '')}')")
    for path in matched:
      shape = tuple(flat[path].shape)
      if len(shape) != 2 or not path.endswith("/kernel"):
        raise ConfigError(f"{FIELD}: {target!r} matches '{path}' of shape {shape}; LoRA "
                          "needs 2-D Dense kernels [in, out] named 'kernel'")


def add_lora(params: Any, targets: Any, rank: int, rng: jax.Array) -> dict:
  """Adds LoRA factors beside every kernel where `targets` is True.

  Args:
    params: nested dict of parameters (arrays, or ShapeDtypeStructs under eval_shape).
    targets: the same structure of python bools (2-D kernels only).
    rank: r.
    rng: key; kernel number i (in sorted path order) draws from fold_in(rng, i).

  Returns:
    params plus `lora_a` [in, r] ~ N(0, 1/in) and `lora_b` [r, out] zeros, in the
    kernel's dtype, next to each targeted kernel.
  """
  flat = traverse_util.flatten_dict(params)
  flat_targets = traverse_util.flatten_dict(targets)
  chosen = sorted(path for path, is_target in flat_targets.items() if is_target)
  for i, path in enumerate(chosen):
    kernel = flat[path]
    module = path[:-1]
    if kernel.ndim != 2:
      raise ConfigError(f"{FIELD}: '{'/'.join(path)}' of shape {tuple(kernel.shape)} is "
                        "not a 2-D kernel")
    if module + (LORA_A,) in flat:
      raise ConfigError(f"{FIELD}: '{'/'.join(module)}' already has LoRA factors")
    fan_in = kernel.shape[0]
    normal = jax.random.normal(jax.random.fold_in(rng, i), (fan_in, rank), jnp.float32)
    flat[module + (LORA_A,)] = (normal / jnp.sqrt(fan_in)).astype(kernel.dtype)
    flat[module + (LORA_B,)] = jnp.zeros((rank, kernel.shape[1]), kernel.dtype)
  return traverse_util.unflatten_dict(flat)


def merge_lora(params: Any, alpha: float) -> dict:
  """Folds LoRA factors into their kernels: W + (alpha / r) * lora_a @ lora_b.

  Args:
    params: nested dict, possibly with `lora_a` [in, r] / `lora_b` [r, out] beside
      `kernel` [in, out] leaves.
    alpha: the LoRA scale numerator (`config.finetune.lora.alpha`).

  Returns:
    The parameter tree the model expects: same kernels' shapes and dtypes, no factors.
    Without factors, `params` is returned as it is.
  """
  flat = traverse_util.flatten_dict(params)
  modules = [path[:-1] for path in flat if path[-1] == LORA_A]
  if not modules:
    return params
  for module in modules:
    lora_a, lora_b = flat.pop(module + (LORA_A,)), flat.pop(module + (LORA_B,))
    kernel = flat[module + ("kernel",)]
    delta = jnp.matmul(lora_a.astype(jnp.float32), lora_b.astype(jnp.float32),
                       precision=jax.lax.Precision.HIGHEST)
    scale = alpha / lora_a.shape[1]
    flat[module + ("kernel",)] = (kernel.astype(jnp.float32) + scale * delta
                                  ).astype(kernel.dtype)
  return traverse_util.unflatten_dict(flat)


def count_lora(params: Any) -> int:
  """The number of kernels carrying LoRA factors."""
  return sum(1 for path in traverse_util.flatten_dict(params) if path[-1] == LORA_A)
