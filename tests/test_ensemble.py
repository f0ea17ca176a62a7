"""Ensembles (mean of logits) and model soups (mean of weights) of trained runs.

One trained run (the session's `runlocal_workdir`, 60 steps) and runs that are only
checkpointed, never trained (random weights drawn in numpy: a second run of the same
architecture, and one with a narrower fusion), so the file costs little beyond what the
session already trains.
"""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from mmjax import analysis, ensemble
from mmjax.config import ConfigError
from mmjax.models import lora
from mmjax.train import checkpoint, loop
from mmjax.train.checkpoint import Checkpointer
from mmjax.train.state import TrainState

from conftest import REPO, load_config

HELD_OUT = "validation[:256]"


def fake_run(workdir, config, seed, step=7):
  """A workdir whose checkpoint at `step` holds N(0, 0.05) weights of `config`'s model
  (and no optimizer state: ensembles and soups read only the parameters)."""
  exp = loop.build_experiment(config)
  shapes = jax.eval_shape(lambda: loop.initial_params(exp, pretrained=False))
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda s: rng.normal(0, 0.05, s.shape).astype(s.dtype), shapes)
  os.makedirs(workdir)
  loop.record_config(config, workdir)
  writer = Checkpointer(workdir, keep=1, async_save=False)
  writer.save(step, TrainState(jnp.asarray(step, jnp.int32), params, {}), {"next_index": 0})
  writer.close()
  return workdir


@pytest.fixture(scope="module")
def runs(runlocal_workdir, tmp_path_factory):
  """{"a": the trained run, "b": same architecture, random, "narrow": fusion width 16
  instead of 32, random}."""
  root = tmp_path_factory.mktemp("ensemble")
  narrow = analysis.run_config(runlocal_workdir)
  assert narrow.model.fusion.width == 32
  narrow.model.fusion.width, narrow.model.fusion.mlp_dim = 16, 64
  return dict(a=runlocal_workdir,
              b=fake_run(str(root / "b"), analysis.run_config(runlocal_workdir), seed=1),
              narrow=fake_run(str(root / "narrow"), narrow, seed=2))


@pytest.fixture(scope="module")
def setup(data_dir):
  """The evaluation setup every member shares: the validation split."""
  return load_config("configs/edu/grading.py", "runlocal", **{
      "data.data_dir": data_dir, "evals.splits": ("validation",),
      "evals.headline": "validation/accuracy"})


@pytest.fixture(scope="module")
def members(runs, setup):
  """The trained run and the narrow one, parameters loaded (their steps compiled once)."""
  opened = ensemble.open_members([runs["a"], runs["narrow"]], setup)
  return [member.load() for member in opened]


def params_of(workdir):
  return traverse_util.flatten_dict(checkpoint.read_params(workdir), sep="/")


def softmax(logits):
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_an_ensemble_of_one_run_is_that_runs_own_evaluation(runs, members, tmp_path):
  report = ensemble.evaluate_members(members[:1], str(tmp_path))
  with open(os.path.join(runs["a"], "eval.json")) as f:
    own = json.load(f)["validation"]  # evaluated by training, through its predict step
  assert report["ensemble"]["validation"] == report["single"][0]["validation"]
  got = report["ensemble"]["validation"]
  for name in ("accuracy", "f1", "written_digit/accuracy", "answer/accuracy", "num_examples"):
    assert got[name] == own[name], name
  assert np.array_equal(got["confusion_matrix"], own["confusion_matrix"])
  assert report["members"] == [dict(workdir=os.path.abspath(runs["a"]), step=60)]
  with open(tmp_path / "eval_ensemble.json") as f:
    written = json.load(f)
  assert written["summary"]["validation/accuracy"] == dict(members=[own["accuracy"]],
                                                           ensemble=own["accuracy"])


def test_an_ensemble_averages_its_members_logits_across_architectures(members):
  combined, singles = ensemble.split_predictions(members, HELD_OUT)
  outputs = [member.outputs(HELD_OUT) for member in members]  # (labels, logits) of each
  for head in ("label", "written_digit", "answer"):
    logits = [out[1][head].astype(np.float64) for out in outputs]
    expected = softmax((logits[0] + logits[1]) / 2)
    np.testing.assert_allclose(combined[head]["probabilities"], expected, atol=1e-6)
    np.testing.assert_array_equal(combined[head]["prediction"], expected.argmax(-1))
    np.testing.assert_array_equal(combined[head]["label"], outputs[0][0][head])
    for single, member_logits in zip(singles, logits, strict=True):
      np.testing.assert_allclose(single[head]["probabilities"], softmax(member_logits),
                                 atol=1e-6)
  # Not one member's output in disguise: the random narrow model moves the average.
  assert np.abs(combined["written_digit"]["probabilities"]
                - singles[0]["written_digit"]["probabilities"]).max() > 1e-3
  metrics = dict(members[0].evaluator().metrics(combined))
  assert metrics["num_examples"] == 256
  assert metrics["written_digit/accuracy"] == pytest.approx(np.mean(
      combined["written_digit"]["prediction"] == combined["written_digit"]["label"]))


def without_answer_head(runs, workdir):
  """A workdir holding only a config.json: the trained run's, without the `answer` head."""
  other = analysis.run_config(runs["a"])
  del other.model.heads["answer"]
  del other.losses["answer"]
  os.makedirs(workdir)
  loop.record_config(other, workdir)
  return workdir


MISMATCH = (r"--workdir \S+other: heads and class counts \{'label': 2, 'written_digit': 10\} "
            r"differs from --workdir \S+'s \{'answer': 10, 'label': 2, 'written_digit': 10\}; "
            r"ensemble members must share the task, dataset, heads and class counts")


def test_ensemble_members_must_share_task_heads_and_classes(runs, tmp_path):
  other = without_answer_head(runs, str(tmp_path / "other"))
  with pytest.raises(ConfigError, match=f"^{MISMATCH}$"):
    ensemble.open_members([runs["a"], other])


def test_the_command_line_ensemble_reports_a_mismatch_in_one_line(runs, tmp_path):
  other = without_answer_head(runs, str(tmp_path / "other"))
  done = subprocess.run([sys.executable, "-m", "mmjax.main", "eval", "--workdir", runs["a"],
                         "--workdir", other], cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 2
  assert re.fullmatch(f"mmjax: error: {MISMATCH}", done.stderr.strip()), done.stderr[-2000:]


def test_a_soup_of_one_run_is_that_run_and_restores_as_a_run(runs, setup, tmp_path):
  out = str(tmp_path / "soup")
  report = ensemble.make_soup([runs["a"]], out, setup=setup)
  assert report["step"] == 60 and report["method"] == "uniform"
  theirs, ours = params_of(runs["a"]), params_of(out)
  assert theirs.keys() == ours.keys()
  for path, value in theirs.items():
    np.testing.assert_array_equal(ours[path], value)
  # What `mmjax eval` and `mmjax train` do with a workdir: rebuild the experiment from its
  # config.json and restore the whole TrainState (optimizer state included) onto the mesh.
  config = ensemble.member_config(out)
  assert config.evals.splits == ("validation",)  # the setup's evaluation
  assert config.model.to_dict() == analysis.run_config(runs["a"]).model.to_dict()
  like, _ = loop.create_state(loop.build_experiment(config), checkpoint.read_params(runs["a"]))
  reader = Checkpointer(out, keep=1)
  step, state, data_state, meta = reader.restore_latest(like)
  reader.close()
  assert step == 60 and int(state.step) == 60
  assert data_state == ensemble.read_data_state(runs["a"], "latest", 60)
  assert meta["soup"]["members"] == [dict(workdir=os.path.abspath(runs["a"]), step=60)]
  restored = traverse_util.flatten_dict(jax.device_get(state.params), sep="/")
  for path, value in theirs.items():
    np.testing.assert_array_equal(restored[path], value)
  for name in ("config.json", "tokenizer.json", "soup.json"):
    assert os.path.isfile(os.path.join(out, name)), name


def test_a_uniform_soup_is_the_exact_mean_of_the_weights(runs, tmp_path):
  out = str(tmp_path / "soup")
  report = ensemble.make_soup([runs["a"], runs["b"]], out)
  a, b, soup = params_of(runs["a"]), params_of(runs["b"]), params_of(out)
  assert soup.keys() == a.keys()
  for path in a:
    assert soup[path].dtype == np.float32
    np.testing.assert_array_equal(soup[path], (a[path] + b[path]) / 2)
  assert [m["step"] for m in report["members"]] == [60, 7]
  with pytest.raises(ConfigError, match="already holds checkpoints"):
    ensemble.make_soup([runs["a"], runs["b"]], out)


def test_a_greedy_soup_leaves_out_a_member_that_lowers_the_held_out_metric(runs, tmp_path):
  out = str(tmp_path / "greedy")
  metric = f"{HELD_OUT}/written_digit/accuracy"
  report = ensemble.make_soup([runs["b"], runs["a"]], out, greedy=True, metric=metric)
  trained, untrained = report["members"][1], report["members"][0]
  assert trained["kept"] and not untrained["kept"]
  assert trained["metric"] > 0.3 > untrained["metric"]  # 60 steps vs a random init
  assert report["soup_metric"] == trained["metric"]
  soup = params_of(out)
  for path, value in params_of(runs["a"]).items():
    np.testing.assert_array_equal(soup[path], value)


def test_a_soup_of_different_architectures_is_refused_naming_the_first_parameter(
    runs, tmp_path):
  with pytest.raises(ConfigError, match=r"^mmjax soup: --workdir \S+narrow's parameters differ "
                     r"from --workdir \S+'s \(fusion/\S+ has shape \(\d+(, \d+)*\), not "
                     r"\(\d+(, \d+)*\)\); a soup averages runs of one architecture$"):
    ensemble.make_soup([runs["a"], runs["narrow"]], str(tmp_path / "soup"))
  assert not os.path.exists(tmp_path / "soup")  # refused before anything was written


@pytest.mark.parametrize("args, message", [
    (["train", "--workdir", "a", "--workdir", "b"],
     "mmjax: error: --workdir: train takes one workdir (given 2); only eval (an ensemble) "
     "and soup take several"),
    (["soup", "--workdir", "a", "--workdir", "b"],
     "mmjax: error: soup: --out DIR is required (the new workdir the averaged weights go to)"),
])
def test_command_line_mistakes_give_one_line(args, message):
  done = subprocess.run([sys.executable, "-m", "mmjax.main", *args, "--config",
                         "configs/edu/grading.py:runlocal"], cwd=REPO, capture_output=True,
                        text=True, timeout=120)
  assert done.returncode == 2
  assert done.stderr.strip() == message


def test_a_soup_averages_lora_runs_as_merged_kernels():
  state = {"dense": {"kernel": np.ones((3, 2), np.float32), "bias": np.zeros(2, np.float32),
                     "lora_a": np.full((3, 1), 2.0, np.float32),
                     "lora_b": np.full((1, 2), 5.0, np.float32)}}
  merged = {"dense": {"kernel": np.full((3, 2), 4.0, np.float32),
                      "bias": np.ones(2, np.float32)}}
  back = ensemble.unmerge_like(state, merged)
  again = jax.device_get(lora.merge_lora(back, alpha=8.0))
  np.testing.assert_array_equal(again["dense"]["kernel"], merged["dense"]["kernel"])
  np.testing.assert_array_equal(back["dense"]["lora_a"], state["dense"]["lora_a"])
  assert not back["dense"]["lora_b"].any()
