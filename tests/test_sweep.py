"""experiments.sweep: jobs from a sweep file, skip / resume / failure handling, the tables."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO))
from experiments import sweep as sweep_lib  # noqa: E402

SWEEP_FILE = """
from experiments.sweep import Run, Sweep

SWEEPS = [Sweep(
    name="grading",
    config="configs/edu/grading.py",
    arg="runlocal,steps=12",
    rows=[Run("cross_attention"), Run("concat", overrides={{"model.fusion.kind": "concat"}})],
    seeds={seeds},
    metrics=("test/accuracy", "params/trainable"),
    overrides={{"log_every_steps": 6, "checkpoint.every_steps": 6, "data.data_dir": "{data_dir}"}},
)]
"""


def run_sweep(*args, cwd=REPO):
  return subprocess.run([sys.executable, "-m", "experiments.sweep", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=1200)


def read_csv(path):
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


def test_grid_names_and_overrides():
  rows = sweep_lib.grid(name="{kind}_r{rank}", model__fusion__kind=["merged", "late"],
                        finetune__lora__rank=[4, 16])
  assert [r.name for r in rows] == ["merged_r4", "merged_r16", "late_r4", "late_r16"]
  assert rows[1].overrides == {"model.fusion.kind": "merged", "finetune.lora.rank": 16}
  assert [r.name for r in sweep_lib.grid(a=[1, 2])] == ["1", "2"]
  with pytest.raises(ValueError, match="distinct names"):
    sweep_lib.Sweep("s", "c.py", rows=[sweep_lib.Run("x"), sweep_lib.Run("x")])


def test_jobs_substitute_out_and_seed_and_select():
  sweeps = [sweep_lib.Sweep("pre", "a.py", rows=[sweep_lib.Run("p")], seeds=(0, 1)),
            sweep_lib.Sweep("fine", "b.py", arg="pretrained={out}/pre/p/seed_{seed}",
                            rows=[sweep_lib.Run("f", arg="x=1", overrides={"m.k": "v{seed}"})],
                            seeds=(0, 1))]
  jobs = sweep_lib.make_jobs(sweeps, "OUT", extra_arg="runlocal",
                             extra_overrides=[("data.data_dir", "/d")])
  assert [(j.sweep.name, j.seed) for j in jobs] == [("pre", 0), ("pre", 1), ("fine", 0),
                                                     ("fine", 1)]
  command = jobs[3].command
  assert command[1:4] == ("-m", "mmjax.main", "--config")
  assert command[4] == "b.py:pretrained=OUT/pre/p/seed_1,x=1,runlocal"
  assert command[5:] == ("--workdir", os.path.join("OUT", "fine", "f", "seed_1"),
                         "--config.seed=1", "--config.m.k=v1", "--config.data.data_dir=/d")
  assert [j.seed for j in sweep_lib.make_jobs(sweeps, "OUT", seeds=[1], only=["fine"])] == [1]


def test_table_from_results_csv(tmp_path):
  sweep = sweep_lib.Sweep("s", "c.py", rows=[sweep_lib.Run("a"), sweep_lib.Run("b")],
                          seeds=(0, 1), metrics=("test/accuracy", "params/trainable"))
  records = [dict(sweep="s", run="a", seed=0, status="done", **{"test/accuracy": 0.9,
                                                                 "params/trainable": 12345.0}),
             dict(sweep="s", run="a", seed=1, status="done", **{"test/accuracy": 0.8,
                                                                 "params/trainable": 12345.0}),
             dict(sweep="s", run="b", seed=0, status="done", **{"test/accuracy": 0.5}),
             dict(sweep="s", run="b", seed=1, status="failed")]
  sweep_lib.write_csv(records, str(tmp_path / "results.csv"))
  rows = sweep_lib.summaries([sweep], str(tmp_path / "results.csv"))
  lines = sweep_lib.table(sweep, rows).splitlines()
  assert lines[0] == "| s | test/accuracy | params/trainable |"
  assert lines[2] == "| a | 0.850 ± 0.071 | 12,345 ± 0 |"
  assert lines[3] == "| b | 0.500 (n=1) | — |"  # one seed failed: n says so


def test_bad_sweep_file_and_arguments_fail_in_one_line(tmp_path):
  done = run_sweep(str(tmp_path / "missing.py"))
  assert done.returncode != 0 and "sweep file" in done.stderr and "does not exist" in done.stderr
  empty = tmp_path / "empty.py"
  empty.write_text("X = 1\n")
  done = run_sweep(str(empty))
  assert done.returncode != 0 and "must define SWEEPS" in done.stderr
  done = run_sweep("experiments/ablations/fusion.py", "--only", "nope")
  assert done.returncode != 0 and "has sweeps relational, grading" in done.stderr
  done = run_sweep("experiments/ablations/fusion.py", "--set", "novalue")
  assert done.returncode != 0 and "expected KEY=VALUE" in done.stderr


@pytest.mark.parametrize("path", ["fusion", "peft", "objectives", "pretraining"])
def test_shipped_ablations_expand_to_valid_commands(path):
  """Every shipped sweep file loads, and each of its configs (with its arg) parses."""
  from mmjax.main import load_config_file

  sweeps = sweep_lib.load_sweeps(str(REPO / "experiments" / "ablations" / f"{path}.py"))
  jobs = sweep_lib.make_jobs(sweeps, "OUT")
  assert len(jobs) == sum(len(s.rows) * len(s.seeds) for s in sweeps) >= 5
  for job in jobs:
    spec = job.command[job.command.index("--config") + 1]
    config = load_config_file(str(REPO / spec))
    for flag in job.command:
      if flag.startswith("--config."):
        node = config
        for key in flag[len("--config."):].split("=", 1)[0].split("."):
          assert key in node, f"{job.workdir}: {flag} names no field of {spec}"
          node = node[key]


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, data_dir):
  """A real two-row, two-seed sweep of the runlocal grading config (4 runs of 12 steps)."""
  root = tmp_path_factory.mktemp("sweep")
  path = root / "tiny.py"
  path.write_text(SWEEP_FILE.format(seeds=(0, 1), data_dir=data_dir))
  out = root / "out"
  done = run_sweep(str(path), "--out", str(out), "--parallel", "2")
  assert done.returncode == 0, done.stderr[-3000:]
  return path, out, done


def test_sweep_runs_collects_and_tabulates(finished_sweep):
  _, out, done = finished_sweep
  rows = read_csv(out / "results.csv")
  assert [(r["run"], r["seed"], r["status"]) for r in rows] == [
      ("cross_attention", "0", "done"), ("cross_attention", "1", "done"),
      ("concat", "0", "done"), ("concat", "1", "done")]
  for row in rows:  # the CSV holds each run's own eval.json and compile.json figures
    with open(os.path.join(row["workdir"], "eval.json")) as f:
      assert float(row["test/accuracy"]) == pytest.approx(json.load(f)["test"]["accuracy"])
    with open(os.path.join(row["workdir"], "compile.json")) as f:
      assert float(row["params/trainable"]) == json.load(f)["params_trainable"] > 0
    assert float(row["train/steps_per_sec"]) > 0 and float(row["minutes"]) > 0
  # Seeds differ; the table's mean and std are those of the CSV's two values.
  accs = np.array([float(r["test/accuracy"]) for r in rows if r["run"] == "concat"])
  mean, std = accs.mean(), accs.std(ddof=1)
  table = (out / "results.md").read_text()
  assert f"| concat | {mean:.3f} ± {std:.3f} |" in table
  assert "Command: `python -m experiments.sweep" in table and table in done.stdout
  assert os.path.getsize(out / "results.png") > 10_000
  assert "4 runs into" in done.stdout and "0 already finished" in done.stdout


def test_sweep_skips_finished_and_resumes_interrupted(finished_sweep):
  path, out, _ = finished_sweep
  logs = {d: (out / "grading" / d / "seed_0" / "run.log").read_text()
          for d in ("cross_attention", "concat")}
  # An interrupted run: its final evaluation never got written.
  os.remove(out / "grading" / "concat" / "seed_0" / "eval.json")
  done = run_sweep(str(path), "--out", str(out))
  assert done.returncode == 0, done.stderr[-3000:]
  assert "4 runs into" in done.stdout and "3 already finished" in done.stdout
  assert (out / "grading" / "cross_attention" / "seed_0" / "run.log").read_text() == \
      logs["cross_attention"]  # not started again
  assert (out / "grading" / "concat" / "seed_0" / "eval.json").exists()
  resumed = (out / "grading" / "concat" / "seed_0" / "run.log").read_text()
  assert resumed.startswith(logs["concat"]) and resumed.count("$ ") == 2
  assert [r["status"] for r in read_csv(out / "results.csv")] == ["done"] * 4


def test_failed_run_is_reported_and_exit_status_is_one(tmp_path, data_dir):
  path = tmp_path / "bad.py"
  path.write_text(SWEEP_FILE.format(seeds=(0,), data_dir=data_dir).replace(
      'Run("cross_attention"), ', "").replace('"concat"}', '"no_such_kind"}'))
  done = run_sweep(str(path), "--out", str(tmp_path / "out"))
  assert done.returncode == 1
  assert "FAILED" in done.stderr and "unknown fusion 'no_such_kind'" in done.stderr
  rows = read_csv(tmp_path / "out" / "results.csv")
  assert [(r["run"], r["status"]) for r in rows] == [("concat", "failed")]
  assert "| concat | — | — |" in (tmp_path / "out" / "results.md").read_text()


def test_ablation_tables_notebook_reads_a_real_sweep(finished_sweep):
  from test_notebooks import execute_notebook

  _, out, _ = finished_sweep
  text = execute_notebook("ablation_tables", sweep_dir=str(out),
                          metrics=["test/accuracy", "params/trainable"])
  rows = read_csv(out / "results.csv")
  accs = np.array([float(r["test/accuracy"]) for r in rows if r["run"] == "cross_attention"])
  line = next(x for x in text.splitlines() if x.startswith("cross_attention"))
  assert line.split()[1:6] == ["2", "0", f"{accs.mean():.3f}", "±", f"{accs.std(ddof=1):.3f}"]
  assert os.path.getsize(out / "plots" / "grading.png") > 10_000
