"""Device mesh and shardings from `config.mesh`.

`config.mesh` is a sequence of (axis name, size) pairs; one size may be -1 for "all
remaining devices". The batch is split over every mesh axis; parameters and optimizer
state are replicated (data parallelism).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mmjax.config import ConfigError


def make_mesh(axes: Sequence[tuple[str, int]], devices: Sequence[jax.Device] | None = None
              ) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  names = tuple(name for name, _ in axes)
  sizes = [int(size) for _, size in axes]
  if sizes.count(-1) > 1:
    raise ConfigError(f"config.mesh={tuple(axes)}: at most one axis may have size -1")
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


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over all mesh axes."""
  return NamedSharding(mesh, PartitionSpec(mesh.axis_names))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def global_batch(local_batch: dict[str, np.ndarray], sharding: NamedSharding
                 ) -> dict[str, jax.Array]:
  """Assembles each process's local rows into global arrays sharded over the batch."""
  size = sharding.mesh.size
  for key, value in local_batch.items():
    if value.shape[0] * jax.process_count() % size:
      raise ConfigError(f"batch '{key}' has {value.shape[0] * jax.process_count()} rows, not "
                        f"divisible by the {size} devices of the mesh")
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x),
                      local_batch)


def tree_shardings(tree: Any, sharding: NamedSharding) -> Any:
  return jax.tree.map(lambda _: sharding, tree)
