"""End-to-end training on CPU: loss goes down, resume is exact, 8 devices == 1 device."""

import json
import os

import jax
import numpy as np
import pytest

from mmjax.config import ConfigError
from mmjax.train import checkpoint, loop

from conftest import load_config


def runlocal(data_dir, **overrides):
  return load_config("configs/edu/grading.py", "runlocal", **{"data.data_dir": data_dir,
                                                             **overrides})


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def train_losses(workdir):
  return [(r["step"], r["train/loss"]) for r in read_metrics(workdir) if "train/loss" in r]


def final_params(workdir):
  return checkpoint.read_params(workdir)


def assert_trees_close(a, b, atol):
  flat_a, flat_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(flat_a) == len(flat_b)
  for x, y in zip(flat_a, flat_b, strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


def test_runlocal_trains_loss_goes_down_and_writes_results(runlocal_workdir):
  workdir = runlocal_workdir
  losses = [loss for _, loss in train_losses(workdir)]
  assert len(losses) == 6  # 60 steps, logged every 10
  assert all(np.isfinite(losses))
  assert losses[-1] < 0.93 * losses[0], losses  # 2.99 -> 2.64 when measured
  with open(os.path.join(workdir, "eval.json")) as f:
    written = json.load(f)
  assert written["step"] == 60
  for split, size in (("validation", 1432), ("test", 3600)):
    metrics = written[split]
    assert metrics["num_examples"] == size  # padding rows of the last batch not counted
    assert set(metrics) >= {"accuracy", "precision", "recall", "f1", "confusion_matrix",
                            "num_examples", "written_digit/accuracy", "answer/accuracy"}
    assert np.sum(metrics["confusion_matrix"]) == metrics["num_examples"]
    assert metrics["accuracy"] == pytest.approx(
        np.trace(metrics["confusion_matrix"]) / metrics["num_examples"])
  # The auxiliary digit head learns well above chance (10 %) even in 60 tiny steps.
  assert written["test"]["written_digit/accuracy"] > 0.3
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["model"]["fusion"]["kind"] == "cross_attention"


def test_the_step_is_compiled_ahead_with_its_memory_and_flops_reported(runlocal_workdir):
  from mmjax.train import profile

  with open(os.path.join(runlocal_workdir, "compile.json")) as f:
    report = json.load(f)
  assert report["flops"] > 1e6 and report["argument_bytes"] > 0 and report["temp_bytes"] > 0
  assert report["peak_flops_per_device"] is None  # a CPU: no known peak, so no MFU logged
  assert not any("train/mfu" in r for r in read_metrics(runlocal_workdir))
  compiled = profile.CompileReport(**{k: report[k] for k in (
      "flops", "argument_bytes", "output_bytes", "temp_bytes", "alias_bytes",
      "compile_seconds")})
  assert profile.mfu(compiled, 0.5, 1e12) == pytest.approx(report["flops"] / 0.5 / 1e12)
  assert profile.mfu(compiled, 0.5, None) is None


def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(data_dir, tmp_path):
  config = runlocal(data_dir, total_steps=40, **{"evals.splits": ("validation",),
                                                 "evals.headline": "validation/accuracy",
                                                 "checkpoint.every_steps": 30})
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  loop.train(config, straight)
  # Asked to stop after 15 steps, the run stops at the next log step (20), checkpointed.
  assert loop.train(config, resumed, stop_after_steps=15) == {}
  assert sorted(os.listdir(os.path.join(resumed, "checkpoints"))) == ["20"]
  loop.train(config, resumed)
  assert_trees_close(final_params(straight), final_params(resumed), atol=0)
  assert train_losses(straight) == train_losses(resumed)


def test_rerunning_a_finished_run_only_evaluates(data_dir, tmp_path):
  config = runlocal(data_dir, total_steps=20, **{"evals.splits": ("validation",),
                                                 "evals.headline": "validation/accuracy"})
  workdir = str(tmp_path / "run")
  first = loop.train(config, workdir)
  records = read_metrics(workdir)
  second = loop.train(config, workdir)
  assert read_metrics(workdir) == records
  assert second["validation"]["accuracy"] == first["validation"]["accuracy"]


FIVE_STEPS = {"total_steps": 5, "log_every_steps": 1, "checkpoint.every_steps": 5,
              "schedule.warmup_steps": 2, "evals.splits": ("validation",),
              "evals.headline": "validation/accuracy"}


@pytest.fixture(scope="module")
def one_device_run(data_dir, tmp_path_factory):
  """5 steps of the runlocal config on 1 device: the reference every mesh must match."""
  workdir = str(tmp_path_factory.mktemp("one_device"))
  results = loop.train(runlocal(data_dir, **FIVE_STEPS), workdir, devices=jax.devices()[:1])
  return workdir, results


@pytest.mark.parametrize("mesh", [
    (("data", 8),),
    (("data", 2), ("fsdp", 4)),
    (("data", 2), ("tensor", 4)),
], ids=["data8", "data2_fsdp4", "data2_tensor4"])
def test_eight_device_meshes_match_one_device(data_dir, tmp_path, one_device_run, mesh):
  """Data parallel, FSDP and Megatron tensor parallel: the same losses, parameters and
  evaluation as 1 device, within 1e-5 (fp32)."""
  assert jax.device_count() == 8
  one, one_results = one_device_run
  eight = str(tmp_path / "eight")
  results = loop.train(runlocal(data_dir, **FIVE_STEPS, mesh=mesh), eight,
                       devices=jax.devices())
  losses_one = np.array([loss for _, loss in train_losses(one)])
  losses_eight = np.array([loss for _, loss in train_losses(eight)])
  assert len(losses_one) == 5 and losses_one[-1] != losses_one[0]
  np.testing.assert_allclose(losses_eight, losses_one, atol=1e-5, rtol=0)
  assert_trees_close(final_params(one), final_params(eight), atol=1e-5)
  assert results["validation"]["accuracy"] == pytest.approx(
      one_results["validation"]["accuracy"], abs=1e-3)


def test_gradient_accumulation_matches_one_step_on_the_whole_batch(data_dir, tmp_path):
  """4 micro-batches of 16 per step == one step on the 64 examples (2 devices)."""
  overrides = dict(total_steps=5, log_every_steps=1, **{
      "checkpoint.every_steps": 5, "schedule.warmup_steps": 2,
      "evals.splits": ("validation",), "evals.headline": "validation/accuracy"})
  whole, micro = str(tmp_path / "whole"), str(tmp_path / "micro")
  loop.train(runlocal(data_dir, **overrides), whole, devices=jax.devices()[:2])
  loop.train(runlocal(data_dir, **overrides, **{"input.accum_steps": 4}), micro,
             devices=jax.devices()[:2])
  losses_whole = np.array([loss for _, loss in train_losses(whole)])
  losses_micro = np.array([loss for _, loss in train_losses(micro)])
  assert len(losses_whole) == 5 and losses_whole[-1] != losses_whole[0]
  np.testing.assert_allclose(losses_micro, losses_whole, atol=1e-5, rtol=0)
  assert_trees_close(final_params(whole), final_params(micro), atol=1e-5)


@pytest.mark.parametrize("overrides, message", [
    ({"input.accum_steps": 3}, r"batch_size=64 must be divisible by config.input.accum_steps=3"),
    ({"input.accum_steps": 0}, r"config.input.accum_steps: expected a positive integer"),
    ({"checkpoint.every_steps": 15}, "must be a multiple of config.log_every_steps"),
    ({"evals.splits": ("validation",)}, "names 'test', which is none of the evaluations"),
    ({"evals.batch_size": 100}, r"config.evals.batch_size=100 must be divisible by the 8 devices"),
    ({"input.batch_size": 12}, r"config.input.batch_size=12 must be divisible by the 8 devices"),
    ({"evals.splits": ("test", "dev")}, "has no split 'dev'"),
])
def test_bad_configs_fail_before_training(data_dir, tmp_path, overrides, message):
  with pytest.raises(ConfigError, match=message):
    loop.train(runlocal(data_dir, **overrides), str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_text_length_override_resizes_the_text_tower(data_dir):
  config = runlocal(data_dir, **{"input.max_text_len": 40})
  assert config.model.text.max_len == 40
  exp = loop.build_experiment(config)
  batch = exp.example_batch()
  assert batch["text_ids"].shape == (1, 40)
  assert exp.model.towers["text"].max_len == 40
