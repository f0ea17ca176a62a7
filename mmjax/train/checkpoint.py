"""Orbax checkpoints of the train state plus the input pipeline's position.

Each checkpoint is a step directory holding `state` (the TrainState, restored with its
shardings), `data` (the grain iterator state, JSON) and `meta` (the loop's own state,
JSON: early stopping). Orbax writes a step into a temporary directory and renames it
when complete, so an interrupted save never replaces a good checkpoint; old steps are
removed only after a newer one is final. `Checkpointer.restore_latest` skips, with a
one-line warning, temporary directories left by a killed save and step directories
that do not restore (moved aside to `<step>.unreadable`, never deleted), and falls back
to the newest good step. Nothing is ever unpickled: arrays are tensorstore/zarr files,
the rest JSON.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from mmjax.config import ConfigError
from mmjax.convert.load import cast_like
from mmjax.convert.report import ConversionReport

log = logging.getLogger(__name__)

TMP_MARKER = ".orbax-checkpoint-tmp"  # in the name of a step directory still being written


def abstract_like(tree: Any) -> Any:
  """Shape/dtype/sharding descriptions of a tree of arrays (what restore fills in)."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class Checkpointer:
  """Saves and restores (TrainState, data iterator state, loop state) under
  `<workdir>/<subdir>`: `checkpoints` (the latest `keep`) or `best` (early stopping)."""

  def __init__(self, workdir: str, *, keep: int, async_save: bool = True,
               subdir: str = "checkpoints"):
    self.directory = os.path.abspath(os.path.join(workdir, subdir))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_save),
        item_names=("state", "data", "meta"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict, meta: dict | None = None) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
        meta=ocp.args.JsonSave(meta or {})), force=True)

  def restore(self, step: int, like_state: Any) -> tuple[Any, dict, dict]:
    """Restores step `step` into arrays shaped and sharded like `like_state`; returns
    (state, data iterator state, loop state)."""
    args = dict(state=ocp.args.StandardRestore(abstract_like(like_state)),
                data=ocp.args.JsonRestore())
    if os.path.isdir(os.path.join(self.directory, str(step), "meta")):  # older ones lack it
      args["meta"] = ocp.args.JsonRestore()
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    log.info("restored checkpoint at step %d from %s", step, self.directory)
    return restored["state"], restored["data"], dict(restored.get("meta") or {})

  def restore_latest(self, like_state: Any) -> tuple[int, Any, dict, dict] | None:
    """(step, state, data state, loop state) of the newest step that restores, or None.

    A step that fails to restore (half-written by hand or by a file system without
    atomic renames, or corrupted) is moved aside to `<step>.unreadable` with a one-line
    warning and the step before it is tried; temporary directories of saves that never
    finished are reported and left alone (orbax does not list them as steps).
    """
    for name in sorted(os.listdir(self.directory)):
      if TMP_MARKER in name:
        log.warning("ignoring %s: a checkpoint whose save never finished",
                    os.path.join(self.directory, name))
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        return (step, *self.restore(step, like_state))
      except Exception as e:  # noqa: BLE001 - any unreadable step falls back the same way
        path = os.path.join(self.directory, str(step))
        aside = f"{path}.unreadable"
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        log.warning("checkpoint %s does not restore (%s: %s); moved to %s, using the one "
                    "before it", path, type(e).__name__, reason, aside)
        if jax.process_index() == 0:
          os.replace(path, aside)
        self.manager.reload()
    return None

  def wait(self) -> None:
    """Blocks until the saves in flight (async) are complete on disk."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self.manager.close()


def has_steps(workdir: str, subdir: str = "checkpoints") -> bool:
  """Whether `<workdir>/<subdir>` holds a step directory (complete or not), without
  creating anything."""
  directory = os.path.join(workdir, subdir)
  return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def state_directory(path: str) -> str:
  """The saved TrainState under `path`: a workdir (its newest checkpoint), a
  `checkpoints/` directory, or one step directory (`.../checkpoints/1000`)."""
  path = os.path.abspath(path)
  for candidate in (path, os.path.join(path, "checkpoints")):
    if os.path.isdir(os.path.join(candidate, "state")):
      return os.path.join(candidate, "state")
    if os.path.isdir(candidate):
      steps = [int(name) for name in os.listdir(candidate)
               if name.isdigit() and os.path.isdir(os.path.join(candidate, name, "state"))]
      if steps:
        return os.path.join(candidate, str(max(steps)), "state")
  raise ConfigError(f"config.init_from: no mmjax checkpoint in '{path}'; expected a workdir, "
                    "its checkpoints/ directory or a checkpoint step directory")


def read_params(path: str) -> dict:
  """The parameters of a saved TrainState (see `state_directory`) as numpy arrays, read
  on the host whatever the mesh it was saved from (no pickle is involved)."""
  directory = state_directory(path)
  checkpointer = ocp.PyTreeCheckpointer()
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)  # orbax warns that the step's metadata is elsewhere
  try:
    tree = checkpointer.metadata(directory).item_metadata.tree
  finally:
    absl_logger.setLevel(level)
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return checkpointer.restore(directory, args=ocp.args.PyTreeRestore(restore_args=args))["params"]


def load_matching(params: Any, source: dict, name: str) -> tuple[Any, ConversionReport]:
  """`params` with every leaf whose path `source` (another run's parameters) also has
  replaced by that value, cast to the leaf's dtype and placed with its sharding.

  Paths only in `params` keep their value (new: heads of another task); paths only in
  `source` are ignored (the other task's heads). A shared path whose shapes differ is a
  ConfigError listing them all: the two models' architectures disagree.
  """
  ours = traverse_util.flatten_dict(params, sep="/")
  theirs = traverse_util.flatten_dict(source, sep="/")
  mismatched = [f"{path} {tuple(theirs[path].shape)} vs {tuple(leaf.shape)}"
                for path, leaf in ours.items()
                if path in theirs and tuple(theirs[path].shape) != tuple(leaf.shape)]
  if mismatched:
    raise ConfigError(f"config.init_from: {len(mismatched)} parameter(s) of '{name}' have "
                      f"other shapes than this model's (checkpoint vs model): "
                      f"{'; '.join(mismatched)}")
  report = ConversionReport(name, "mmjax")
  for path, leaf in ours.items():
    if path in theirs:
      ours[path] = cast_like(theirs[path], leaf)
      report.loaded.append(path)
      report.num_values += int(np.prod(theirs[path].shape))
    else:
      report.new.append(path)
  for path in theirs:
    if path not in ours:
      report.ignore(path, "not in this model")
  return traverse_util.unflatten_dict(ours, sep="/"), report
