"""Device mesh and shardings from `config.mesh` and `config.sharding_rules`.

`config.mesh` is a sequence of (axis, size) pairs over the axes

  data    the batch is split over it; parameters are replicated along it;
  fsdp    the batch is split over it too, and each parameter is split along one of its
          dimensions (ZeRO-3 / FSDP): gathered for use, gradients reduce-scattered;
  tensor  Megatron-style model parallelism: attention heads and the MLP's hidden units
          are split over it; every device of a `tensor` group sees the whole batch.

One size may be -1, "all remaining devices": `(("data", -1),)` is data parallelism,
`(("data", 2), ("fsdp", -1))` FSDP within groups of data replicas.

Which dimension of which parameter goes on which axis is decided by regex rules over
parameter paths (`param_rules.match_rules`, the mechanism that decides freezing and
LoRA): the user's `config.sharding_rules` first, then `DEFAULT_RULES` (the Megatron
split of every attention and MLP). A rule's value has one entry per dimension of the
parameter: an axis name, a tuple of axis names, or None. A parameter no rule matches is
split over `fsdp` along its largest dimension that the axis size divides. An axis the
mesh does not have (or has with size 1) is dropped, so one rule set serves every mesh,
and a dimension an axis size does not divide stays whole on that axis. Optimizer state
is sharded like the parameter it belongs to.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mmjax.config import ConfigError
from mmjax.models.layers import BATCH_AXES  # the axes the batch dimension is split over
from mmjax.train import param_rules

log = logging.getLogger(__name__)

DATA, FSDP, TENSOR = "data", "fsdp", "tensor"
MESH_AXES = (DATA, FSDP, TENSOR)

# Megatron (Shoeybi et al. 2019): the query/key/value and fc1 kernels [in, out] split by
# columns (heads, hidden units), the out and fc2 kernels by rows, so each block needs one
# all-reduce after attention and one after the MLP. The other dimension goes on fsdp.
# LoRA factors (`lora.add_lora`: a [in, r], b [r, out] beside a kernel) follow the
# kernel's split, so the merged kernel a @ b comes out sharded like the kernel.
DEFAULT_RULES = (
    (r".*/(query|key|value|mlp/fc1)/kernel", (FSDP, TENSOR)),
    (r".*/(query|key|value|mlp/fc1)/bias", (TENSOR,)),
    (r".*/(out|mlp/fc2)/kernel", (TENSOR, FSDP)),
    (r".*/(query|key|value|mlp/fc1)/lora_a", (FSDP, None)),
    (r".*/(query|key|value|mlp/fc1)/lora_b", (None, TENSOR)),
    (r".*/(out|mlp/fc2)/lora_a", (TENSOR, None)),
    (r".*/(out|mlp/fc2)/lora_b", (None, FSDP)),
)


def make_mesh(axes: Sequence[tuple[str, int]], devices: Sequence[jax.Device] | None = None
              ) -> Mesh:
  """The mesh of `config.mesh` over `devices` (default: all of them, every process's)."""
  devices = list(jax.devices() if devices is None else devices)
  if isinstance(axes, str) or not all(
      not isinstance(a, str) and len(a) == 2 and isinstance(a[0], str) for a in axes):
    raise ConfigError(f"config.mesh: expected (axis, size) pairs, got {axes!r}")
  names = tuple(name for name, _ in axes)
  unknown = [name for name in names if name not in MESH_AXES]
  if unknown or len(set(names)) != len(names) or not names:
    raise ConfigError(f"config.mesh={tuple(axes)}: expected distinct axes among "
                      f"{', '.join(MESH_AXES)}")
  sizes = [int(size) for _, size in axes]
  if sizes.count(-1) > 1 or any(s < 1 and s != -1 for s in sizes):
    raise ConfigError(f"config.mesh={tuple(axes)}: sizes must be positive, and at most one "
                      "may be -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ConfigError(f"config.mesh={tuple(axes)}: {len(devices)} devices do not divide "
                        f"into axes of size {known}")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ConfigError(f"config.mesh={tuple(axes)} needs {math.prod(sizes)} devices, "
                      f"{len(devices)} are available")
  return jax.make_mesh(tuple(sizes), names, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(names))


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
  return tuple(name for name in mesh.axis_names if name in BATCH_AXES)


def batch_parts(mesh: Mesh) -> int:
  """Into how many pieces the batch is split (the product of the batch axes' sizes)."""
  return math.prod(mesh.shape[name] for name in batch_axes(mesh))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data and fsdp axes, whole on tensor."""
  return NamedSharding(mesh, PartitionSpec(batch_axes(mesh) or None))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def process_rows(sharding: NamedSharding, global_batch_size: int) -> tuple[int, int]:
  """The rows [start, stop) of a global batch that this process's devices hold (what it
  reads and passes to `global_batch`)."""
  indices = sharding.addressable_devices_indices_map((global_batch_size,)).values()
  bounds = [index[0].indices(global_batch_size)[:2] for index in indices]
  start, stop = min(b[0] for b in bounds), max(b[1] for b in bounds)
  if sum(len(range(*b)) for b in set(bounds)) != stop - start:
    raise ConfigError(f"config.mesh: this process's devices hold scattered rows of the batch "
                      f"({sorted(set(bounds))}); order the mesh so they are contiguous")
  return start, stop


def global_batch(local_batch: dict[str, np.ndarray], sharding: NamedSharding
                 ) -> dict[str, jax.Array]:
  """Assembles this process's rows of a global batch (`process_rows`) into global arrays
  sharded over the batch axes."""
  parts = batch_parts(sharding.mesh)
  start, stop = process_rows(sharding, parts)  # this process's share of `parts` rows
  for key, value in local_batch.items():
    if value.shape[0] % (stop - start):
      raise ConfigError(f"batch '{key}' has {value.shape[0]} rows on process "
                        f"{jax.process_index()}, not divisible into the {stop - start} "
                        f"shard(s) of the batch it holds")
  rows = next(iter(local_batch.values())).shape[0]
  size = rows // (stop - start) * parts
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x, (size, *x.shape[1:])),
      local_batch)


def _spec_entries(value: Any, ndim: int, path: str) -> list[tuple[str, ...]]:
  """A rule's value -> one tuple of axis names per dimension."""
  if value is None:
    return [()] * ndim
  pattern, value = value
  rule = f"config.sharding_rules (or the default rules): the rule {pattern!r} for '{path}'"
  if isinstance(value, str) or len(value) != ndim:
    raise ConfigError(f"{rule} gives {value!r}, expected one entry (axis, axes or None) "
                      f"per dimension of its {ndim}-d shape")
  entries = []
  for entry in value:
    axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    unknown = [a for a in axes if a not in MESH_AXES]
    if unknown:
      raise ConfigError(f"{rule} names axis {unknown[0]!r}, expected one of "
                        f"{', '.join(MESH_AXES)}")
    entries.append(axes)
  used = [a for axes in entries for a in axes]
  if len(used) != len(set(used)):
    raise ConfigError(f"{rule} gives {value!r}, which uses an axis twice")
  return entries


NO_RULE = "no rule"  # what `param_spec` gets for a parameter no rule matches
SCANNED = "scanned_blocks"  # layers.Encoder's module of stacked layers


def param_spec(path: str, shape: tuple[int, ...], value: Any, mesh: Mesh) -> PartitionSpec:
  """The PartitionSpec of one parameter: its rule's `value`, (regex, spec) (None:
  replicated; NO_RULE: fsdp over the largest dimension the axis divides), fitted to the
  mesh and the shape.

  A parameter of a scanned stack (`.../scanned_blocks/...`, `BlockOptions.scan`) has a
  leading layer axis: the rule describes one layer, and the layer axis stays whole."""
  if SCANNED in path.split("/")[:-1] and len(shape) > 0:
    return PartitionSpec(None, *_layer_spec(path, shape[1:], value, mesh))
  return _layer_spec(path, shape, value, mesh)


def _layer_spec(path: str, shape: tuple[int, ...], value: Any, mesh: Mesh) -> PartitionSpec:
  sizes = dict(mesh.shape)
  if isinstance(value, str) and value == NO_RULE:
    value = None
    fits = [d for d in range(len(shape)) if shape[d] % sizes.get(FSDP, 1) == 0]
    if sizes.get(FSDP, 1) > 1 and fits:
      largest = max(fits, key=lambda d: shape[d])
      value = ("(no rule)", tuple(FSDP if d == largest else None for d in range(len(shape))))
  spec = []
  for dim, axes in zip(shape, _spec_entries(value, len(shape), path), strict=True):
    kept = tuple(a for a in axes if sizes.get(a, 1) > 1)
    if kept and dim % math.prod(sizes[a] for a in kept):
      log.debug("%s: dimension %d is not divisible by %s; not split", path, dim, kept)
      kept = ()
    spec.append(kept[0] if len(kept) == 1 else (kept or None))
  return PartitionSpec(*spec)


def param_shardings(params: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]] = ()) -> Any:
  """A tree like `params` (arrays or ShapeDtypeStructs) of NamedShardings: `rules`
  (`config.sharding_rules`) first, then DEFAULT_RULES, else fsdp on the largest dim."""
  rules = tuple(rules) + DEFAULT_RULES
  param_rules.compile_rules(rules, "config.sharding_rules")  # a bad regex: a ConfigError
  values = param_rules.match_rules(
      params, [(pattern, None if value is None else (pattern, value))
               for pattern, value in rules], default=NO_RULE, field="config.sharding_rules")
  paths = param_rules.param_paths(params)
  return jax.tree.map(
      lambda leaf, path, value: NamedSharding(mesh, param_spec(path, leaf.shape, value, mesh)),
      params, paths, values)


def like_params_shardings(tree: Any, params: Any, shardings: Any, mesh: Mesh) -> Any:
  """Shardings for a tree that mirrors (parts of) `params`, like optimizer state: a leaf
  whose path ends with a parameter's path and has its shape is sharded like it; every
  other leaf (step counts, scalars) is replicated."""
  by_path = {path: (tuple(leaf.shape), sharding) for path, leaf, sharding in zip(
      jax.tree.leaves(param_rules.param_paths(params)), jax.tree.leaves(params),
      jax.tree.leaves(shardings), strict=True)}

  def sharding_for(path: tuple, leaf: Any) -> NamedSharding:
    parts = param_rules.path_to_str(path).split("/")
    for i in range(len(parts)):
      found = by_path.get("/".join(parts[i:]))
      if found and found[0] == tuple(leaf.shape):
        return found[1]
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(sharding_for, tree)


def describe(shardings: Any) -> str:
  """How many parameters (arrays) each mesh axis splits (for the log)."""
  counts: dict[str, int] = {}
  for sharding in jax.tree.leaves(shardings):
    for entry in sharding.spec:
      for axis in (entry,) if isinstance(entry, str) else (entry or ()):
        counts[axis] = counts.get(axis, 0) + 1
  return ", ".join(f"{n} parameter(s) split over {axis}" for axis, n in sorted(counts.items())
                   ) or "parameters replicated"
