"""Metric writers: `metrics.jsonl` (one JSON object per logged step) and TensorBoard."""

from __future__ import annotations

import json
import os
from numbers import Number

import jax


class MetricWriter:
  """Writes scalars to `<workdir>/metrics.jsonl` and `<workdir>/tensorboard/`.

  Only process 0 writes. With `resume_step`, records after that step (written by an
  interrupted run past its last checkpoint, and a line cut short by a kill) are dropped
  from `metrics.jsonl` and purged from TensorBoard, so a resumed run's logs match an
  uninterrupted run's.
  """

  def __init__(self, workdir: str, tensorboard: bool = True, resume_step: int | None = None):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if not self.enabled:
      return
    if resume_step is not None:
      self.truncate_after(resume_step)
    if tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=30,
                               purge_step=None if resume_step is None else resume_step + 1)

  def truncate_after(self, step: int) -> None:
    if not os.path.exists(self.path):
      return
    kept = []
    with open(self.path, encoding="utf-8") as f:
      for line in f:
        try:
          record = json.loads(line)
        except ValueError:  # the last line of a process killed while writing it
          continue
        if record["step"] <= step:
          kept.append(line if line.endswith("\n") else line + "\n")
    tmp = self.path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(kept)
    os.replace(tmp, self.path)

  def write(self, step: int, scalars: dict[str, Number]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for name, value in scalars.items():
        self._tb.add_scalar(name, float(value), int(step))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
