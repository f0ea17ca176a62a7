"""The command line: a real run through `python -m mmjax.main`, and one-line errors."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


def mmjax(*args, timeout=600):
  return subprocess.run([sys.executable, "-m", "mmjax.main", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout)


def test_train_then_eval_through_the_command_line(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  common = ["--config", "configs/edu/grading.py:runlocal,steps=20", "--workdir", workdir,
            f"--config.data.data_dir={data_dir}", "--config.evals.splits=('test',)"]
  done = mmjax(*common)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"Results in {os.path.abspath(workdir)} (train took " in done.stdout
  assert "test/accuracy = " in done.stdout
  os.remove(os.path.join(workdir, "eval.json"))
  done = mmjax("eval", *common)
  assert done.returncode == 0, done.stderr[-3000:]
  with open(os.path.join(workdir, "eval.json")) as f:
    assert json.load(f)["step"] == 20


@pytest.mark.parametrize("args, message", [
    (["--config", "configs/edu/grading.py", "--config.model.fusion.dpeth=3"],
     "mmjax: error: --config.model.fusion.dpeth: config.model.fusion has no field 'dpeth'; "
     "did you mean 'depth'?"),
    (["--config", "configs/edu/grading.py", "--config.optimiser.learning_rate=3"],
     "mmjax: error: --config.optimiser.learning_rate: config has no field 'optimiser'; "
     "did you mean 'optimizer'?"),
    (["--config", "configs/edu/no_such_file.py"],
     "mmjax: error: --config: config file not found: configs/edu/no_such_file.py"),
    (["--config", "configs/edu/grading.py:runlokal"],
     "mmjax: error: config arg 'runlokal' is unknown; did you mean 'runlocal'?"),
    (["--config", "configs/edu/grading.py", "--config.total_steps=many"],
     "mmjax: error: flag --config.total_steps=many: invalid literal for int() with base 10: "
     "'many'"),
    (["--config", "configs/edu/grading.py", "--config.data.name=mnist"],
     "mmjax: error: config.data.name: unknown dataset 'mnist'; expected one of easy_vqa, "
     "edu_behaviour, edu_grading, edu_questions, edu_scenes, edu_tracing, jsonl, scienceqa, "
     "shapes_relational, video_motion"),
    (["--workdir", "/tmp/x"],
     "mmjax: error: --config is required: --config configs/<area>/<experiment>.py[:arg]"),
])
def test_bad_command_lines_give_one_line(args, message, tmp_path):
  if "--workdir" not in args:
    args = [*args, "--workdir", str(tmp_path)]
  done = mmjax(*args, timeout=120)
  assert done.returncode == 2
  assert done.stderr.strip() == message
  assert not os.listdir(tmp_path)  # nothing was started
