"""Orbax checkpoints of the train state plus the input pipeline's position.

Each checkpoint is a step directory holding `state` (the TrainState, restored with its
shardings) and `data` (the grain iterator state, JSON). Orbax writes a step into a
temporary directory and renames it when complete, so an interrupted save never
replaces a good checkpoint; old steps are removed only after a newer one is final.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


def abstract_like(tree: Any) -> Any:
  """Shape/dtype/sharding descriptions of a tree of arrays (what restore fills in)."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class Checkpointer:
  """Saves and restores (TrainState, data iterator state) under `<workdir>/checkpoints`."""

  def __init__(self, workdir: str, *, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_save),
        item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)

  def restore(self, step: int, like_state: Any) -> tuple[Any, dict]:
    """Restores step `step` into arrays shaped and sharded like `like_state`."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_like(like_state)),
        data=ocp.args.JsonRestore()))
    log.info("restored checkpoint at step %d from %s", step, self.directory)
    return restored["state"], restored["data"]

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
