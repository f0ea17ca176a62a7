"""Reliability: exact resume after SIGKILL, checkpoints that survive half-written saves,
the non-finite guard, and early stopping with a best checkpoint kept apart."""

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from test_train import assert_trees_close, final_params, read_metrics, runlocal, train_losses

from mmjax.data import pipeline
from mmjax.train import loop
from mmjax.train.checkpoint import Checkpointer

from conftest import REPO

# 30 steps, every step logged (so a watcher sees each one), a checkpoint every 5.
KILL_RUN = {"total_steps": 30, "log_every_steps": 1, "checkpoint.every_steps": 5,
            "evals.splits": ("validation",), "evals.headline": "validation/accuracy"}


def command_line(data_dir, workdir):
  flags = [f"--config.{k}={v}" for k, v in KILL_RUN.items() if not isinstance(v, tuple)]
  return [sys.executable, "-m", "mmjax.main", "train",
          f"--config={REPO / 'configs/edu/grading.py'}:runlocal", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}", "--config.evals.splits=('validation',)",
          *flags]


def last_logged_step(workdir):
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      lines = [line for line in f if line.endswith("\n")]
  except OSError:
    return 0
  return json.loads(lines[-1])["step"] if lines else 0


def test_sigkill_at_a_random_step_then_the_same_command_is_bit_identical(data_dir, tmp_path):
  straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
  subprocess.run(command_line(data_dir, straight), check=True, capture_output=True, cwd=REPO)
  kill_at = random.SystemRandom().randint(3, 27)
  process = subprocess.Popen(command_line(data_dir, killed), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  while last_logged_step(killed) < kill_at and process.poll() is None:
    time.sleep(0.02)
  process.send_signal(signal.SIGKILL)
  process.wait()
  seen = last_logged_step(killed)
  assert seen < KILL_RUN["total_steps"], f"the run ended (step {seen}) before the kill"
  rerun = subprocess.run(command_line(data_dir, killed), capture_output=True, text=True,
                         cwd=REPO)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  message = f"killed at step {seen} (aimed at {kill_at})"
  assert train_losses(killed) == train_losses(straight), message
  assert len(train_losses(killed)) == KILL_RUN["total_steps"]
  assert_trees_close(final_params(straight), final_params(killed), atol=0)
  with open(os.path.join(straight, "eval.json")) as a, open(os.path.join(killed,
                                                                         "eval.json")) as b:
    assert json.load(a)["validation"]["accuracy"] == json.load(b)["validation"]["accuracy"]


SMALL = {"total_steps": 20, "log_every_steps": 5, "checkpoint.every_steps": 10,
         "checkpoint.keep": 3, "evals.splits": ("validation",),
         "evals.headline": "validation/accuracy"}


def test_a_half_written_checkpoint_is_skipped_with_a_warning_and_training_redoes_it(
    data_dir, tmp_path, caplog):
  workdir = str(tmp_path / "run")
  config = runlocal(data_dir, **SMALL)
  loop.train(config, workdir)
  checkpoints = os.path.join(workdir, "checkpoints")
  assert sorted(os.listdir(checkpoints)) == ["10", "20"]
  at_20 = final_params(workdir)
  losses = train_losses(workdir)
  # Step 20 lost its array files (a copy cut short); a save of step 30 never finished.
  state_dir = os.path.join(checkpoints, "20", "state")
  for name in os.listdir(state_dir):
    if name.startswith(("d", "ocdbt", "manifest")) or name.endswith(".ocdbt"):
      path = os.path.join(state_dir, name)
      shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
  os.makedirs(os.path.join(checkpoints, "30.orbax-checkpoint-tmp-1234567", "state"))
  with caplog.at_level(logging.WARNING):
    loop.train(config, workdir)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any("30.orbax-checkpoint-tmp" in w and "never finished" in w for w in warnings)
  assert any("checkpoints/20 does not restore" in w and "using the one before" in w
             for w in warnings), warnings
  assert all("\n" not in w for w in warnings)
  # Nothing was deleted: the broken step is kept aside; steps 11..20 were trained again,
  # to the same parameters and losses.
  assert os.path.isdir(os.path.join(checkpoints, "20.unreadable"))
  assert os.path.isdir(os.path.join(checkpoints, "10"))
  assert_trees_close(at_20, final_params(workdir), atol=0)
  assert train_losses(workdir) == losses


def test_a_failed_save_deletes_nothing(tmp_path, monkeypatch):
  checkpointer = Checkpointer(str(tmp_path), keep=1, async_save=False)
  state = {"w": jnp.arange(4.0)}
  checkpointer.save(1, state, {"position": 1})
  checkpointer.manager.wait_until_finished()

  def disk_full(*args, **kwargs):
    raise OSError("No space left on device")

  monkeypatch.setattr(ocp.JsonCheckpointHandler, "save", disk_full)
  monkeypatch.setattr(ocp.JsonCheckpointHandler, "async_save", disk_full)
  with pytest.raises(OSError, match="No space"):
    checkpointer.save(2, {"w": jnp.arange(4.0) + 1}, {"position": 2})
    checkpointer.manager.wait_until_finished()
  monkeypatch.undo()
  again = Checkpointer(str(tmp_path), keep=1, async_save=False)
  step, restored, data, _ = again.restore_latest(state)
  assert step == 1 and data == {"position": 1}
  np.testing.assert_array_equal(restored["w"], np.arange(4.0))
  again.close()


class PoisonedIterator:
  """The training iterator with NaN images in the batch of step `at`."""

  def __init__(self, inner, at):
    self.inner, self.at, self.step = inner, at, 0

  def __iter__(self):
    return self

  def __next__(self):
    self.step += 1
    batch = next(self.inner)
    if self.step == self.at:
      batch = dict(batch, image=np.full_like(batch["image"], np.nan))
    return batch

  def get_state(self):
    return self.inner.get_state()

  def set_state(self, state):
    self.inner.set_state(state)


def poison(monkeypatch, at):
  make = pipeline.train_iterator
  monkeypatch.setattr(pipeline, "train_iterator",
                      lambda *a, **k: PoisonedIterator(make(*a, **k), at))


def test_a_nan_batch_stops_the_run_with_a_report_and_keeps_the_last_good_checkpoint(
    data_dir, tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  poison(monkeypatch, at=13)
  with pytest.raises(loop.NonFiniteError) as failure:
    loop.train(runlocal(data_dir, **SMALL), workdir)
  message = str(failure.value)
  assert "\n" not in message
  assert message.startswith("non-finite training step 13: loss=nan")
  assert "label/loss=nan" in message and "written_digit/loss=nan" in message
  assert "first non-finite gradient: " in message and "checkpoints/10" in message
  report = failure.value.report
  assert report["step"] == 13 and report["last_good_checkpoint"].endswith("checkpoints/10")
  assert report["first_nonfinite_gradient"].startswith(("image_encoder/", "fusion/", "heads/"))
  assert report["nonfinite_gradients"] > 0
  with open(os.path.join(workdir, "nonfinite.json")) as f:
    written = json.load(f)
  assert written.pop("loss_terms").keys() == report["loss_terms"].keys()
  assert written == {k: v for k, v in report.items() if k != "loss_terms"}
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10"]
  assert all(np.isfinite(loss) for _, loss in train_losses(workdir))
  assert [s for s, _ in train_losses(workdir)] == [5, 10]
  params = final_params(workdir)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))


def test_skip_nonfinite_steps_skips_the_update_and_counts_it(data_dir, tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  poison(monkeypatch, at=13)
  loop.train(runlocal(data_dir, skip_nonfinite_steps=True, **SMALL), workdir)
  records = [r for r in read_metrics(workdir) if "train/skipped_steps" in r]
  assert [r["train/skipped_steps"] for r in records] == [0, 0, 1, 0]
  assert all(np.isfinite(r["train/loss"]) for r in records)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(final_params(workdir)))


def test_early_stopping_keeps_the_best_checkpoint_apart_and_eval_picks_either(
    data_dir, tmp_path):
  # Nothing beats the first evaluation by a full point of accuracy: stop at the second.
  config = runlocal(data_dir, total_steps=60, log_every_steps=10,
                    **{"checkpoint.every_steps": 10, "evals.every_steps": 10,
                       "evals.splits": ("validation",),
                       "evals.headline": "validation/accuracy"})
  config.early_stopping = dict(metric="validation/accuracy", mode="max", patience=1,
                               min_delta=1.0)
  workdir = str(tmp_path / "run")
  latest = loop.train(config, workdir)
  with open(os.path.join(workdir, "eval.json")) as f:
    written = json.load(f)
  assert written["step"] == 20
  assert written["early_stopping"]["stopped"] and written["early_stopping"]["best_step"] == 10
  assert os.listdir(os.path.join(workdir, "best")) == ["10"]
  assert "20" in os.listdir(os.path.join(workdir, "checkpoints"))
  at_10 = next(r for r in read_metrics(workdir) if r["step"] == 10 and "validation/accuracy"
               in r)
  best = loop.evaluate(config, workdir, checkpoint="best")
  assert best["validation"]["accuracy"] == at_10["validation/accuracy"]
  assert written["early_stopping"]["best"] == at_10["validation/accuracy"]
  again = loop.evaluate(config, workdir, checkpoint="latest")
  assert again["validation"]["accuracy"] == latest["validation"]["accuracy"]
  # Running the same command again trains no further.
  records = read_metrics(workdir)
  loop.train(config, workdir)
  assert read_metrics(workdir) == records


@pytest.mark.parametrize("spec, message", [
    (dict(metric="test/accuracy"), "expected '<split>/<metric>' with a split of"),
    (dict(metric="validation/accuracy", mode="up"), "mode='up': expected max or min"),
    (dict(metric="validation/accuracy", patience=2, pateince=3), "unknown field(s) pateince"),
    (dict(metric="validation/accuracy", patience=2), "config.evals.every_steps=0 must be"),
])
def test_bad_early_stopping_configs_fail_before_training(data_dir, tmp_path, spec, message):
  config = runlocal(data_dir, **{"evals.splits": ("validation",),
                                 "evals.headline": "validation/accuracy"})
  config.early_stopping = spec
  with pytest.raises(loop.ConfigError, match=None) as failure:
    loop.train(config, str(tmp_path / "run"))
  assert message in str(failure.value)
  assert not os.path.exists(tmp_path / "run")
