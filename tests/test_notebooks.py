"""Analysis notebooks run headless on a real (tiny) run; a failing cell fails the test."""

import os
import subprocess
import sys

from conftest import REPO


def test_analyze_run_notebook(runlocal_workdir):
  done = subprocess.run([sys.executable, "notebooks/analyze_run.py"], cwd=REPO,
                        env=dict(os.environ, WORKDIR=runlocal_workdir, MPLBACKEND="Agg"),
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "records, steps 10..60" in done.stdout
  assert "written_digit/accuracy" in done.stdout  # the final-evaluation table
  for figure in ("curves.png", "confusion.png"):
    assert os.path.getsize(os.path.join(runlocal_workdir, "plots", figure)) > 10_000
