"""Multi-process (multi-host) start-up: `jax.distributed.initialize` from config or env.

Every process runs the same command; they find each other through a coordinator.
Where the settings come from, first match wins:

1. environment: `MMJAX_COORDINATOR_ADDRESS` (host:port of process 0),
   `MMJAX_NUM_PROCESSES`, `MMJAX_PROCESS_ID` (0 .. N-1), optionally
   `MMJAX_LOCAL_DEVICE_IDS` ("0,1,2,3");
2. `config.distributed`: dict(coordinator_address, num_processes, process_id,
   local_device_ids), any left None;
3. `config.distributed.auto = True` (or `MMJAX_DISTRIBUTED=auto`): JAX detects the
   cluster itself (Cloud TPU pods, SLURM, Open MPI).

With none of them the run is one process. After start-up, each process reads its own
rows of every batch (`pipeline.train_iterator`), process 0 writes logs and results, and
orbax saves and restores the sharded state from every process into one checkpoint.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax

from mmjax.config import ConfigError

log = logging.getLogger(__name__)

FIELDS = ("coordinator_address", "num_processes", "process_id", "local_device_ids")
ENV = {field: f"MMJAX_{field.upper()}" for field in FIELDS}
TIMEOUT_S = 300  # how long a process waits for the others before giving up


def settings(config: Any, environ: dict[str, str] | None = None) -> dict[str, Any] | None:
  """The `jax.distributed.initialize` arguments for this run: {} to auto-detect, None
  for a single process."""
  environ = os.environ if environ is None else environ
  section = config.get("distributed", None) or {}
  unknown = set(section) - set(FIELDS) - {"auto"}
  if unknown:
    raise ConfigError(f"config.distributed has no field '{sorted(unknown)[0]}'; expected "
                      f"{', '.join(FIELDS + ('auto',))}")
  values = {field: section.get(field, None) for field in FIELDS}
  for field, name in ENV.items():
    if environ.get(name):
      values[field] = environ[name]
  if not any(v is not None for v in values.values()):
    auto = section.get("auto", False) or environ.get("MMJAX_DISTRIBUTED") == "auto"
    return {} if auto else None
  missing = [f for f in FIELDS[:3] if values[f] is None]
  if missing:
    given = [f for f in FIELDS if values[f] is not None]
    raise ConfigError(f"config.distributed / {ENV[missing[0]]}: '{missing[0]}' is needed "
                      f"with {', '.join(given)}")
  try:
    num, index = int(values["num_processes"]), int(values["process_id"])
    ids = values["local_device_ids"]
    if isinstance(ids, str):
      ids = [int(i) for i in ids.split(",")]
  except ValueError as e:
    raise ConfigError(f"config.distributed / MMJAX_*: expected integers ({e})") from None
  if not 0 <= index < num:
    raise ConfigError(f"config.distributed: process_id {index} is not in 0..{num - 1}")
  return dict(coordinator_address=str(values["coordinator_address"]), num_processes=num,
              process_id=index, local_device_ids=ids)


def initialize(config: Any) -> None:
  """Joins the run's processes (see the module docstring); call before any JAX
  computation. A no-op for a single process or when already initialized."""
  args = settings(config)
  if args is None or jax.distributed.is_initialized():
    return
  jax.distributed.initialize(**args, initialization_timeout=TIMEOUT_S)
  log.info("process %d of %d: %d local devices, %d in all", jax.process_index(),
           jax.process_count(), jax.local_device_count(), jax.device_count())
